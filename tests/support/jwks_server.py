"""A tiny HTTP(S) server on 127.0.0.1 for jwks_uri tests.

It counts every TCP connection it accepts (so a test can prove that no
request ever reached it) and answers each request with the current
``status``, ``body`` and ``headers``; ``delay`` holds the answer back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any


class JwksServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self.paths: list[str] = []
        self.hosts: list[str] = []
        self.status = 200
        self.body = b'{"keys": []}'
        self.headers: dict[str, str] = {"content-type": "application/json"}
        self.delay = 0.0

    def serve_json(self, document: Any) -> None:
        self.status, self.body = 200, json.dumps(document).encode()

    def url(self, path: str = "/jwks", host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self._tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            self.paths.append(lines[0].split(" ")[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "host":
                    self.hosts.append(value.strip())
            if self.delay:
                await asyncio.sleep(self.delay)
            headers = {"content-length": str(len(self.body)), **self.headers}
            response = f"HTTP/1.1 {self.status} X\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items()
            )
            writer.write(response.encode() + b"connection: close\r\n\r\n" + self.body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def jwks_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[JwksServer]:
    server = JwksServer(tls)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def server_tls(cert_file: Any, key_file: Any) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_file), str(key_file))
    return context
