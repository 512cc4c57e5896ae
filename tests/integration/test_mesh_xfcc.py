"""Mesh mode behind an Envoy-like proxy that sets x-forwarded-client-cert (D5).

swim-as serves plain HTTP on 127.0.0.1; a TLS-terminating proxy of our own
(tests/support/proxy.py) terminates the client's mTLS and forwards with an
XFCC element of its own (Envoy's SANITIZE_SET), from 127.0.0.2, the only
trusted proxy address. Everything else reaches swim-as from 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from swim_as.app import mesh_middleware
from tests.integration.mesh_support import (
    ADMIN,
    SWIM_AS_BY,
    TD,
    WORKER,
    Mesh,
    admin,
    make_proxy,
    mesh_server,
    verified_claims,
    warnings_with,
)
from tests.support.forwarding import byte_sequence, escaped_pem, xfcc_element
from tests.support.harness import TestPki as Pki
from tests.support.pki import Authority, Svid, x5t_s256
from tests.support.postgres import create_database
from tests.support.proxy import envoy_xfcc, running_proxy

_DER = Encoding.DER

MESH: dict[str, Any] = {
    "server": {"client_certificate_source": "xfcc"},
    "mesh": {"trusted_proxies": ["127.0.0.2/32"], "expected_by": SWIM_AS_BY},
    "tls": None,
}


@pytest.fixture(scope="module")
async def mesh(
    postgres_server: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("mesh")
    async with mesh_server(pki, url, folder, envoy_xfcc(SWIM_AS_BY), **MESH) as m:
        yield m


@pytest.fixture(scope="module")
async def worker(mesh: Mesh) -> Svid:
    svid = mesh.server.pki.example.issue("mesh-worker", [WORKER])
    await admin(mesh.server).add(
        WORKER, method="tls_client_auth", scopes=["orders.read"]
    )
    return svid


@pytest.fixture(scope="module")
async def privileged(mesh: Mesh) -> Svid:
    svid = mesh.server.pki.example.issue("mesh-admin", [ADMIN])
    await admin(mesh.server).add(ADMIN, method="spiffe_x509", scopes=["admin"])
    return svid


async def test_token_through_proxy_is_bound_to_client_leaf(
    mesh: Mesh, worker: Svid
) -> None:
    r = await mesh.token(worker, client_id=WORKER)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "orders.read"
    claims = await verified_claims(mesh, r.json()["access_token"])
    assert claims["cnf"] == {"x5t#S256": worker.x5t}
    assert claims["cnf"]["x5t#S256"] != x5t_s256(mesh.server.pki.server.cert)
    assert claims["sub"] == WORKER and claims["iss"] == mesh.issuer
    forwarded = [
        r[b"x-forwarded-client-cert"]
        for r in mesh.proxy.requests
        if b"x-forwarded-client-cert" in r
    ]
    assert forwarded[-1].startswith(f"By={SWIM_AS_BY};Hash=".encode())


async def test_chain_through_proxy(mesh: Mesh) -> None:
    sid = f"{TD}/ns/prod/sa/mesh-chained"
    mid = Authority(
        mesh.server.pki.folder / "mesh-mid",
        "mesh-mid",
        "example.org",
        parent=mesh.server.pki.example,
    )
    chained = mid.issue("mesh-chained", [sid])
    await admin(mesh.server).add(sid, method="spiffe_x509")
    r = await mesh.token(chained, client_id=sid)
    assert r.status_code == 200, r.text
    claims = await verified_claims(mesh, r.json()["access_token"])
    assert claims["cnf"] == {"x5t#S256": chained.x5t}


async def test_registration_through_proxy(mesh: Mesh) -> None:
    sid = f"{TD}/ns/prod/sa/mesh-self"
    svid = mesh.server.pki.example.issue("mesh-self", [sid])
    async with mesh.via_proxy(svid) as c:
        r = await c.post(
            f"{mesh.issuer}/register",
            json={"token_endpoint_auth_method": "spiffe_x509", "spiffe_id": sid},
        )
    assert r.status_code == 201, r.text
    assert r.json()["client_id"] == sid
    token = await mesh.token(svid, client_id=sid)
    assert token.status_code == 200, token.text


async def test_discovery_through_proxy(mesh: Mesh) -> None:
    async with mesh.via_proxy(None) as c:
        r = await c.get(f"{mesh.issuer}/.well-known/oauth-authorization-server")
    assert r.status_code == 200
    assert r.json()["token_endpoint"] == f"{mesh.issuer}/token"
    assert "mtls_endpoint_aliases" not in r.json()


async def test_no_client_certificate_through_proxy(mesh: Mesh, worker: Svid) -> None:
    r = await mesh.token(None, client_id=WORKER)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == "client certificate required"


def straight_headers(svid: Svid) -> dict[str, str]:
    der_hash = hashlib.sha256(svid.cert.public_bytes(_DER)).hexdigest()
    return {
        "x-forwarded-client-cert": f"By={SWIM_AS_BY};"
        + xfcc_element(svid.cert, hash_hex=der_hash),
        "client-cert": byte_sequence(svid.cert.public_bytes(_DER)),
        "x-ssl-client-cert": escaped_pem(svid.cert),
    }


async def test_header_straight_to_swim_as_is_ignored(
    mesh: Mesh, worker: Svid, caplog: pytest.LogCaptureFixture
) -> None:
    """The same header a trusted proxy would send, from anyone else."""
    caplog.set_level(logging.WARNING, logger="swim_as.mesh")
    r = await mesh.direct_token(straight_headers(worker), client_id=WORKER)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == "client certificate required"
    [record] = warnings_with(caplog, "mesh.untrusted_forward")
    assert record.levelno == logging.WARNING
    assert record.peer.startswith("127.0.0.1:")
    assert "x-forwarded-client-cert" in record.headers
    assert "127.0.0.1 is not a trusted proxy" in record.getMessage()


async def test_client_xfcc_replaced_by_proxy(
    mesh: Mesh, worker: Svid, privileged: Svid
) -> None:
    """Sanitize-set: what the client claims never reaches swim-as."""
    claim = {
        "x-forwarded-client-cert": f"By={SWIM_AS_BY};" + xfcc_element(privileged.cert)
    }
    async with mesh.via_proxy(worker) as c:
        as_admin = await c.post(
            f"{mesh.issuer}/token",
            data={"grant_type": "client_credentials", "client_id": ADMIN},
            headers=claim,
        )
        as_itself = await c.post(
            f"{mesh.issuer}/token",
            data={"grant_type": "client_credentials", "client_id": WORKER},
            headers=claim,
        )
    assert (as_admin.status_code, as_admin.json()["error"]) == (400, "invalid_client")
    assert as_itself.status_code == 200, as_itself.text
    claims = await verified_claims(mesh, as_itself.json()["access_token"])
    assert claims["cnf"] == {"x5t#S256": worker.x5t}


async def test_earlier_element_naming_privileged_workload(
    mesh: Mesh, worker: Svid, privileged: Svid
) -> None:
    """An appending proxy keeps the client's element; only the last counts."""
    forged = f"By={SWIM_AS_BY};" + xfcc_element(privileged.cert)
    appending = make_proxy(
        mesh.server.pki, mesh.server.port, envoy_xfcc(SWIM_AS_BY), append=True
    )
    async with running_proxy(appending) as port:
        async with mesh.via_proxy(worker) as c:
            responses = [
                await c.post(
                    f"https://127.0.0.1:{port}/token",
                    data={"grant_type": "client_credentials", "client_id": client_id},
                    headers={"x-forwarded-client-cert": forged},
                )
                for client_id in (ADMIN, WORKER)
            ]
    sent = appending.requests[-1][b"x-forwarded-client-cert"].decode()
    assert sent.startswith(forged + ",")
    assert (responses[0].status_code, responses[0].json()["error"]) == (
        400,
        "invalid_client",
    )
    assert responses[1].status_code == 200, responses[1].text
    claims = await verified_claims(mesh, responses[1].json()["access_token"])
    assert claims["sub"] == WORKER and claims["cnf"] == {"x5t#S256": worker.x5t}


async def test_by_mismatch_refused(
    mesh: Mesh, worker: Svid, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="swim_as.mesh")
    other = make_proxy(
        mesh.server.pki, mesh.server.port, envoy_xfcc(f"{TD}/ns/billing/sa/api")
    )
    async with running_proxy(other) as port:
        async with mesh.via_proxy(worker) as c:
            r = await c.post(
                f"https://127.0.0.1:{port}/token",
                data={"grant_type": "client_credentials", "client_id": WORKER},
            )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == "client certificate could not be read"
    [record] = warnings_with(caplog, "mesh.bad_forward")
    assert "not swim-as's identity" in record.reason


def lying(kind: str, other: x509.Certificate) -> Any:
    """A proxy whose element contradicts itself."""
    honest = envoy_xfcc(SWIM_AS_BY, chain=False)

    def make(chain: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
        leaf = x509.load_der_x509_certificate(chain[0])
        if kind == "uri":
            value = xfcc_element(leaf, by=[SWIM_AS_BY], uri=[ADMIN])
        elif kind == "hash":
            wrong = hashlib.sha256(other.public_bytes(_DER)).hexdigest()
            value = xfcc_element(leaf, by=[SWIM_AS_BY], hash_hex=wrong)
        elif kind == "chain-leaf":
            value = (
                f'By={SWIM_AS_BY};Cert="{escaped_pem(leaf)}";'
                f'Chain="{escaped_pem(other)}"'
            )
        elif kind == "quoted-subject-hides-separators":
            # A Subject crafted to look like more pairs and another element:
            # inside quotes it is data, and the URI after it must agree.
            value = (
                f'By={SWIM_AS_BY};Cert="{escaped_pem(leaf)}";'
                f'Subject="CN=x\\";URI={ADMIN},By={SWIM_AS_BY};URI={ADMIN}";'
                f"URI={ADMIN}"
            )
        else:
            return honest(chain)
        return [(b"x-forwarded-client-cert", value.encode())]

    return make


@pytest.mark.parametrize(
    "kind", ["uri", "hash", "chain-leaf", "quoted-subject-hides-separators"]
)
async def test_cert_uri_hash_disagree(
    mesh: Mesh, worker: Svid, privileged: Svid, kind: str
) -> None:
    proxy = make_proxy(mesh.server.pki, mesh.server.port, lying(kind, privileged.cert))
    async with running_proxy(proxy) as port:
        async with mesh.via_proxy(worker) as c:
            for client_id in (WORKER, ADMIN):
                r = await c.post(
                    f"https://127.0.0.1:{port}/token",
                    data={"grant_type": "client_credentials", "client_id": client_id},
                )
                assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


async def test_quoted_subject_is_data(mesh: Mesh, worker: Svid) -> None:
    """Separators inside a quoted Subject do not split the element."""

    def make(chain: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
        leaf = x509.load_der_x509_certificate(chain[0])
        value = (
            f'By={SWIM_AS_BY};Cert="{escaped_pem(leaf)}";'
            f'Subject="O=a\\"b,c;d=e, By=x";URI={WORKER}'
        )
        return [(b"x-forwarded-client-cert", value.encode())]

    proxy = make_proxy(mesh.server.pki, mesh.server.port, make)
    async with running_proxy(proxy) as port:
        async with mesh.via_proxy(worker) as c:
            r = await c.post(
                f"https://127.0.0.1:{port}/token",
                data={"grant_type": "client_credentials", "client_id": WORKER},
            )
    assert r.status_code == 200, r.text


def broken(pki: Pki) -> dict[str, Svid]:
    ca, now = pki.example, dt.datetime.now(dt.UTC)
    return {
        "expired": ca.issue(
            "mesh-expired",
            [WORKER],
            not_before=now - dt.timedelta(hours=3),
            not_after=now - dt.timedelta(hours=1),
        ),
        "ca-leaf": ca.issue("mesh-ca-leaf", [WORKER], is_ca=True),
        "no-digital-signature": ca.issue(
            "mesh-nods", [WORKER], digital_signature=False
        ),
        "other-trust-domain-ca": pki.other.issue("mesh-x-td", [WORKER]),
        "two-uri-sans": ca.issue("mesh-two", [WORKER, ADMIN]),
    }


@pytest.mark.parametrize(
    "variant",
    [
        "expired",
        "ca-leaf",
        "no-digital-signature",
        "other-trust-domain-ca",
        "two-uri-sans",
    ],
)
async def test_forwarded_svid_verified_like_a_handshake(
    mesh: Mesh, worker: Svid, variant: str
) -> None:
    svid = broken(mesh.server.pki)[variant]
    r = await mesh.token(svid, client_id=WORKER)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text
    assert r.json()["error_description"] == "client certificate is not a valid SVID"


async def test_identity_without_certificate_refused(mesh: Mesh, worker: Svid) -> None:
    """The proxy here is not marked as validating."""
    proxy = make_proxy(
        mesh.server.pki,
        mesh.server.port,
        envoy_xfcc(SWIM_AS_BY, cert=False, chain=False),
    )
    async with running_proxy(proxy) as port:
        async with mesh.via_proxy(worker) as c:
            r = await c.post(
                f"https://127.0.0.1:{port}/token",
                data={"grant_type": "client_credentials", "client_id": WORKER},
            )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


@pytest.mark.parametrize(
    "value",
    [
        b"By=" + SWIM_AS_BY.encode() + b';Cert="unterminated',
        b"garbage",
        b"URI=" + b"a" * 40_000,
        b",".join([b"URI=spiffe://example.org/a"] * 17),
        b"By=" + SWIM_AS_BY.encode() + b";URI=\xc3\xa9",
    ],
    ids=["unbalanced-quote", "garbage", "oversized", "too-many-elements", "not-ascii"],
)
async def test_garbage_from_trusted_proxy(
    mesh: Mesh, worker: Svid, value: bytes
) -> None:
    proxy = make_proxy(
        mesh.server.pki,
        mesh.server.port,
        lambda chain: [(b"x-forwarded-client-cert", value)],
    )
    async with running_proxy(proxy) as port:
        async with mesh.via_proxy(worker) as c:
            r = await c.post(
                f"https://127.0.0.1:{port}/token",
                data={"grant_type": "client_credentials", "client_id": WORKER},
            )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.headers["cache-control"] == "no-store"


async def test_downstream_sees_no_forwarded_header(mesh: Mesh) -> None:
    """The headers are removed from the request scope, trusted peer or not."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))

    async def receive() -> Any:
        raise AssertionError("not read")

    async def send(message: Any) -> None:
        raise AssertionError("not sent")

    middleware = mesh_middleware(mesh.server.settings, mesh.server.services, probe)
    for peer in ("127.0.0.1", "127.0.0.2"):
        scope = {
            "type": "http",
            "client": (peer, 1),
            "headers": [
                (b"x-forwarded-client-cert", b"URI=x"),
                (b"client-cert", b":YWJj:"),
                (b"client-cert-chain", b":YWJj:"),
                (b"host", b"a"),
            ],
        }
        await middleware(scope, receive, send)
    assert seen == [[(b"host", b"a")], [(b"host", b"a")]]
