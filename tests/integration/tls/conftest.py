"""Fixtures for the TLS listener tests: a PKI made at test time, a recording
ASGI application, and a small HTTP/1.1 client over asyncio TLS streams.

Everything listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from swim_as.server import serving
from swim_as.tls import TlsContextManager

LOOPBACK = "127.0.0.1"
NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Issued:
    """A certificate, its key, and where both were written."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path
    chain_file: Path

    @property
    def pem(self) -> str:
        return ssl.DER_cert_to_PEM_cert(
            self.cert.public_bytes(serialization.Encoding.DER)
        )

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


class Pki:
    """Make CAs, SVIDs and server certificates in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cas: dict[x509.Name, Issued] = {}

    def issue(
        self,
        name: str,
        *,
        issuer: Issued | None = None,
        ca: bool = False,
        spiffe_id: str | None = None,
        server: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - dt.timedelta(hours=1))
            .not_valid_after(not_after or NOW + dt.timedelta(days=1))
            .add_extension(
                x509.BasicConstraints(ca=ca, path_length=None), critical=True
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer.key.public_key()
                ),
                critical=False,
            )
        names: list[x509.GeneralName] = []
        if spiffe_id is not None:
            names.append(x509.UniformResourceIdentifier(spiffe_id))
        if server:
            names += [
                x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                x509.DNSName("localhost"),
            ]
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=False
            )
        cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())

        cert_file = self.folder / f"{name}.pem"
        key_file = self.folder / f"{name}.key.pem"
        chain_file = self.folder / f"{name}.chain.pem"
        pem = cert.public_bytes(serialization.Encoding.PEM)
        cert_file.write_bytes(pem)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        # The leaf followed by every CA below the root: what a workload sends.
        chain = pem
        parent = issuer
        while parent is not None and parent.cert.issuer != parent.cert.subject:
            chain += parent.cert.public_bytes(serialization.Encoding.PEM)
            parent = self._cas.get(parent.cert.issuer)
        chain_file.write_bytes(chain)
        issued = Issued(cert, key, cert_file, key_file, chain_file)
        if ca:
            self._cas[subject] = issued
        return issued


@dataclass(frozen=True)
class ListenerPki:
    """The certificates the TLS tests use."""

    server_ca: Issued
    server: Issued
    server_next: Issued
    root_a: Issued
    intermediate_a: Issued
    leaf_a: Issued
    direct_a: Issued
    expired_a: Issued
    future_a: Issued
    root_b: Issued
    leaf_b: Issued
    unknown_root: Issued
    unknown_leaf: Issued
    self_signed: Issued
    folder: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ListenerPki:
    folder = tmp_path_factory.mktemp("tls-pki")
    make = Pki(folder)
    server_ca = make.issue("server-ca", ca=True)
    root_a = make.issue("root-a", ca=True)
    intermediate_a = make.issue("intermediate-a", issuer=root_a, ca=True)
    root_b = make.issue("root-b", ca=True)
    unknown_root = make.issue("unknown-root", ca=True)
    return ListenerPki(
        server_ca=server_ca,
        server=make.issue("server", issuer=server_ca, server=True),
        server_next=make.issue("server-next", issuer=server_ca, server=True),
        root_a=root_a,
        intermediate_a=intermediate_a,
        leaf_a=make.issue(
            "leaf-a", issuer=intermediate_a, spiffe_id="spiffe://a.test/workload"
        ),
        direct_a=make.issue("direct-a", issuer=root_a, spiffe_id="spiffe://a.test/d"),
        expired_a=make.issue(
            "expired-a",
            issuer=root_a,
            spiffe_id="spiffe://a.test/expired",
            not_before=NOW - dt.timedelta(days=3),
            not_after=NOW - dt.timedelta(days=2),
        ),
        future_a=make.issue(
            "future-a",
            issuer=root_a,
            spiffe_id="spiffe://a.test/future",
            not_before=NOW + dt.timedelta(days=2),
            not_after=NOW + dt.timedelta(days=3),
        ),
        root_b=root_b,
        leaf_b=make.issue("leaf-b", issuer=root_b, spiffe_id="spiffe://b.test/w"),
        unknown_root=unknown_root,
        unknown_leaf=make.issue(
            "unknown-leaf", issuer=unknown_root, spiffe_id="spiffe://c.test/w"
        ),
        self_signed=make.issue("self-signed", spiffe_id="spiffe://a.test/self"),
        folder=folder,
    )


@dataclass
class RecordingApp:
    """ASGI app that remembers every HTTP scope and answers with what it saw
    of the TLS extension, as JSON."""

    scopes: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        self.scopes.append(scope)
        while (await receive()).get("more_body"):
            pass
        tls = scope.get("extensions", {}).get("tls")
        body = json.dumps({"tls": tls, "scheme": scope["scheme"]}).encode()
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


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection over TLS (or plain TCP)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @property
    def ssl_object(self) -> ssl.SSLObject:
        ssl_object = self.writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        return ssl_object

    @property
    def server_cert_der(self) -> bytes:
        der = self.ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return der

    async def get(self, path: str = "/") -> Response:
        request = f"GET {path} HTTP/1.1\r\nhost: {LOOPBACK}\r\n\r\n"
        self.writer.write(request.encode("ascii"))
        await self.writer.drain()
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers["content-length"]))
        return Response(int(lines[0].split(" ")[1]), headers, body)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ssl.SSLError, ConnectionError):
            pass


class TlsClient:
    """Clients of the server under test: contexts, connections, requests."""

    def __init__(self, pki: ListenerPki) -> None:
        self.pki = pki

    def context(
        self,
        certificate: Issued | None = None,
        *,
        send_chain: bool = True,
        max_version: ssl.TLSVersion | None = None,
    ) -> ssl.SSLContext:
        """Trust the server CA; present ``certificate`` (with the CAs below
        its root when ``send_chain``)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=self.pki.server_ca.cert_file)
        if max_version is not None:
            context.maximum_version = max_version
        if certificate is not None:
            certfile = certificate.chain_file if send_chain else certificate.cert_file
            context.load_cert_chain(certfile, certificate.key_file)
        return context

    async def open(
        self,
        port: int,
        context: ssl.SSLContext | None,
        *,
        server_hostname: str | None = LOOPBACK,
    ) -> Connection:
        """Connect; with ``server_hostname`` an IP address no SNI is sent."""
        if context is None:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
        else:
            reader, writer = await asyncio.open_connection(
                LOOPBACK, port, ssl=context, server_hostname=server_hostname
            )
        return Connection(reader, writer)

    async def get_once(
        self, port: int, context: ssl.SSLContext | None, **kwargs: Any
    ) -> Response:
        """Open a connection, send one request, close it."""
        connection = await self.open(port, context, **kwargs)
        try:
            return await connection.get()
        finally:
            await connection.close()

    async def refused(self, port: int, context: ssl.SSLContext) -> BaseException:
        """Assert that the server refuses the connection; return the error.

        With TLS 1.3 the client finishes its side of the handshake and sends
        its request before the server has checked the client certificate.
        The server then sends an alert and closes with the request unread, so
        the client sees the alert, a reset or an end of stream, by timing.
        """
        with pytest.raises(
            (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)
        ) as caught:
            await self.get_once(port, context)
        return caught.value


@pytest.fixture
def client(pki: ListenerPki) -> TlsClient:
    return TlsClient(pki)


@pytest.fixture
def serve(pki: ListenerPki) -> Callable[..., AbstractAsyncContextManager[Served]]:
    """``async with serve(app, [authorities]) as served``: swim-as's runner on
    127.0.0.1, port 0, in the test's event loop."""

    @asynccontextmanager
    async def start(
        app: Any,
        authorities: list[x509.Certificate] | None = None,
        *,
        tls: bool = True,
        http: Literal["auto", "httptools", "h11"] = "auto",
    ) -> AsyncIterator[Served]:
        manager = None
        if tls:
            manager = TlsContextManager(
                pki.server.cert_file,
                pki.server.key_file,
                [pki.root_a.cert] if authorities is None else authorities,
            )
        async with serving(app, manager, http=http) as port:
            yield Served(port, manager)

    return start


@dataclass(frozen=True)
class Served:
    port: int
    tls: TlsContextManager | None
