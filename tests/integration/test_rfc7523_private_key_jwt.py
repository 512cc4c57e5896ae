"""``private_key_jwt`` (RFC 7523 §2.2, §3; rfc7523bis) against a real server.

Clients get opaque client_ids (D1) and register public keys inline or
behind a ``jwks_uri`` served by a listener of our own on 127.0.0.1 (allowed
by the operator for these tests). Replay is refused across two server
instances that share one PostgreSQL database.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import func, select

from swim_as.errors import AccessDenied, InvalidClientMetadata
from swim_as.storage.models import UsedAssertionRow
from tests.support.clients import JWT_BEARER, operator
from tests.support.harness import Running, running_server
from tests.support.harness import TestPki as Pki
from tests.support.jose import (
    b64,
    hmac_with_public_key,
    json_serialization,
    jwk_of,
    sign,
    unsigned,
)
from tests.support.jwks_server import JwksServer, server_tls
from tests.support.postgres import create_database

ABSENT = object()


@pytest.fixture(scope="module")
async def database(postgres_server: str) -> str:
    return await create_database(postgres_server)


@pytest.fixture(scope="module")
async def server(
    database: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    folder: Path = tmp_path_factory.mktemp("pkjwt-server")
    async with running_server(
        pki,
        database,
        folder,
        client_auth={
            "jwks_uri_allowed_networks": ["127.0.0.1/32"],
            "jwks_uri_ca_file": str(pki.web.bundle_path),
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def key_server(pki: Pki) -> AsyncIterator[JwksServer]:
    server = JwksServer(server_tls(pki.server.chain_path, pki.server.key_path))
    await server.start()
    yield server
    await server.close()


class KeyClient:
    """A registered private_key_jwt client and its private keys by kid."""

    def __init__(self, client_id: str, keys: dict[str, Any]) -> None:
        self.client_id = client_id
        self.keys = keys


EC = ec.generate_private_key(ec.SECP256R1())
RSA = rsa.generate_private_key(65537, 2048)
ED = ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
async def inline(server: Running) -> KeyClient:
    registration = await operator(server).add_other(
        {
            "token_endpoint_auth_method": "private_key_jwt",
            "client_name": "batch job",
            "jwks": {
                "keys": [
                    jwk_of(EC.public_key(), kid="ec"),
                    jwk_of(RSA.public_key(), kid="rsa"),
                    jwk_of(ED.public_key(), kid="ed"),
                ]
            },
        },
        scopes=["jobs.run"],
    )
    return KeyClient(registration.client.client_id, {"ec": EC, "rsa": RSA, "ed": ED})


def assertion(
    server: Running,
    client: KeyClient,
    *,
    kid: str | None = "ec",
    alg: str = "ES256",
    key: Any = None,
    lifetime: float = 60,
    headers: dict[str, Any] | None = None,
    typ: str | None = "JWT",
    **claims: Any,
) -> str:
    now = server.clock.time()
    payload = {
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": server.issuer,
        "exp": int(now + lifetime),
        "iat": int(now),
        "jti": secrets.token_urlsafe(12),
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not ABSENT}
    signing_key = key if key is not None else client.keys[kid or "ec"]
    return sign(payload, signing_key, alg=alg, kid=kid, headers=headers, typ=typ)


async def with_assertion(server: Running, value: str, **form: str) -> Any:
    return await server.token(
        None, client_assertion_type=JWT_BEARER, client_assertion=value, **form
    )


def claims_of(response: Any) -> dict[str, Any]:
    return jwt.decode(
        response.json()["access_token"], options={"verify_signature": False}
    )


# -- tokens --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kid,alg",
    [("ec", "ES256"), ("rsa", "RS256"), ("rsa", "PS384"), ("ed", "EdDSA")],
    ids=["es256", "rs256", "ps384", "eddsa"],
)
async def test_token(server: Running, inline: KeyClient, kid: str, alg: str) -> None:
    r = await with_assertion(server, assertion(server, inline, kid=kid, alg=alg))
    assert r.status_code == 200, r.text
    claims = claims_of(r)
    assert claims["client_id"] == claims["sub"] == inline.client_id
    assert claims["scope"] == "jobs.run"
    assert "cnf" not in claims


async def test_opaque_client_id_and_metadata(
    server: Running, inline: KeyClient
) -> None:
    assert not inline.client_id.startswith("spiffe://")
    assert len(inline.client_id) >= 20
    client = await server.services.clients.get(inline.client_id)
    assert client is not None and client.auth_method == "private_key_jwt"
    assert client.spiffe_id is None
    assert client.metadata["tls_client_certificate_bound_access_tokens"] is False


async def test_no_kid_tries_the_fitting_keys(
    server: Running, inline: KeyClient
) -> None:
    r = await with_assertion(
        server, assertion(server, inline, kid=None, key=RSA, alg="RS256")
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "aud,form",
    [("string", {}), ("array", {}), ("string", {"client_id": "same"})],
    ids=["aud-string", "aud-array", "with-client-id"],
)
async def test_audience_forms(
    server: Running, inline: KeyClient, aud: str, form: dict[str, str]
) -> None:
    value: Any = server.issuer if aud == "string" else [server.issuer]
    if form:
        form = {"client_id": inline.client_id}
    r = await with_assertion(server, assertion(server, inline, aud=value), **form)
    assert r.status_code == 200, r.text


async def test_typ_client_authentication_jwt(
    server: Running, inline: KeyClient
) -> None:
    """rfc7523bis: the explicit type is accepted."""
    r = await with_assertion(
        server, assertion(server, inline, typ="client-authentication+jwt")
    )
    assert r.status_code == 200, r.text


async def test_jwks_uri(server: Running, key_server: JwksServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_server.serve_json({"keys": [jwk_of(key.public_key(), kid="k1")]})
    registration = await operator(server).add_other(
        {
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_uri": key_server.url("/c1"),
        }
    )
    client = KeyClient(registration.client.client_id, {"k1": key})
    before = key_server.connections
    for _ in range(3):
        r = await with_assertion(server, assertion(server, client, kid="k1"))
        assert r.status_code == 200, r.text
    assert key_server.connections == before + 1  # cached
    assert key_server.paths[-1] == "/c1"

    # The client rotates to a new key: the unknown kid refetches, but at most
    # once per refresh interval.
    rotated = ec.generate_private_key(ec.SECP256R1())
    key_server.serve_json(
        {
            "keys": [
                jwk_of(key.public_key(), kid="k1"),
                jwk_of(rotated.public_key(), kid="k2"),
            ]
        }
    )
    client.keys["k2"] = rotated
    r = await with_assertion(server, assertion(server, client, kid="k2"))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert key_server.connections == before + 1  # fetched 0 s ago: no refetch
    server.clock.advance(31)
    r = await with_assertion(server, assertion(server, client, kid="k2"))
    assert r.status_code == 200, r.text
    assert key_server.connections == before + 2


# -- replay --------------------------------------------------------------------


async def test_replay_refused(server: Running, inline: KeyClient) -> None:
    value = assertion(server, inline)
    first = await with_assertion(server, value)
    assert first.status_code == 200, first.text
    again = await with_assertion(server, value)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_client")
    assert again.json()["error_description"] == "client assertion was already used"


async def test_replay_refused_across_replicas(
    server: Running,
    inline: KeyClient,
    database: str,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A second instance on the same database refuses what the first took."""
    folder = tmp_path_factory.mktemp("pkjwt-replica")
    # Replicas share the issuer: that is the audience of the assertions.
    async with running_server(
        pki,
        database,
        folder,
        issuer=server.issuer,
        keys={"encryption_key_file": server.settings.keys.encryption_key_file},
    ) as replica:
        replica.clock.offset = server.clock.offset
        replica_token = f"https://127.0.0.1:{replica.settings.server.port}/token"

        async def at_replica(value: str) -> Any:
            async with replica.client() as c:
                return await c.post(
                    replica_token,
                    data={
                        "grant_type": "client_credentials",
                        "client_assertion_type": JWT_BEARER,
                        "client_assertion": value,
                    },
                )

        value = assertion(server, inline)
        r = await with_assertion(server, value)
        assert r.status_code == 200, r.text
        again = await at_replica(value)
        assert (again.status_code, again.json()["error"]) == (400, "invalid_client")
        # And the other way round.
        other = assertion(server, inline)
        first = await at_replica(other)
        assert first.status_code == 200, first.text
        r = await with_assertion(server, other)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


async def test_expired_rows_are_purged(server: Running, inline: KeyClient) -> None:
    r = await with_assertion(server, assertion(server, inline, lifetime=20))
    assert r.status_code == 200, r.text
    services = server.services

    async def rows() -> int:
        async with services.db.reading() as session:
            return int(
                await session.scalar(select(func.count()).select_from(UsedAssertionRow))
            )

    assert await rows() >= 1
    # Nothing live is purged; everything is, once every assertion expired.
    live = await rows()
    assert await services.assertions.purge(services.clock.now()) < live
    later = services.clock.now() + timedelta(hours=1)
    assert await services.assertions.purge(later) >= 1
    assert await rows() == 0


# -- refusals ------------------------------------------------------------------


def bad(server: Running, client: KeyClient) -> dict[str, str]:
    now = int(server.clock.time())
    base = {
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": server.issuer,
        "exp": now + 60,
        "jti": "j1",
    }
    return {
        "alg-none": unsigned({"kid": "ec"}, base),
        "hs256-with-public-key": hmac_with_public_key(
            {"kid": "ec"}, base, EC.public_key()
        ),
        "alg-not-fitting-key": assertion(
            server, client, kid="ec", key=RSA, alg="RS256"
        ),
        "es384-with-p256-key": assertion(
            server,
            client,
            kid="ec",
            key=ec.generate_private_key(ec.SECP384R1()),
            alg="ES384",
        ),
        "header-jku": assertion(
            server, client, headers={"jku": "https://127.0.0.1:9/k"}
        ),
        "header-jwk": assertion(
            server, client, headers={"jwk": jwk_of(EC.public_key())}
        ),
        "header-x5c": assertion(server, client, headers={"x5c": ["AAAA"]}),
        "header-x5u": assertion(
            server, client, headers={"x5u": "https://127.0.0.1:9/c"}
        ),
        "header-crit": assertion(server, client, headers={"crit": ["exp"]}),
        "unknown-kid": assertion(server, client, kid="nope", key=EC),
        "wrong-key": assertion(
            server, client, key=ec.generate_private_key(ec.SECP256R1())
        ),
        "json-serialization": json_serialization(assertion(server, client)),
        "aud-wrong": assertion(server, client, aud="https://elsewhere.example"),
        "aud-extra": assertion(
            server, client, aud=[server.issuer, "https://x.example"]
        ),
        "aud-token-endpoint": assertion(server, client, aud=server.issuer + "/token"),
        "aud-missing": assertion(server, client, aud=ABSENT),
        "expired": assertion(server, client, lifetime=-60),
        "too-long-lived": assertion(server, client, lifetime=3600),
        "no-exp": assertion(server, client, exp=ABSENT),
        "no-jti": assertion(server, client, jti=ABSENT),
        "not-yet-valid": assertion(server, client, nbf=now + 300),
        "iss-not-sub": assertion(server, client, iss="someone-else"),
        "typ-at-jwt": assertion(server, client, typ="at+jwt"),
        "unknown-client": assertion(server, KeyClient("nobody", {"ec": EC})),
        "garbage": "a.b.c",
    }


BAD = {
    "alg-none": "alg",
    "hs256-with-public-key": "alg",
    "alg-not-fitting-key": "alg_mismatch",
    "es384-with-p256-key": "alg_mismatch",
    "header-jku": "header",
    "header-jwk": "header",
    "header-x5c": "header",
    "header-x5u": "header",
    "header-crit": "header",
    "unknown-kid": "unknown_kid",
    "wrong-key": "signature",
    "json-serialization": "json_serialization",
    "aud-wrong": "audience",
    "aud-extra": "audience",
    "aud-token-endpoint": "audience",
    "aud-missing": "audience",
    "expired": "expired",
    "too-long-lived": "lifetime",
    "no-exp": "exp",
    "no-jti": "jti",
    "not-yet-valid": "not_yet_valid",
    "iss-not-sub": "iss and sub must be the same",
    "typ-at-jwt": "typ",
    "unknown-client": "no client registered",
    "garbage": "malformed",
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_assertion(
    server: Running, inline: KeyClient, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    value = bad(server, inline)[case]
    with caplog.at_level(logging.INFO, logger="swim_as"):
        r = await with_assertion(server, value)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text
    refusals = [m for m in caplog.messages if m.startswith("token refused")]
    assert len(refusals) == 1 and BAD[case] in refusals[0], refusals


async def test_client_id_must_match(server: Running, inline: KeyClient) -> None:
    r = await with_assertion(
        server, assertion(server, inline), client_id="someone-else"
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


async def test_method_mismatch(server: Running, inline: KeyClient) -> None:
    # A private_key_jwt client with a certificate and no assertion.
    svid = server.pki.example.issue("pkjwt-cert", ["spiffe://example.org/ns/a/sa/b"])
    r = await server.token(svid, client_id=inline.client_id)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    # An X.509-SVID client's id in a jwt-bearer assertion.
    sid = "spiffe://example.org/ns/a/sa/x509"
    await operator(server).add(sid, method="tls_client_auth")
    r = await with_assertion(server, assertion(server, KeyClient(sid, {"ec": EC})))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == (
        "client is registered for another authentication method"
    )


@pytest.mark.parametrize(
    "extra,error",
    [
        ({"authorization": "Basic eDp5"}, "invalid_request"),
        ({"client_secret": "x"}, "invalid_request"),
    ],
    ids=["plus-basic-header", "plus-client-secret"],
)
async def test_two_credentials(
    server: Running, inline: KeyClient, extra: dict[str, str], error: str
) -> None:
    headers = (
        {"authorization": extra.pop("authorization")}
        if "authorization" in extra
        else {}
    )
    async with server.client() as c:
        r = await c.post(
            f"{server.issuer}/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion(server, inline),
                **extra,
            },
            headers=headers,
        )
    assert (r.status_code, r.json()["error"]) == (400, error), r.text


# -- registration --------------------------------------------------------------


PRIVATE = jwk_of(EC.public_key(), kid="p")
PRIVATE["d"] = b64(EC.private_numbers().private_value.to_bytes(32, "big"))


@pytest.mark.parametrize(
    "body,message",
    [
        ({}, "needs jwks or jwks_uri"),
        (
            {
                "jwks": {"keys": [jwk_of(EC.public_key())]},
                "jwks_uri": "https://keys.example/jwks",
            },
            "must not both be present",
        ),
        ({"jwks": {"keys": [PRIVATE]}}, "is not a public key"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "is not a public key"),
        ({"jwks": {"keys": [jwk_of(EC.public_key(), alg="HS256")]}}, "does not fit"),
        ({"jwks": "not a set"}, "JWK Set object"),
        ({"jwks_uri": "http://keys.example/jwks"}, "https URL"),
        (
            {
                "jwks": {"keys": [jwk_of(EC.public_key())]},
                "tls_client_certificate_bound_access_tokens": True,
            },
            "must be false",
        ),
        (
            {
                "jwks": {"keys": [jwk_of(EC.public_key())]},
                "spiffe_id": "spiffe://example.org/ns/a/sa/b",
            },
            "spiffe_id belongs to",
        ),
    ],
    ids=[
        "no-keys",
        "jwks-and-jwks-uri",
        "private-key",
        "symmetric-key",
        "hmac-alg",
        "jwks-not-object",
        "jwks-uri-http",
        "bound-tokens",
        "spiffe-id",
    ],
)
async def test_registration_refused(
    server: Running, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidClientMetadata, match=message):
        await operator(server).add_other(
            {"token_endpoint_auth_method": "private_key_jwt", **body}
        )


async def test_self_registration_refused(server: Running) -> None:
    """No SVID proves who a key client is: 403 without a registration authority."""
    svid = server.pki.example.issue("wants-key", ["spiffe://example.org/ns/a/sa/wants"])
    body = {
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [jwk_of(EC.public_key())]},
    }
    for caller in (svid, None):
        r = await server.register(caller, body)
        assert (r.status_code, r.json()["error"]) == (403, "access_denied"), r.text
        assert "operator" in r.json()["error_description"]
    with pytest.raises(AccessDenied):
        await server.services.registration.register_self(
            body, "spiffe://example.org/ns/a/sa/wants"
        )


async def test_management_of_a_key_client(server: Running) -> None:
    """RFC 7592: the registration access token manages a key client; the
    same key rules apply to an update."""
    registration = await operator(server).add_other(
        {
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [jwk_of(EC.public_key(), kid="ec")]},
        }
    )
    body = server.services.registration.response(registration)
    uri, token = body["registration_client_uri"], body["registration_access_token"]
    update = {
        k: v
        for k, v in body.items()
        if k
        not in (
            "registration_access_token",
            "registration_client_uri",
            "client_id_issued_at",
        )
    }
    headers = {"authorization": f"Bearer {token}"}
    async with server.client() as c:
        read = await c.get(uri, headers=headers)
        assert read.status_code == 200 and read.json()["jwks"] == body["jwks"]
        for change, message in (
            ({"jwks": {"keys": [PRIVATE]}}, "not a public key"),
            ({"jwks": None, "jwks_uri": "https://127.0.0.2/jwks"}, "loopback"),
            ({"jwks": None, "jwks_uri": "https://10.1.2.3/jwks"}, "private"),
            ({"token_endpoint_auth_method": "tls_client_auth"}, ""),
        ):
            sent = {k: v for k, v in {**update, **change}.items() if v is not None}
            r = await c.put(uri, json=sent, headers=headers)
            assert (r.status_code, r.json()["error"]) == (
                400,
                "invalid_client_metadata",
            ), r.text
            assert message in r.json()["error_description"]
        rotated = {"keys": [jwk_of(ED.public_key(), kid="ed")]}
        r = await c.put(uri, json={**update, "jwks": rotated}, headers=headers)
        assert r.status_code == 200, r.text
    client = KeyClient(registration.client.client_id, {"ed": ED})
    t = await with_assertion(server, assertion(server, client, kid="ed", alg="EdDSA"))
    assert t.status_code == 200, t.text
