"""Limits on what an unauthenticated client can hold: header size and time.

A connection needs no client certificate, so request headers are bounded in
size (431) and in time (408, or a silent close for a connection that sends
nothing), over the real TLS listener of the server runner.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from swim_as import server as runner
from swim_as.tls import TlsContextManager
from tests.support.harness import TestPki, client_context


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def talk(port: int, pki: TestPki, data: bytes, wait: float = 5) -> bytes:
    context: ssl.SSLContext = client_context(pki)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=wait)
    finally:
        writer.close()


@pytest.fixture
def quick_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "HEADER_TIMEOUT_SECONDS", 0.5)


async def test_normal_request(pki: TestPki) -> None:
    tls = TlsContextManager(pki.server.chain_path, pki.server.key_path)
    async with runner.serving(app, tls, lifespan="off") as port:
        answer = await talk(
            port, pki, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
    assert answer.startswith(b"HTTP/1.1 200")


async def test_oversized_headers_get_431(pki: TestPki) -> None:
    tls = TlsContextManager(pki.server.chain_path, pki.server.key_path)
    big = b"x-big: " + b"a" * (runner.MAX_HEADER_BYTES + 10) + b"\r\n"
    async with runner.serving(app, tls, lifespan="off") as port:
        answer = await talk(port, pki, b"GET / HTTP/1.1\r\nhost: x\r\n" + big + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")


async def test_many_headers_get_431(pki: TestPki) -> None:
    tls = TlsContextManager(pki.server.chain_path, pki.server.key_path)
    many = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
    async with runner.serving(app, tls, lifespan="off") as port:
        answer = await talk(
            port, pki, b"GET / HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n"
        )
    assert answer.startswith(b"HTTP/1.1 431")


async def test_slow_headers_get_408(pki: TestPki, quick_timeout: None) -> None:
    tls = TlsContextManager(pki.server.chain_path, pki.server.key_path)
    async with runner.serving(app, tls, lifespan="off") as port:
        answer = await talk(port, pki, b"GET / HTTP/1.1\r\nhost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408")


async def test_silent_connection_is_closed(pki: TestPki, quick_timeout: None) -> None:
    tls = TlsContextManager(pki.server.chain_path, pki.server.key_path)
    async with runner.serving(app, tls, lifespan="off") as port:
        answer = await talk(port, pki, b"")
    assert answer == b""


async def test_keep_alive_still_works(pki: TestPki, quick_timeout: None) -> None:
    tls = TlsContextManager(pki.server.chain_path, pki.server.key_path)
    request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
    async with runner.serving(app, tls, lifespan="off") as port:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(pki), server_hostname="127.0.0.1"
        )
        try:
            for _ in range(3):
                writer.write(request)
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"ok"), timeout=5)
                assert head.startswith(b"HTTP/1.1 200")
                await asyncio.sleep(0.3)  # under the header timeout each time
        finally:
            writer.close()
