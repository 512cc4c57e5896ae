"""Mesh mode with the other forwarded formats: RFC 9440 Client-Cert /
Client-Cert-Chain, and nginx's $ssl_client_escaped_cert (STANDARDS.md §12).

Each runs swim-as behind a proxy of our own that writes that format.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.mesh_support import (
    TD,
    WORKER,
    Mesh,
    admin,
    mesh_server,
    verified_claims,
)
from tests.support.forwarding import byte_sequence, der, escaped_pem
from tests.support.harness import TestPki as Pki
from tests.support.pki import Authority
from tests.support.postgres import create_database
from tests.support.proxy import HeaderMaker, nginx_escaped, rfc9440_headers

FORMATS: dict[str, tuple[HeaderMaker, dict[str, object]]] = {
    "rfc9440": (rfc9440_headers, {}),
    "nginx": (nginx_escaped("ssl-client-cert"), {"header": "SSL-Client-Cert"}),
}


@pytest.fixture(scope="module", params=sorted(FORMATS))
async def mesh(
    request: pytest.FixtureRequest,
    postgres_server: str,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Mesh]:
    source = request.param
    headers, mesh_options = FORMATS[source]
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp(f"mesh-{source}")
    async with mesh_server(
        pki,
        url,
        folder,
        headers,
        tls=None,
        server={"client_certificate_source": source},
        mesh={"trusted_proxies": ["127.0.0.2/32"], **mesh_options},
    ) as m:
        await admin(m.server).add(WORKER, method="tls_client_auth")
        yield m


async def test_bound_to_client_leaf(mesh: Mesh) -> None:
    worker = mesh.server.pki.example.issue("fmt-worker", [WORKER])
    r = await mesh.token(worker, client_id=WORKER)
    assert r.status_code == 200, r.text
    claims = await verified_claims(mesh, r.json()["access_token"])
    assert claims["cnf"] == {"x5t#S256": worker.x5t}


async def test_chain_under_intermediate(mesh: Mesh) -> None:
    """RFC 9440 carries the intermediates; nginx's variable holds only the
    leaf, so an SVID under an intermediate that is not in the bundle fails."""
    sid = f"{TD}/ns/prod/sa/fmt-chained"
    mid = Authority(
        mesh.server.pki.folder / "fmt-mid",
        "fmt-mid",
        "example.org",
        parent=mesh.server.pki.example,
    )
    chained = mid.issue("fmt-chained", [sid])
    await admin(mesh.server).add(sid, method="spiffe_x509")
    r = await mesh.token(chained, client_id=sid)
    if mesh.server.settings.server.client_certificate_source == "rfc9440":
        assert r.status_code == 200, r.text
        claims = await verified_claims(mesh, r.json()["access_token"])
        assert claims["cnf"] == {"x5t#S256": chained.x5t}
    else:
        assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


async def test_header_straight_to_swim_as_is_ignored(mesh: Mesh) -> None:
    worker = mesh.server.pki.example.issue("fmt-straight", [WORKER])
    r = await mesh.direct_token(
        {
            "client-cert": byte_sequence(der(worker.cert)),
            "ssl-client-cert": escaped_pem(worker.cert),
            "x-forwarded-client-cert": f'Cert="{escaped_pem(worker.cert)}"',
        },
        client_id=WORKER,
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == "client certificate required"


async def test_no_certificate(mesh: Mesh) -> None:
    r = await mesh.token(None, client_id=WORKER)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == "client certificate required"
