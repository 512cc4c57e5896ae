"""RFC 8705 §5 ``mtls_endpoint_aliases``: a separate mTLS listener (D10).

The same process serves a second listener that asks every client for a
certificate; discovery names its token and registration endpoints, built
from the configured alias base URL. The main listener either asks for no
certificate at all (``client_certificate_source = "none"``) or keeps its
own direct-TLS behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.mesh_support import TD, admin, claims_of
from tests.support.harness import Running, free_port, running_server
from tests.support.harness import TestPki as Pki
from tests.support.pki import Svid
from tests.support.postgres import create_database

WORKER = f"{TD}/ns/prod/sa/alias-worker"


@pytest.fixture(scope="module", params=["none", "tls"])
async def server(
    request: pytest.FixtureRequest,
    postgres_server: str,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Running]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("alias")
    alias_port = free_port()
    async with running_server(
        pki,
        url,
        folder,
        server={
            "client_certificate_source": request.param,
            "mtls": {
                "host": "127.0.0.1",
                "port": alias_port,
                "base_url": f"https://127.0.0.1:{alias_port}",
            },
        },
    ) as running:
        await admin(running).add(WORKER, method="tls_client_auth")
        yield running


@pytest.fixture(scope="module")
def worker(server: Running) -> Svid:
    return server.pki.example.issue("alias-worker", [WORKER])


def alias_base(server: Running) -> str:
    assert server.settings.server.mtls is not None
    return server.settings.server.mtls.base_url


async def test_discovery_lists_the_aliases(server: Running) -> None:
    base = alias_base(server)
    async with server.client() as c:
        main = await c.get(
            f"{server.issuer}/.well-known/oauth-authorization-server",
            headers={"host": "evil.example"},
        )
        via_alias = await c.get(f"{base}/.well-known/oauth-authorization-server")
    assert main.json()["mtls_endpoint_aliases"] == {
        "token_endpoint": f"{base}/token",
        "registration_endpoint": f"{base}/register",
    }
    assert main.json()["token_endpoint"] == f"{server.issuer}/token"
    assert via_alias.json() == main.json()


async def test_token_at_the_alias_is_bound(server: Running, worker: Svid) -> None:
    async with server.client(worker) as c:
        r = await c.post(
            f"{alias_base(server)}/token",
            data={"grant_type": "client_credentials", "client_id": WORKER},
        )
    assert r.status_code == 200, r.text
    async with server.client() as c:
        claims = await claims_of(r.json()["access_token"], server.issuer, c)
    assert claims["cnf"] == {"x5t#S256": worker.x5t}


async def test_main_listener(server: Running, worker: Svid) -> None:
    """With source 'none' the main listener asks for no certificate, so the
    client's is never sent; with 'tls' it still works directly."""
    r = await server.token(worker, client_id=WORKER)
    if server.settings.server.client_certificate_source == "none":
        assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
        assert r.json()["error_description"] == "client certificate required"
    else:
        assert r.status_code == 200, r.text


async def test_registration_at_the_alias(server: Running) -> None:
    sid = f"{TD}/ns/prod/sa/alias-self"
    svid = server.pki.example.issue("alias-self", [sid])
    async with server.client(svid) as c:
        r = await c.post(
            f"{alias_base(server)}/register",
            json={"token_endpoint_auth_method": "spiffe_x509", "spiffe_id": sid},
        )
    assert r.status_code in (200, 201), r.text
    assert r.json()["client_id"] == sid
