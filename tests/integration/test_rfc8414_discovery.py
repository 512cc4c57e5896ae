"""Discovery (RFC 8414), OpenID configuration, JWKS and health (D10)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.clients import operator
from tests.support.harness import Running, running_server
from tests.support.harness import TestPki as Pki
from tests.support.jose import jwt_bundle
from tests.support.postgres import create_database


async def test_metadata(server: Running) -> None:
    async with server.client() as c:
        r = await c.get(f"{server.issuer}/.well-known/oauth-authorization-server")
    assert r.status_code == 200
    doc = r.json()
    assert doc == {
        "issuer": server.issuer,
        "token_endpoint": f"{server.issuer}/token",
        "registration_endpoint": f"{server.issuer}/register",
        "jwks_uri": f"{server.issuer}/jwks",
        "grant_types_supported": ["client_credentials"],
        # No trust domain has JWT-SVID keys here, so spiffe_jwt cannot
        # succeed and is not listed (D13); secrets are off by default.
        "token_endpoint_auth_methods_supported": [
            "tls_client_auth",
            "spiffe_x509",
            "self_signed_tls_client_auth",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": [
            "ES256",
            "ES384",
            "ES512",
            "PS256",
            "PS384",
            "PS512",
            "RS256",
            "RS384",
            "RS512",
            "EdDSA",
        ],
        "tls_client_certificate_bound_access_tokens": True,
    }


async def test_openid_configuration_is_the_same_document(server: Running) -> None:
    async with server.client() as c:
        oauth = await c.get(f"{server.issuer}/.well-known/oauth-authorization-server")
        oidc = await c.get(f"{server.issuer}/.well-known/openid-configuration")
    assert oidc.status_code == 200
    assert oidc.json() == oauth.json()
    # Nothing claimed that swim-as does not do: no ID tokens, no code flow.
    for absent in (
        "authorization_endpoint",
        "id_token_signing_alg_values_supported",
        "response_types_supported",
        "userinfo_endpoint",
    ):
        assert absent not in oidc.json()


async def test_host_header_is_ignored(server: Running) -> None:
    async with server.client() as c:
        r = await c.get(
            f"{server.issuer}/.well-known/oauth-authorization-server",
            headers={"host": "evil.example", "x-forwarded-host": "evil"},
        )
    assert r.json()["issuer"] == server.issuer
    assert "evil" not in r.text


async def test_jwks_public_only(server: Running) -> None:
    async with server.client() as c:
        r = await c.get(f"{server.issuer}/jwks")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "public, max-age=300"
    keys = r.json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "EC" and keys[0]["crv"] == "P-256"
    assert keys[0]["alg"] == "ES256" and keys[0]["use"] == "sig" and keys[0]["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(keys[0])


async def test_health(server: Running) -> None:
    async with server.client() as c:
        alive = await c.get(f"{server.issuer}/healthz")
        ready = await c.get(f"{server.issuer}/readyz")
    assert alive.status_code == 200
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True and body["problems"] == []
    assert set(body["trust_domains"]) == {"example.org", "other.org"}


async def test_unknown_path_is_json(server: Running) -> None:
    async with server.client() as c:
        r = await c.get(f"{server.issuer}/nope")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


async def test_spiffe_jwt_advertised_once_keys_arrive(
    postgres_server: str, pki: Pki, tmp_path: Path
) -> None:
    """D13: spiffe_jwt is listed only while a trust domain has JWT keys."""
    jwt_file = tmp_path / "example.jwt.json"
    jwt_file.write_text('{"keys": []}')
    x509_file = tmp_path / "example.pem"
    x509_file.write_bytes(pki.example.bundle_path.read_bytes())
    domains = [
        {"name": "example.org", "bundle_file": x509_file, "jwt_bundle_file": jwt_file}
    ]
    url = await create_database(postgres_server)
    async with running_server(pki, url, tmp_path / "s", trust_domains=domains) as s:

        async def methods() -> list[str]:
            async with s.client() as c:
                r = await c.get(f"{s.issuer}/.well-known/oauth-authorization-server")
            return r.json()["token_endpoint_auth_methods_supported"]  # type: ignore[no-any-return]

        assert "spiffe_jwt" not in await methods()
        key = ec.generate_private_key(ec.SECP256R1())
        jwt_file.write_text(jwt_bundle({"k1": key.public_key()}))
        for _ in range(40):
            if "spiffe_jwt" in await methods():
                break
            await asyncio.sleep(0.1)
        assert "spiffe_jwt" in await methods()
        # And gone again when the keys are.
        jwt_file.write_text('{"keys": []}')
        for _ in range(40):
            if "spiffe_jwt" not in await methods():
                break
            await asyncio.sleep(0.1)
        assert "spiffe_jwt" not in await methods()


async def test_only_the_configured_methods(
    postgres_server: str, pki: Pki, tmp_path: Path
) -> None:
    url = await create_database(postgres_server)
    async with running_server(
        pki, url, tmp_path, client_auth={"methods": ["spiffe_x509"]}
    ) as s:
        async with s.client() as c:
            doc = (
                await c.get(f"{s.issuer}/.well-known/oauth-authorization-server")
            ).json()
        assert doc["token_endpoint_auth_methods_supported"] == ["spiffe_x509"]
        assert "token_endpoint_auth_signing_alg_values_supported" not in doc
        # A tls_client_auth client is not served while its method is off.
        sid = "spiffe://example.org/ns/d/sa/off"
        svid = pki.example.issue("method-off", [sid])
        await operator(s).add(sid, method="spiffe_x509")
        assert (await s.token(svid, client_id=sid)).status_code == 200
        r = await s.register(svid, {"token_endpoint_auth_method": "tls_client_auth"})
        assert (r.status_code, r.json()["error"]) == (400, "invalid_client_metadata")
