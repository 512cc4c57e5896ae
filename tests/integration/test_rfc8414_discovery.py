"""Discovery (RFC 8414), OpenID configuration, JWKS and health (D10)."""

from __future__ import annotations

from tests.support.harness import Running


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
