"""Shared pieces of the mesh-mode tests: swim-as behind a proxy of our own."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from swim_as.clients.admin import ClientAdmin
from tests.support.harness import Running, TestPki, client_context, running_server
from tests.support.harness import free_port as free_port
from tests.support.pki import Svid
from tests.support.proxy import HeaderMaker, Proxy, running_proxy

TD = "spiffe://example.org"
WORKER = f"{TD}/ns/prod/sa/worker"
ADMIN = f"{TD}/ns/platform/sa/admin"
# The identity of swim-as's own sidecar: what Envoy writes as 'By'.
SWIM_AS_BY = f"{TD}/ns/auth/sa/swim-as"
# The address the trusted proxy connects from; everyone else uses 127.0.0.1.
PROXY_SOURCE = "127.0.0.2"


@dataclass
class Mesh:
    """swim-as and the proxy in front of it."""

    server: Running
    proxy: Proxy
    proxy_port: int

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.proxy_port}"

    @property
    def direct_url(self) -> str:
        scheme = "https" if self.server.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server.port}"

    def via_proxy(self, svid: Svid | None) -> httpx.AsyncClient:
        return self.server.client(svid)

    async def token(self, svid: Svid | None, **form: str) -> httpx.Response:
        form.setdefault("grant_type", "client_credentials")
        async with self.via_proxy(svid) as c:
            return await c.post(f"{self.issuer}/token", data=form)

    async def direct_token(
        self, headers: dict[str, str], svid: Svid | None = None, **form: str
    ) -> httpx.Response:
        """Straight to swim-as, bypassing the proxy, from 127.0.0.1."""
        form.setdefault("grant_type", "client_credentials")
        verify: ssl.SSLContext | bool = (
            client_context(self.server.pki, svid)
            if self.server.tls is not None
            else False
        )
        async with httpx.AsyncClient(verify=verify, timeout=10) as c:
            return await c.post(f"{self.direct_url}/token", data=form, headers=headers)


def make_proxy(
    pki: TestPki,
    upstream_port: int,
    headers: HeaderMaker,
    **options: Any,
) -> Proxy:
    options.setdefault("source_address", PROXY_SOURCE)
    return Proxy(
        upstream_port=upstream_port,
        cert_file=str(pki.server.chain_path),
        key_file=str(pki.server.key_path),
        client_authorities=[str(pki.example.bundle_path), str(pki.other.bundle_path)],
        headers=headers,
        **options,
    )


@contextlib.asynccontextmanager
async def mesh_server(
    pki: TestPki,
    database_url: str,
    folder: Path,
    headers: HeaderMaker,
    *,
    proxy_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Mesh]:
    """swim-as in mesh mode, and a proxy in front whose URL is the issuer."""
    swim_port, proxy_port = free_port(), free_port()
    overrides.setdefault("issuer", f"https://127.0.0.1:{proxy_port}")
    async with running_server(
        pki, database_url, folder, port=swim_port, **overrides
    ) as server:
        proxy = make_proxy(pki, swim_port, headers, **(proxy_options or {}))
        async with running_proxy(proxy, proxy_port):
            yield Mesh(server, proxy, proxy_port)


def admin(server: Running) -> ClientAdmin:
    s = server.services
    return ClientAdmin(
        s.db,
        s.clients,
        s.registration,
        s.clock,
        enabled_methods=frozenset({"tls_client_auth", "spiffe_x509"}),
        actor="test",
    )


async def verified_claims(mesh: Mesh, token: str) -> dict[str, Any]:
    """Verify the token as a resource server would, JWKS via the proxy."""
    async with mesh.via_proxy(None) as c:
        return await claims_of(token, mesh.issuer, c)


async def claims_of(
    token: str, issuer: str, client: httpx.AsyncClient
) -> dict[str, Any]:
    """Verify the token as a resource server would (RFC 9068 §4)."""
    jwks = (await client.get(f"{issuer}/jwks")).json()
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=[header["alg"]],
        audience="https://api.example.org",
        issuer=issuer,
    )
    return claims


def warnings_with(caplog: Any, event: str) -> list[Any]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]
