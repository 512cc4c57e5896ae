"""A server process for test_tls_workers.py: ``python tls_worker_app.py PORT
WORKERS CERT KEY CA [SECOND_PORT]``. Serves on 127.0.0.1 only; with
SECOND_PORT, also on a second listener with its own TLS contexts.

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

from swim_as.server import Listener, ServedApp, run
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
        {
            "pid": os.getpid(),
            "chain": len(tls.get("client_cert_chain", [])),
            "port": scope["server"][1],
        }
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


def build(
    cert_file: str, key_file: str, ca_file: str, second: bool = False
) -> ServedApp:
    with open(ca_file, "rb") as pem:
        authorities = x509.load_pem_x509_certificates(pem.read())
    also: tuple[Listener, ...] = ()
    if second:
        also = (Listener(app, TlsContextManager(cert_file, key_file, authorities)),)
    return ServedApp(app, TlsContextManager(cert_file, key_file, authorities), also)


def main() -> None:
    port, workers, cert_file, key_file, ca_file, *second = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    run(
        functools.partial(build, cert_file, key_file, ca_file, bool(second)),
        host="127.0.0.1",
        port=int(port),
        workers=int(workers),
        timeout_graceful_shutdown=5,
        restart_window=30,
        also_listen=(("127.0.0.1", int(second[0])),) if second else (),
    )


if __name__ == "__main__":
    main()
