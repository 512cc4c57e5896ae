"""A jwks_uri may not lead into the network swim-as runs in (D13).

Refused at registration (https, literal and resolved addresses) and again
at every fetch, after DNS resolution: a client stored with a jwks_uri whose
name resolves to loopback gets ``invalid_client`` and the listener behind
that name never sees a connection. The server here runs with the default
policy (no private network allowed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from swim_as.errors import InvalidClientMetadata
from tests.support.clients import JWT_BEARER, operator
from tests.support.harness import Running
from tests.support.jose import sign
from tests.support.jwks_server import JwksServer, jwks_server


@pytest.fixture(scope="module")
async def listener() -> AsyncIterator[JwksServer]:
    async with jwks_server() as server:  # plain TCP: any connection counts
        yield server


def destinations(port: int) -> dict[str, str]:
    return {
        "loopback": f"https://127.0.0.1:{port}/jwks",
        "loopback-name": f"https://localhost:{port}/jwks",
        "loopback-v6": f"https://[::1]:{port}/jwks",
        "v4-mapped-loopback": f"https://[::ffff:127.0.0.1]:{port}/jwks",
        "private-10": "https://10.0.0.1/jwks",
        "private-172": "https://172.16.0.1/jwks",
        "private-192": "https://192.168.1.1/jwks",
        "unique-local": "https://[fd12::1]/jwks",
        "link-local": "https://169.254.1.1/jwks",
        "aws-metadata": "https://169.254.169.254/latest/meta-data/",
        "aws-metadata-v6": "https://[fd00:ec2::254]/latest/meta-data/",
        "alibaba-metadata": "https://100.100.100.200/latest/meta-data/",
        "unspecified": f"https://0.0.0.0:{port}/jwks",
        "multicast": "https://224.0.0.1/jwks",
        "http": f"http://localhost:{port}/jwks",
        "userinfo": f"https://user@localhost:{port}/jwks",
    }


@pytest.mark.parametrize(
    "case",
    [
        "loopback",
        "loopback-name",
        "loopback-v6",
        "v4-mapped-loopback",
        "private-10",
        "private-172",
        "private-192",
        "unique-local",
        "link-local",
        "aws-metadata",
        "aws-metadata-v6",
        "alibaba-metadata",
        "unspecified",
        "multicast",
        "http",
        "userinfo",
    ],
)
async def test_refused_at_registration(
    server: Running, listener: JwksServer, case: str
) -> None:
    uri = destinations(listener.port)[case]
    for method in ("private_key_jwt", "self_signed_tls_client_auth"):
        with pytest.raises(InvalidClientMetadata):
            await operator(server).add_other(
                {"token_endpoint_auth_method": method, "jwks_uri": uri}
            )
    assert listener.connections == 0


async def test_refused_at_fetch(server: Running, listener: JwksServer) -> None:
    """Stored earlier (as if the name resolved elsewhere then), refused now."""
    client_id = "stale-destination"
    uri = f"https://localhost:{listener.port}/jwks"
    now = datetime.now(UTC)
    async with server.services.db.transaction() as tx:
        await server.services.clients.insert_if_absent(
            tx,
            {
                "client_id": client_id,
                "spiffe_id": None,
                "auth_method": "private_key_jwt",
                "client_metadata": {
                    "token_endpoint_auth_method": "private_key_jwt",
                    "grant_types": ["client_credentials"],
                    "jwks_uri": uri,
                    "tls_client_certificate_bound_access_tokens": False,
                },
                "granted_scopes": [],
                "disabled": False,
                "created_at": now,
                "updated_at": now,
                "created_by": "test",
            },
        )
        tx.announce("client", client_id)
    key = ec.generate_private_key(ec.SECP256R1())
    t = server.clock.time()
    assertion = sign(
        {
            "iss": client_id,
            "sub": client_id,
            "aud": server.issuer,
            "exp": int(t + 60),
            "jti": "j",
        },
        key,
        alg="ES256",
        kid="k",
    )
    for _ in range(3):
        r = await server.token(
            None, client_assertion_type=JWT_BEARER, client_assertion=assertion
        )
        assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text
        assert r.json()["error_description"] == "client keys are not available"
    assert listener.connections == 0
    assert server.services.fetcher.fetches == 0
