"""A server process for test_tls_workers.py: ``python tls_worker_app.py PORT
WORKERS CERT KEY CA``. Serves on 127.0.0.1 only.

``build`` is what a worker calls: it is pickled by reference (this module's
name) inside a ``functools.partial`` together with the file paths.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys

from cryptography import x509
from starlette.types import Receive, Scope, Send

from swim_as.server import ServedApp, run
from swim_as.tls import TlsContextManager


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    tls = scope.get("extensions", {}).get("tls", {})
    body = json.dumps(
        {"pid": os.getpid(), "chain": len(tls.get("client_cert_chain", []))}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build(cert_file: str, key_file: str, ca_file: str) -> ServedApp:
    with open(ca_file, "rb") as pem:
        authorities = x509.load_pem_x509_certificates(pem.read())
    return ServedApp(app, TlsContextManager(cert_file, key_file, authorities))


def main() -> None:
    port, workers, cert_file, key_file, ca_file = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    run(
        functools.partial(build, cert_file, key_file, ca_file),
        host="127.0.0.1",
        port=int(port),
        workers=int(workers),
        timeout_graceful_shutdown=5,
        restart_window=30,
    )


if __name__ == "__main__":
    main()
