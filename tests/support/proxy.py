"""A small TLS-terminating reverse proxy on 127.0.0.1, standing in for an
Envoy sidecar or nginx in front of swim-as.

It terminates the client's mutual TLS itself (the client proves its key to
the proxy), removes every forwarded-certificate header the client sent
(Envoy's SANITIZE_SET) unless told to append (APPEND_FORWARD), adds its own
header describing the client certificate, and forwards the request to
swim-as from a chosen loopback source address, over plain HTTP or over
mutual TLS with the proxy's own certificate. One request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cryptography import x509

from swim_as.tls import CLIENT_VERIFY_FLAGS, client_chain_der
from tests.support.forwarding import byte_sequence, escaped_pem, quoted

FORWARD_HEADERS = {
    b"x-forwarded-client-cert",
    b"client-cert",
    b"client-cert-chain",
    b"x-ssl-client-cert",
}
HOP_HEADERS = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"}

# Builds the headers the proxy adds, from the client's chain (DER, leaf
# first; empty without a client certificate).
HeaderMaker = Callable[[tuple[bytes, ...]], list[tuple[bytes, bytes]]]


def envoy_xfcc(
    by: str | None, *, cert: bool = True, chain: bool = True, uri: bool = True
) -> HeaderMaker:
    """Envoy's SANITIZE_SET element: By, Hash, Cert, Chain, Subject, URI."""

    def make(chain_der: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
        if not chain_der:
            return []
        certs = [x509.load_der_x509_certificate(d) for d in chain_der]
        leaf = certs[0]
        pairs = [f"By={by}"] if by else []
        pairs.append(f"Hash={hashlib.sha256(chain_der[0]).hexdigest()}")
        if cert:
            pairs.append(f'Cert="{escaped_pem(leaf)}"')
        if chain:
            pairs.append(f'Chain="{escaped_pem(*certs)}"')
        pairs.append(f"Subject={quoted(leaf.subject.rfc4514_string())}")
        if uri:
            try:
                sans = leaf.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName
                ).value
            except x509.ExtensionNotFound:
                sans = x509.SubjectAlternativeName([])
            for value in sans.get_values_for_type(x509.UniformResourceIdentifier):
                pairs.append(f"URI={value}")
        return [(b"x-forwarded-client-cert", ";".join(pairs).encode())]

    return make


def rfc9440_headers(chain_der: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    """RFC 9440: Client-Cert (leaf), Client-Cert-Chain (the rest)."""
    if not chain_der:
        return []
    headers = [(b"client-cert", byte_sequence(chain_der[0]).encode())]
    if len(chain_der) > 1:
        rest = ", ".join(byte_sequence(d) for d in chain_der[1:])
        headers.append((b"client-cert-chain", rest.encode()))
    return headers


def nginx_escaped(name: str) -> HeaderMaker:
    """nginx: proxy_set_header <name> $ssl_client_escaped_cert (leaf only)."""

    def make(chain_der: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
        if not chain_der:
            return []
        leaf = x509.load_der_x509_certificate(chain_der[0])
        return [(name.encode(), escaped_pem(leaf).encode())]

    return make


@dataclass
class Proxy:
    """Configuration of one proxy; :func:`running_proxy` serves it."""

    upstream_port: int
    cert_file: str
    key_file: str
    client_authorities: list[str]
    headers: HeaderMaker
    source_address: str = "127.0.0.1"
    upstream_tls: ssl.SSLContext | None = None
    append: bool = False
    requests: list[dict[bytes, bytes]] = field(default_factory=list)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.verify_mode = ssl.CERT_OPTIONAL
        # Like swim-as's own listener: dates and key usage are for the
        # application to judge, so expired or odd SVIDs reach it.
        context.verify_flags = CLIENT_VERIFY_FLAGS
        context.options |= ssl.OP_NO_TICKET
        context.load_cert_chain(self.cert_file, self.key_file)
        for path in self.client_authorities:
            context.load_verify_locations(cafile=path)
        return context

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await self._relay(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head[:-4].split(b"\r\n")
        headers: list[tuple[bytes, bytes]] = []
        length = 0
        for line in lines:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                length = int(value)
            if name in HOP_HEADERS:
                continue
            if name in FORWARD_HEADERS and not (
                self.append and name == b"x-forwarded-client-cert"
            ):
                continue  # sanitize: never pass on what the client claims
            headers.append((name, value))
        body = await reader.readexactly(length)

        ssl_object = writer.get_extra_info("ssl_object")
        chain = client_chain_der(ssl_object) if ssl_object is not None else ()
        added = self.headers(chain)
        if self.append:
            merged: list[tuple[bytes, bytes]] = []
            for name, value in added:
                previous = [v for n, v in headers if n == name]
                if previous:
                    headers = [(n, v) for n, v in headers if n != name]
                    value = b",".join([*previous, value])
                merged.append((name, value))
            added = merged
        headers += added
        self.requests.append(dict(headers))

        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1",
            self.upstream_port,
            ssl=self.upstream_tls,
            server_hostname="127.0.0.1" if self.upstream_tls else None,
            local_addr=(self.source_address, 0),
        )
        try:
            out = [request_line]
            out += [name + b": " + value for name, value in headers]
            out.append(b"connection: close")
            upstream_writer.write(b"\r\n".join(out) + b"\r\n\r\n" + body)
            await upstream_writer.drain()
            response = await upstream_reader.read()
        finally:
            upstream_writer.close()
            with contextlib.suppress(Exception):
                await upstream_writer.wait_closed()
        writer.write(response)
        await writer.drain()


@contextlib.asynccontextmanager
async def running_proxy(proxy: Proxy, port: int = 0) -> AsyncIterator[int]:
    """Serve the proxy on 127.0.0.1; yield its port."""
    server = await asyncio.start_server(
        proxy.handle, "127.0.0.1", port, ssl=proxy.server_context()
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
