"""The resource-server verifier shipped with swim-as, against a real server.

RFC 9068 §4 and RFC 8705 §3 from the resource server's side: signature by
JWKS key, issuer, audience, expiry, and the certificate binding.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import jwt
import pytest

from swim_as.clients.admin import ClientAdmin
from swim_as.verifier import TokenRejected, TokenVerifier, certificate_thumbprint
from tests.support.harness import Running, client_context
from tests.support.pki import Svid

WORKER = "spiffe://example.org/ns/rs/sa/caller"
AUDIENCE = "https://api.example.org"


@pytest.fixture(scope="module")
async def caller(server: Running) -> Svid:
    s = server.services
    await ClientAdmin(
        s.db,
        s.clients,
        s.registration,
        s.clock,
        enabled_methods=frozenset({"tls_client_auth"}),
        actor="test",
    ).add(WORKER, method="tls_client_auth")
    return server.pki.example.issue("rs-caller", [WORKER])


def verifier(server: Running, **options: Any) -> tuple[TokenVerifier, list[str]]:
    fetched: list[str] = []
    context = client_context(server.pki)

    def fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        document = httpx.get(url, verify=context, timeout=10).json()
        assert isinstance(document, dict)
        return document

    return TokenVerifier(server.issuer, AUDIENCE, fetch=fetch, **options), fetched


async def token(server: Running, svid: Svid) -> str:
    r = await server.token(svid, client_id=WORKER)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def test_bound_token_with_its_certificate(server: Running, caller: Svid) -> None:
    check, fetched = verifier(server)
    access_token = await token(server, caller)
    claims = await asyncio.to_thread(check.verify, access_token, caller.cert)
    assert claims["sub"] == WORKER
    assert claims["cnf"]["x5t#S256"] == certificate_thumbprint(caller.cert)
    pem = caller.cert_path.read_text()
    await asyncio.to_thread(check.verify, access_token, pem)  # PEM works too
    assert fetched == [
        f"{server.issuer}/.well-known/oauth-authorization-server",
        f"{server.issuer}/jwks",
    ]  # keys fetched once


@pytest.mark.parametrize("presented", ["none", "other"])
async def test_bound_token_without_its_certificate(
    server: Running, caller: Svid, presented: str
) -> None:
    check, _ = verifier(server)
    access_token = await token(server, caller)
    other = server.pki.example.issue("rs-other", ["spiffe://example.org/ns/rs/sa/x"])
    certificate = None if presented == "none" else other.cert
    with pytest.raises(TokenRejected, match="bound"):
        await asyncio.to_thread(check.verify, access_token, certificate)


async def test_wrong_audience_and_issuer(server: Running, caller: Svid) -> None:
    access_token = await token(server, caller)
    context = client_context(server.pki)

    def fetch(url: str) -> dict[str, Any]:
        return httpx.get(url, verify=context, timeout=10).json()  # type: ignore[no-any-return]

    elsewhere = TokenVerifier(server.issuer, "https://other.example", fetch=fetch)
    with pytest.raises(TokenRejected, match="InvalidAudience"):
        await asyncio.to_thread(elsewhere.verify, access_token, caller.cert)
    impostor = TokenVerifier(
        "https://127.0.0.1:1",
        AUDIENCE,
        fetch=lambda url: fetch(url.replace("https://127.0.0.1:1", server.issuer)),
    )
    with pytest.raises(TokenRejected, match="another issuer"):
        await asyncio.to_thread(impostor.verify, access_token, caller.cert)


async def test_tampered_and_foreign_tokens(server: Running, caller: Svid) -> None:
    check, _ = verifier(server)
    access_token = await token(server, caller)
    head, body, signature = access_token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    claims["scope"] = "admin"
    forged = ".".join(
        [
            head,
            jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(),
            signature,
        ]
    )
    with pytest.raises(TokenRejected, match="Signature"):
        await asyncio.to_thread(check.verify, forged, caller.cert)
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"typ": "at+jwt"})
    with pytest.raises(TokenRejected, match="alg"):
        await asyncio.to_thread(check.verify, unsigned, caller.cert)
    id_token_like = jwt.encode(
        claims, "k" * 32, algorithm="HS256", headers={"typ": "JWT"}
    )
    with pytest.raises(TokenRejected, match="typ"):
        await asyncio.to_thread(check.verify, id_token_like, caller.cert)


async def test_unknown_kid_refetches_at_most_once_per_interval(
    server: Running, caller: Svid
) -> None:
    check, fetched = verifier(server, refresh_interval=3600)
    access_token = await token(server, caller)
    await asyncio.to_thread(check.verify, access_token, caller.cert)
    head = json.loads(jwt.utils.base64url_decode(access_token.split(".")[0]))
    head["kid"] = "not-a-key"
    odd = ".".join(
        [
            jwt.utils.base64url_encode(json.dumps(head).encode()).decode(),
            *access_token.split(".")[1:],
        ]
    )
    for _ in range(20):
        with pytest.raises(TokenRejected, match="unknown kid"):
            await asyncio.to_thread(check.verify, odd, caller.cert)
    assert len(fetched) == 2  # metadata and JWKS, once
