"""The certificate a client presented, as one value per request (D5).

It comes either from the TLS connection swim-as terminates (the ASGI TLS
extension, filled by swim-as's server runner) or, in mesh mode, from a header
set by a trusted proxy. Either way the rest of swim-as sees the same object.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

Source = Literal["tls", "xfcc", "client-cert", "nginx"]


@dataclass(frozen=True, slots=True)
class PresentedCertificate:
    """A client certificate and the chain sent with it, not yet verified.

    ``thumbprint`` is the RFC 8705 §3.1 ``x5t#S256`` of the leaf: base64url
    (no padding) of the SHA-256 of its DER encoding. ``proven`` says whether
    possession of the key was proven on this request: true for a TLS
    handshake, and for a forwarded certificate from a trusted proxy that
    terminated the handshake itself.
    """

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    thumbprint: str
    source: Source
    cache_key: tuple[bytes, ...]
    proven: bool = True


@dataclass(frozen=True, slots=True)
class ForwardedIdentity:
    """A client identity a trusted, validating proxy vouched for, without
    the certificate behind it (D5).

    An Envoy XFCC element can name the client (``URI``) without forwarding
    its certificate. swim-as cannot verify such an identity itself, so it
    is only produced for a proxy the operator marked as validating, and a
    token issued on it is never certificate-bound: ``proven`` is always
    false. ``sha256_hex`` is the proxy's ``Hash`` of the client certificate,
    kept for the log only.
    """

    spiffe_id: str
    source: Source
    sha256_hex: str | None = None
    proven: bool = False


def thumbprint_of(der: bytes) -> str:
    """RFC 8705 §3.1 x5t#S256 of a DER certificate."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


class CertificateParser:
    """Parses presented chains, remembering recent ones.

    Keep-alive connections present the same chain on every request; parsing
    it once per chain instead of once per request keeps the token path fast.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._cache: OrderedDict[tuple[bytes, ...], PresentedCertificate] = (
            OrderedDict()
        )
        self._pem_cache: OrderedDict[tuple[str, ...], PresentedCertificate] = (
            OrderedDict()
        )

    def from_pem_chain(
        self, chain: tuple[str, ...], source: Source, *, proven: bool = True
    ) -> PresentedCertificate:
        """Parse PEM certificates (the ASGI TLS extension's form), leaf first.

        Raises:
            ValueError: a certificate does not parse.
        """
        cached = self._pem_cache.get(chain)
        if cached is not None and cached.source == source and cached.proven == proven:
            return cached
        der = tuple(ssl.PEM_cert_to_DER_cert(pem) for pem in chain)
        presented = self.from_der_chain(der, source, proven=proven)
        self._pem_cache[chain] = presented
        if len(self._pem_cache) > self._size:
            self._pem_cache.popitem(last=False)
        return presented

    def from_der_chain(
        self, chain: tuple[bytes, ...], source: Source, *, proven: bool = True
    ) -> PresentedCertificate:
        """Parse DER certificates, leaf first.

        Raises:
            ValueError: a certificate does not parse.
        """
        key = (source.encode(), *chain)
        cached = self._cache.get(key)
        if cached is not None and cached.proven == proven:
            return cached
        certs = [x509.load_der_x509_certificate(der) for der in chain]
        presented = PresentedCertificate(
            leaf=certs[0],
            intermediates=tuple(certs[1:]),
            thumbprint=thumbprint_of(chain[0]),
            source=source,
            cache_key=tuple(chain),
            proven=proven,
        )
        self._cache[key] = presented
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return presented
