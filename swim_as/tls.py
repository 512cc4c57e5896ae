"""TLS for the swim-as listener: server contexts, rotation, the client's chain.

swim-as asks every client for a certificate without requiring one (discovery
and the JWKS must work without), and hands the chain the client sent to the
application through the ASGI TLS extension (asgiref ``specs/tls.rst``,
version 0.2). The handshake is only a pre-filter: the application verifies
every chain again, per trust domain and at the time of an injected clock
(SPIFFE X509-SVID §5, RFC 8705 §2.1).

What the handshake enforces, on every context this module builds:

- TLS 1.2 at least (RFC 8705 §2 leaves the version to the server; RFC 9325
  §3.1.1 says 1.2 or later).
- ``CERT_OPTIONAL``: a client without a certificate completes the
  handshake; a client whose certificate does not chain to a loaded
  authority does not (OpenSSL sends ``unknown_ca``).
- The loaded authorities are the only anchors, never the system store.
  ``X509_V_FLAG_PARTIAL_CHAIN`` makes each of them an anchor on its own, so
  a registered self-signed client certificate (RFC 8705 §2.2) or an
  intermediate CA of a bundle works without its root.
- ``X509_V_FLAG_NO_CHECK_TIME``: validity dates are not checked at the
  handshake, so an expired or not yet valid SVID reaches the application,
  which refuses it with an OAuth error instead of a TLS alert.
- No session resumption. A resumed session skips certificate verification
  and, with tickets, OpenSSL keeps only the leaf: the intermediates the
  client sent would be lost (checked in the tests).

An ``SSLContext`` can gain certificate authorities but never lose them, so a
change builds a new context. :class:`TlsContextManager` keeps the first
context as the one the listener was created with and moves every new
handshake to the newest context from its ``sni_callback``, which OpenSSL runs
for every ClientHello, with or without a server name. OpenSSL's
``SSL_set_SSL_CTX`` takes the certificate, key and verification store of the
new context, but the verify mode, verify flags and protocol versions stay
those of the first one; every context built here therefore sets them alike.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from collections.abc import Iterable, Sequence
from functools import cache
from os import PathLike
from typing import TypedDict

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = [
    "CLIENT_VERIFY_FLAGS",
    "TlsContextManager",
    "TlsScopeExtension",
    "build_server_context",
    "client_chain_der",
    "tls_scope_extension",
]

logger = logging.getLogger(__name__)

StrPath = str | PathLike[str]

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (1.1.0 and later). The ssl module has no
# name for it; OpenSSL takes the bit as it is.
_X509_V_FLAG_NO_CHECK_TIME = 0x200000

CLIENT_VERIFY_FLAGS = ssl.VerifyFlags(
    ssl.VERIFY_X509_TRUSTED_FIRST
    | ssl.VERIFY_X509_PARTIAL_CHAIN
    | _X509_V_FLAG_NO_CHECK_TIME
)
"""Verify flags of every server context: trusted first, partial chains, no
time check. Set as a whole, never or-ed into defaults, so that every context
has exactly the same flags."""

_ALLOWED_MIN_VERSIONS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)

# Protocol numbers from RFC 5246 §6.2.1 and RFC 8446 §4.2.1, keyed by the
# names SSLObject.version() returns.
_TLS_VERSION_NUMBERS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def build_server_context(
    cert_file: StrPath,
    key_file: StrPath,
    client_authorities: Sequence[x509.Certificate],
    *,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    request_client_certificate: bool = True,
) -> ssl.SSLContext:
    """Build a server context that asks for, but does not require, a client
    certificate (or, with ``request_client_certificate=False``, does not ask
    for one at all: a listener whose clients authenticate elsewhere, e.g.
    beside a separate mTLS listener, RFC 8705 §5).

    ``client_authorities`` is everything a client certificate may chain to:
    the roots of every trust domain and, when registered, self-signed client
    certificates (RFC 8705 §2.2). The list may be empty: a client without a
    certificate is then served, and one that presents a certificate fails the
    handshake with ``unknown_ca``, as it would with a certificate from an
    unknown authority.

    Raises:
        ValueError: ``min_version`` is below TLS 1.2.
        OSError: the certificate or key file cannot be read, or the key does
            not match the certificate (``ssl.SSLError``).
    """
    if min_version not in _ALLOWED_MIN_VERSIONS:
        raise ValueError(f"minimum TLS version {min_version!r}: must be 1.2 or 1.3")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    context.verify_mode = (
        ssl.CERT_OPTIONAL if request_client_certificate else ssl.CERT_NONE
    )
    context.verify_flags = CLIENT_VERIFY_FLAGS
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0

    context.load_cert_chain(cert_file, key_file)
    if client_authorities:
        context.load_verify_locations(cadata=_concatenated_der(client_authorities))
    return context


def _concatenated_der(certificates: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(Encoding.DER) for cert in certificates)


class TlsContextManager:
    """Own the server's TLS contexts and move new handshakes to the newest.

    :attr:`context` is the context the listener is created with; it never
    changes. :meth:`update` builds a new context and every handshake that
    starts afterwards uses it; connections already open keep theirs.

    Thread-safe: :meth:`update` may be called from any thread.
    """

    def __init__(
        self,
        cert_file: StrPath,
        key_file: StrPath,
        client_authorities: Sequence[x509.Certificate] = (),
        *,
        min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
        request_client_certificate: bool = True,
    ) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._client_authorities = tuple(client_authorities)
        self._min_version = min_version
        self._request_client_certificate = request_client_certificate
        self._lock = threading.Lock()

        self._base = build_server_context(
            cert_file,
            key_file,
            self._client_authorities,
            min_version=min_version,
            request_client_certificate=request_client_certificate,
        )
        self._base.sni_callback = self._select_context
        self._current = self._base

    @property
    def context(self) -> ssl.SSLContext:
        """The context to hand to the listener (uvicorn's ``ssl``)."""
        return self._base

    @property
    def current(self) -> ssl.SSLContext:
        """The context that new handshakes use."""
        return self._current

    @property
    def client_authorities(self) -> tuple[x509.Certificate, ...]:
        """The authorities the current context verifies client chains with."""
        return self._client_authorities

    def update(
        self,
        *,
        cert_file: StrPath | None = None,
        key_file: StrPath | None = None,
        client_authorities: Sequence[x509.Certificate] | None = None,
    ) -> None:
        """Build a new context and use it for every new handshake.

        An argument left out keeps its current value; the certificate and key
        files are read again either way, so a call without arguments picks up
        files replaced on disk. When building fails, the current context stays
        in force and the error is raised.

        Raises:
            OSError: the certificate or key cannot be read or do not match
                (``ssl.SSLError``).
        """
        with self._lock:
            cert = self._cert_file if cert_file is None else cert_file
            key = self._key_file if key_file is None else key_file
            authorities = (
                self._client_authorities
                if client_authorities is None
                else tuple(client_authorities)
            )
            context = build_server_context(
                cert,
                key,
                authorities,
                min_version=self._min_version,
                request_client_certificate=self._request_client_certificate,
            )

            self._cert_file, self._key_file = cert, key
            self._client_authorities = authorities
            self._current = context

        logger.info(
            "TLS context replaced: certificate %s, %d client authorities",
            cert,
            len(authorities),
            extra={
                "event": "tls.context_replaced",
                "cert_file": str(cert),
                "client_authorities": len(authorities),
            },
        )

    def _select_context(
        self,
        ssl_object: ssl.SSLObject | ssl.SSLSocket,
        server_name: str | None,
        base: ssl.SSLContext,
    ) -> None:
        # Runs inside OpenSSL's ClientHello processing for every handshake,
        # also without SNI (server_name is then None). An exception here would
        # abort the handshake, so this does nothing that can fail.
        current = self._current
        if current is not base:
            ssl_object.context = current


def client_chain_der(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """Return the certificates the client sent, as DER, leaf first.

    The intermediates come in the order the client sent them (RFC 8446
    §4.4.2, RFC 5246 §7.4.2). Without a client certificate the tuple is
    empty. When OpenSSL kept only the leaf (a resumed session, which the
    contexts of this module do not allow) the tuple holds just the leaf.
    """
    leaf = ssl_object.getpeercert(binary_form=True)
    if not leaf:
        # Checked first: without a client certificate the chain call below
        # yields [None] on the server side.
        return ()
    chain = _unverified_chain(ssl_object)
    if chain and chain[0] == leaf:
        return tuple(chain)
    return (leaf,)


def _unverified_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    if sys.version_info >= (3, 13):
        return ssl_object.get_unverified_chain()
    # Python 3.11 and 3.12 expose the chain only on the private _ssl._SSLSocket,
    # as _ssl.Certificate objects, the leaf put first on the server side, or
    # None after a resumed session. This branch goes when the minimum Python
    # is 3.13, whose public SSLObject.get_unverified_chain() returns DER bytes.
    native = getattr(ssl_object, "_sslobj", None)
    get_chain = getattr(native, "get_unverified_chain", None)
    if get_chain is None:
        return []
    der = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]
    return [cert.public_bytes(der) for cert in get_chain() or () if cert is not None]


class TlsScopeExtension(TypedDict):
    """``scope["extensions"]["tls"]``: the ASGI TLS extension, version 0.2.

    ``client_cert_chain`` holds PEM strings, leaf first. ``server_cert`` and
    ``client_cert_name`` are always ``None``: the first is allowed by the
    spec, the second saves parsing every client certificate on every
    connection (applications read the subject from the leaf they parse
    anyway). ``client_cert_error`` is ``None``: a chain that fails the
    handshake's pre-filter never gets this far, and everything else is for
    the application to verify. The dict is shared by all requests of one
    connection: read it, never change it.
    """

    server_cert: str | None
    client_cert_chain: list[str]
    client_cert_name: str | None
    client_cert_error: str | None
    tls_version: int | None
    cipher_suite: int | None


def tls_scope_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TlsScopeExtension:
    """Describe a finished handshake as the ASGI TLS extension (asgiref
    ``specs/tls.rst``): the client's chain as PEM, leaf first, the protocol
    version and the cipher suite as their IANA numbers.

    Meant to run once per connection; certificates are converted, not parsed.
    """
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": [
            ssl.DER_cert_to_PEM_cert(der) for der in client_chain_der(ssl_object)
        ],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSION_NUMBERS.get(version) if version else None,
        "cipher_suite": _cipher_suite_numbers().get(cipher[0]) if cipher else None,
    }


@cache
def _cipher_suite_numbers() -> dict[str, int]:
    # OpenSSL names to IANA TLS cipher suite numbers (RFC 8446 §B.4 and the
    # IANA registry). OpenSSL's cipher id is 0x0300nnnn for TLS suites; the
    # low 16 bits are the IANA number.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    return {
        str(cipher["name"]): int(cipher["id"]) & 0xFFFF
        for cipher in probe.get_ciphers()
    }
