"""A real swim-as on a real TLS socket, in the test's event loop.

:func:`running_server` writes a configuration (as an operator would), runs
the migrations on the given database, and serves the application through
swim-as's own runner on a free loopback port with the server certificate of
the test PKI. Tests talk to it with ``httpx.AsyncClient`` over mTLS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from swim_as.app import build_services, create_listener_apps
from swim_as.process import tls_contexts
from swim_as.server import Listener, serving
from swim_as.settings import Settings
from swim_as.storage.migrate import upgrade
from swim_as.tls import TlsContextManager
from tests.support.pki import Authority, Svid


class OffsetClock:
    """The real clock, moved by ``advance`` (for expiry tests)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class TestPki:
    __test__ = False  # a fixture value, not a test class
    folder: Path
    web: Authority
    server: Svid
    example: Authority
    other: Authority


@dataclass
class Running:
    """A swim-as serving on 127.0.0.1."""

    issuer: str
    settings: Settings
    services: Any
    tls: TlsContextManager | None
    clock: OffsetClock
    pki: TestPki
    port: int = 0

    def client(self, svid: Svid | None = None, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=client_context(self.pki, svid), timeout=10, **options
        )

    async def token(self, svid: Svid | None, **form: str) -> httpx.Response:
        form.setdefault("grant_type", "client_credentials")
        async with self.client(svid) as c:
            return await c.post(f"{self.issuer}/token", data=form)

    async def register(self, svid: Svid | None, body: dict[str, Any]) -> httpx.Response:
        async with self.client(svid) as c:
            return await c.post(f"{self.issuer}/register", json=body)

    async def jwks(self) -> dict[str, Any]:
        async with self.client() as c:
            return (await c.get(f"{self.issuer}/jwks")).json()  # type: ignore[no-any-return]


def client_context(pki: TestPki, svid: Svid | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.web.bundle_path))
    if svid is not None:
        context.load_cert_chain(str(svid.chain_path), str(svid.key_path))
    return context


def write_kek(folder: Path) -> Path:
    path = folder / "kek"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    os.chmod(path, 0o600)
    return path


def make_settings(
    pki: TestPki, database_url: str, folder: Path, *, port: int = 0, **overrides: Any
) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    bundles = {}
    for authority in (pki.example, pki.other):
        path = folder / f"{authority.trust_domain}.bundle.pem"
        path.write_bytes(authority.bundle_path.read_bytes())
        bundles[authority.trust_domain] = path
    data: dict[str, Any] = {
        "issuer": f"https://127.0.0.1:{port}",
        "server": {"host": "127.0.0.1", "port": port},
        "tls": {"cert_file": pki.server.chain_path, "key_file": pki.server.key_path},
        "database": {"url": database_url},
        "trust_domains": [{"name": td, "bundle_file": p} for td, p in bundles.items()],
        "keys": {"encryption_key_file": write_kek(folder)},
        "tokens": {
            "default_audience": "https://api.example.org",
            "lifetime_seconds": 300,
        },
        "logging": {"format": "text"},
    }
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)  # e.g. tls=None: plain HTTP behind a proxy
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Settings(**data)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running_server(
    pki: TestPki, database_url: str, folder: Path, **overrides: Any
) -> AsyncIterator[Running]:
    """Migrate, then serve swim-as until the block ends.

    ``port`` in the overrides picks the port (the issuer then stays the
    caller's, e.g. a proxy's URL); the TLS contexts and listeners follow the
    settings as ``swim-as serve`` builds them.
    """
    port = overrides.pop("port", None) or free_port()
    settings = make_settings(pki, database_url, folder, port=port, **overrides)
    await asyncio.to_thread(upgrade, settings.database.url)
    clock = OffsetClock()
    services = build_services(settings, clock=clock)
    tls, mtls_tls = tls_contexts(settings, services)
    apps = create_listener_apps(settings, tls=tls, mtls_tls=mtls_tls, services=services)
    also: tuple[tuple[Listener, int], ...] = ()
    if apps.mtls is not None and settings.server.mtls is not None:
        also = ((Listener(apps.mtls, mtls_tls), settings.server.mtls.port),)
    async with serving(apps.main, tls, port=port, also=also):
        yield Running(settings.issuer, settings, services, tls, clock, pki, port)
