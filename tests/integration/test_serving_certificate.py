"""swim-as's serving certificate changes under a running server (issue 5, 2).

The certificate and key files are replaced on disk; new connections get
the new certificate, the connection opened before keeps working, and a
half-rotated pair (a new certificate with the old key) keeps the current
certificate in force and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support import harness
from tests.support.bundle_server import write_bytes_atomically
from tests.support.harness import Running, running_server


@pytest.fixture
async def server(
    postgres_server: str, pki: harness.TestPki, tmp_path: Path
) -> AsyncIterator[Running]:
    from tests.support.postgres import create_database

    url = await create_database(postgres_server)
    cert, key = tmp_path / "server.pem", tmp_path / "server.key.pem"
    shutil.copy(pki.server.chain_path, cert)
    shutil.copy(pki.server.key_path, key)
    tls = {"cert_file": cert, "key_file": key}
    async with running_server(pki, url, tmp_path, tls=tls) as running:
        yield running


async def connect(server: Running) -> tuple[bytes, Any]:
    """Open a connection; return the certificate it got and the streams."""
    context = ssl.create_default_context(cafile=str(server.pki.web.bundle_path))
    port = int(server.issuer.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return der, (reader, writer)


async def close(connection: Any) -> None:
    writer = connection[1]
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def new_connection_certificate(server: Running) -> bytes:
    der, connection = await connect(server)
    await close(connection)
    return bytes(der)


async def healthz(connection: Any) -> bytes:
    """One request on an open connection; the status line and headers."""
    reader, writer = connection
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return bytes(head)


def der(svid: Any) -> bytes:
    return bytes(svid.cert.public_bytes(serialization.Encoding.DER))


async def test_new_connections_see_the_new_certificate(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    tls = server.settings.tls
    assert tls.cert_file is not None and tls.key_file is not None
    seen, kept = await connect(server)
    assert seen == der(server.pki.server)
    assert (await healthz(kept)).startswith(b"HTTP/1.1 200")

    successor = server.pki.web.issue(
        "server-next", dns=["localhost"], ips=["127.0.0.1"]
    )
    serving = server.services.serving_cert
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="swim_as.tls"):
        # Half-way through a rotation: the new certificate, the old key.
        write_bytes_atomically(tls.cert_file, successor.chain_path.read_bytes())
        assert not serving.poll_files()
        assert await new_connection_certificate(server) == der(server.pki.server)
        refused = [
            r
            for r in caplog.records
            if getattr(r, "event", "") == "tls.certificate_refused"
        ]
        assert len(refused) == 1
        assert not serving.poll_files()  # the same bad pair: said once
        # A trust change meanwhile waits for a pair that loads.
        serving.push_authorities()

        write_bytes_atomically(tls.key_file, successor.key_path.read_bytes())
        serving.poll_files()
    assert await new_connection_certificate(server) == der(successor)
    assert any(
        getattr(r, "event", "") == "tls.certificate_replaced" for r in caplog.records
    )
    # The connection opened before the change keeps working, on its own.
    assert (await healthz(kept)).startswith(b"HTTP/1.1 200")
    assert kept[1].get_extra_info("ssl_object").getpeercert(binary_form=True) == der(
        server.pki.server
    )
    await close(kept)
    # Client certificates still work: the authorities came along.
    svid = server.pki.example.issue("after-rotation", ["spiffe://example.org/a/b"])
    r = await server.token(svid, client_id="spiffe://example.org/a/b")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")  # unknown


async def test_background_poll_picks_up_the_files(server: Running) -> None:
    tls = server.settings.tls
    assert tls.cert_file is not None and tls.key_file is not None
    successor = server.pki.web.issue("server-bg", dns=["localhost"], ips=["127.0.0.1"])
    write_bytes_atomically(tls.key_file, successor.key_path.read_bytes())
    write_bytes_atomically(tls.cert_file, successor.chain_path.read_bytes())
    for _ in range(100):  # the poll runs every second; give it 5
        if await new_connection_certificate(server) == der(successor):
            break
        await asyncio.sleep(0.05)
    assert await new_connection_certificate(server) == der(successor)
