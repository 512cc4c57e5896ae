"""Mesh mode where swim-as terminates mTLS from its own sidecar (D5).

swim-as listens with TLS; the proxy connects to it over mutual TLS with its
own X.509-SVID, which must carry a configured proxy SPIFFE ID. That
certificate identifies the proxy, verified as an SVID, and never the client:
the token is bound to the client leaf from the proxy's XFCC. A workload that
connects straight to swim-as with its own SVID is not a proxy, and in mesh
mode its handshake certificate is not a client certificate either.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.mesh_support import (
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
from tests.support.forwarding import xfcc_element
from tests.support.harness import TestPki as Pki
from tests.support.pki import Svid, x5t_s256
from tests.support.postgres import create_database
from tests.support.proxy import envoy_xfcc, running_proxy

SIDECAR = f"{TD}/ns/auth/sa/swim-as-sidecar"


def upstream_context(pki: Pki, svid: Svid) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.web.bundle_path))
    context.load_cert_chain(str(svid.chain_path), str(svid.key_path))
    return context


@pytest.fixture(scope="module")
def sidecar(pki: Pki) -> Svid:
    return pki.example.issue("sidecar", [SIDECAR])


@pytest.fixture(scope="module")
async def mesh(
    postgres_server: str,
    pki: Pki,
    sidecar: Svid,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Mesh]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("mesh-tls")
    async with mesh_server(
        pki,
        url,
        folder,
        envoy_xfcc(SWIM_AS_BY),
        proxy_options={
            "source_address": "127.0.0.1",
            "upstream_tls": upstream_context(pki, sidecar),
        },
        server={"client_certificate_source": "xfcc"},
        mesh={"trusted_proxies": ["127.0.0.0/8"], "proxy_spiffe_ids": [SIDECAR]},
    ) as m:
        yield m


@pytest.fixture(scope="module")
async def worker(mesh: Mesh) -> Svid:
    svid = mesh.server.pki.example.issue("tls-mesh-worker", [WORKER])
    await admin(mesh.server).add(WORKER, method="tls_client_auth")
    return svid


async def test_bound_to_client_not_to_proxy(
    mesh: Mesh, worker: Svid, sidecar: Svid
) -> None:
    r = await mesh.token(worker, client_id=WORKER)
    assert r.status_code == 200, r.text
    claims = await verified_claims(mesh, r.json()["access_token"])
    assert claims["cnf"] == {"x5t#S256": worker.x5t}
    assert worker.x5t not in (sidecar.x5t, x5t_s256(mesh.server.pki.server.cert))


async def test_workload_straight_to_swim_as(
    mesh: Mesh, worker: Svid, caplog: pytest.LogCaptureFixture
) -> None:
    """Its SVID is not a proxy's, and is not taken as a client certificate."""
    caplog.set_level(logging.WARNING, logger="swim_as.mesh")
    header = {"x-forwarded-client-cert": xfcc_element(worker.cert, by=[SWIM_AS_BY])}
    with_header = await mesh.direct_token(header, worker, client_id=WORKER)
    without = await mesh.direct_token({}, worker, client_id=WORKER)
    for r in (with_header, without):
        assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
        assert r.json()["error_description"] == "client certificate required"
    [record] = warnings_with(caplog, "mesh.untrusted_forward")
    assert f"SPIFFE ID '{WORKER}' is not a trusted proxy" in record.getMessage()


async def test_proxy_without_its_certificate(
    mesh: Mesh, worker: Svid, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="swim_as.mesh")
    anonymous = make_proxy(
        mesh.server.pki,
        mesh.server.port,
        envoy_xfcc(SWIM_AS_BY),
        source_address="127.0.0.1",
        upstream_tls=ssl.create_default_context(
            cafile=str(mesh.server.pki.web.bundle_path)
        ),
    )
    async with running_proxy(anonymous) as port:
        async with mesh.via_proxy(worker) as c:
            r = await c.post(
                f"https://127.0.0.1:{port}/token",
                data={"grant_type": "client_credentials", "client_id": WORKER},
            )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    [record] = warnings_with(caplog, "mesh.untrusted_forward")
    assert "showed no certificate" in record.getMessage()


async def test_proxy_with_a_broken_svid(mesh: Mesh, worker: Svid) -> None:
    """The proxy's certificate is verified as an SVID, not just matched."""
    fake = mesh.server.pki.example.issue("fake-sidecar", [SIDECAR], is_ca=True)
    impostor = make_proxy(
        mesh.server.pki,
        mesh.server.port,
        envoy_xfcc(SWIM_AS_BY),
        source_address="127.0.0.1",
        upstream_tls=upstream_context(mesh.server.pki, fake),
    )
    async with running_proxy(impostor) as port:
        async with mesh.via_proxy(worker) as c:
            r = await c.post(
                f"https://127.0.0.1:{port}/token",
                data={"grant_type": "client_credentials", "client_id": WORKER},
            )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
