"""Mesh mode with a validating proxy: an XFCC element with an identity but no
certificate (D5, D6).

The operator marked the proxy as validating (``mesh.proxy_validates``), so
an element with ``URI`` and no ``Cert`` may authenticate a client registered
for an X.509 method; the token then carries no certificate binding, and a
client that requires bound tokens gets ``invalid_client``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.integration.mesh_support import (
    SWIM_AS_BY,
    TD,
    Mesh,
    admin,
    make_proxy,
    mesh_server,
    verified_claims,
)
from tests.support.harness import TestPki as Pki
from tests.support.pki import Svid
from tests.support.postgres import create_database
from tests.support.proxy import envoy_xfcc, running_proxy

UNBOUND = f"{TD}/ns/legacy/sa/unbound"
BOUND = f"{TD}/ns/prod/sa/bound"


@pytest.fixture(scope="module")
async def mesh(
    postgres_server: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("mesh-validating")
    async with mesh_server(
        pki,
        url,
        folder,
        envoy_xfcc(SWIM_AS_BY, cert=False, chain=False),
        tls=None,
        server={"client_certificate_source": "xfcc"},
        mesh={
            "trusted_proxies": ["127.0.0.2/32"],
            "expected_by": SWIM_AS_BY,
            "proxy_validates": True,
        },
    ) as m:
        yield m


async def with_certificate_proxy(
    mesh: Mesh, svid: Svid, path: str, **kw: object
) -> httpx.Response:
    """The same server through a proxy that forwards the certificate."""
    proxy = make_proxy(mesh.server.pki, mesh.server.port, envoy_xfcc(SWIM_AS_BY))
    async with running_proxy(proxy) as port:
        async with mesh.via_proxy(svid) as c:
            return await c.post(f"https://127.0.0.1:{port}{path}", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def unbound(mesh: Mesh) -> Svid:
    """A client that registered (with its certificate) for unbound tokens."""
    svid = mesh.server.pki.example.issue("unbound", [UNBOUND])
    r = await with_certificate_proxy(
        mesh,
        svid,
        "/register",
        json={
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_san_uri": UNBOUND,
            "tls_client_certificate_bound_access_tokens": False,
        },
    )
    assert r.status_code == 201, r.text
    return svid


@pytest.fixture(scope="module")
async def bound(mesh: Mesh) -> Svid:
    svid = mesh.server.pki.example.issue("bound", [BOUND])
    await admin(mesh.server).add(BOUND, method="spiffe_x509")
    return svid


async def test_identity_only_gives_an_unbound_token(mesh: Mesh, unbound: Svid) -> None:
    r = await mesh.token(unbound, client_id=UNBOUND)
    assert r.status_code == 200, r.text
    claims = await verified_claims(mesh, r.json()["access_token"])
    assert claims["sub"] == UNBOUND
    assert "cnf" not in claims
    [sent] = [
        r[b"x-forwarded-client-cert"]
        for r in mesh.proxy.requests
        if UNBOUND.encode() in r.get(b"x-forwarded-client-cert", b"")
    ]
    assert b"Cert=" not in sent and b"URI=" + UNBOUND.encode() in sent


async def test_binding_required_gets_invalid_client(mesh: Mesh, bound: Svid) -> None:
    r = await mesh.token(bound, client_id=BOUND)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert (
        r.json()["error_description"]
        == "a certificate-bound token requires a client certificate"
    )


async def test_certificate_still_binds(mesh: Mesh, bound: Svid) -> None:
    """With a validating proxy, a forwarded certificate still binds."""
    r = await with_certificate_proxy(
        mesh,
        bound,
        "/token",
        data={"grant_type": "client_credentials", "client_id": BOUND},
    )
    assert r.status_code == 200, r.text
    claims = await verified_claims(mesh, r.json()["access_token"])
    assert claims["cnf"] == {"x5t#S256": bound.x5t}


@pytest.mark.parametrize(
    "client_id,error",
    [
        (f"{TD}/ns/prod/sa/someone-else", "invalid_client"),
        (None, "invalid_request"),
    ],
    ids=["client-id-of-another", "no-client-id"],
)
async def test_identity_refusals(
    mesh: Mesh, unbound: Svid, client_id: str | None, error: str
) -> None:
    form = {"client_id": client_id} if client_id else {}
    r = await mesh.token(unbound, **form)
    assert (r.status_code, r.json()["error"]) == (400, error)


async def test_identity_of_unknown_trust_domain(mesh: Mesh) -> None:
    outsider = "spiffe://elsewhere.org/ns/x/sa/y"

    def identity(chain: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-forwarded-client-cert", f"By={SWIM_AS_BY};URI={outsider}".encode())
        ]

    proxy = make_proxy(mesh.server.pki, mesh.server.port, identity)
    async with running_proxy(proxy) as port:
        async with mesh.via_proxy(None) as c:
            r = await c.post(
                f"https://127.0.0.1:{port}/token",
                data={"grant_type": "client_credentials", "client_id": outsider},
            )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == (
        "forwarded identity is not in a trusted trust domain"
    )


async def test_identity_straight_to_swim_as_is_ignored(
    mesh: Mesh, unbound: Svid
) -> None:
    r = await mesh.direct_token(
        {"x-forwarded-client-cert": f"By={SWIM_AS_BY};URI={UNBOUND}"},
        client_id=UNBOUND,
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == "client certificate required"


async def test_identity_cannot_register(mesh: Mesh) -> None:
    """Self-registration proves the SVID itself; an identity is not enough."""
    sid = f"{TD}/ns/prod/sa/newcomer"
    svid = mesh.server.pki.example.issue("newcomer", [sid])
    async with mesh.via_proxy(svid) as c:
        r = await c.post(
            f"{mesh.issuer}/register",
            json={"token_endpoint_auth_method": "spiffe_x509", "spiffe_id": sid},
        )
    # No SVID and no initial access token: RFC 6750 §3.1, a bare challenge.
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="swim-as"'
