"""A small HTTPS server on 127.0.0.1 that plays a SPIFFE bundle endpoint.

The test sets what it answers (status, body, headers, a delay, a body sent
slowly or without a length) and swaps the server certificate at will: a Web
PKI certificate for ``https_web``, an X.509-SVID for ``https_spiffe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.pki import Authority, Svid


def bundle_document(
    authorities: list[x509.Certificate],
    *,
    sequence: int | None = None,
    refresh_hint: int | None = None,
    jwt_keys: list[dict[str, Any]] | None = None,
    extra_entries: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A SPIFFE bundle (JWK Set) holding ``authorities`` as x509-svid keys."""
    import base64

    import jwt

    keys: list[dict[str, Any]] = []
    for cert in authorities:
        entry = dict(
            jwt.get_algorithm_by_name("ES256").to_jwk(cert.public_key(), as_dict=True)
        )
        entry.pop("alg", None)
        entry["use"] = "x509-svid"
        entry["x5c"] = [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        ]
        keys.append(entry)
    keys += jwt_keys or []
    keys += extra_entries or []
    document: dict[str, Any] = {"keys": keys}
    if sequence is not None:
        document["spiffe_sequence"] = sequence
    if refresh_hint is not None:
        document["spiffe_refresh_hint"] = refresh_hint
    return document


def bundle_bytes(*authorities: Authority, **options: Any) -> bytes:
    return json.dumps(
        bundle_document([a.root for a in authorities], **options)
    ).encode()


@dataclass
class BundleServer:
    """What the endpoint answers; change the fields between requests."""

    svid: Svid
    status: int = 200
    body: bytes = b'{"keys": []}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    declare_length: bool = True
    requests: int = 0
    port: int = 0
    # Answers for the next requests, before the standing ones above:
    # (status, body, headers).
    script: list[tuple[int, bytes, dict[str, str]]] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/bundle"

    def serve(self, body: bytes, status: int = 200) -> None:
        self.body, self.status = body, status

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.svid.chain_path), str(self.svid.key_path))
        return context

    def use_certificate(self, svid: Svid) -> None:
        """Present another certificate from the next connection on."""
        self.svid = svid
        assert self._server is not None
        # asyncio keeps the listener's context; swap the certificate in it.
        context: ssl.SSLContext = self._server._ssl_context  # type: ignore[attr-defined]
        context.load_cert_chain(str(svid.chain_path), str(svid.key_path))

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            status, body, headers = self.status, self.body, self.headers
            if self.script:
                status, body, headers = self.script.pop(0)
            if self.delay:
                await asyncio.sleep(self.delay)
            head = [f"HTTP/1.1 {status} X"]
            if self.declare_length:
                head.append(f"Content-Length: {len(body)}")
            head += [f"{k}: {v}" for k, v in headers.items()]
            head += ["Content-Type: application/json", "Connection: close", "", ""]
            writer.write("\r\n".join(head).encode())
            for start in range(0, len(body), 64 * 1024):
                writer.write(body[start : start + 64 * 1024])
                await writer.drain()
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def bundle_server(svid: Svid) -> AsyncIterator[BundleServer]:
    """Serve on a free loopback port until the block ends."""
    server = BundleServer(svid)
    listener = await asyncio.start_server(
        server._handle, "127.0.0.1", 0, ssl=server.context()
    )
    server._server = listener
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(listener.wait_closed(), timeout=5)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` the way spiffe-helper and Kubernetes do: a rename."""
    import os

    staged = path.with_name(path.name + ".staged")
    staged.write_bytes(data)
    os.replace(staged, path)
