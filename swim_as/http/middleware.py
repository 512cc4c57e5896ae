"""ASGI middleware that finds the client's certificate for the routes (D5).

Pure ASGI (no request wrapper). Exactly one of two runs on a listener, never
both:

* :class:`PresentedCertificateMiddleware` (direct TLS, the default) reads
  the ASGI TLS extension that swim-as's server runner fills
  (``scope["extensions"]["tls"]``). Forwarded-certificate headers mean
  nothing here; nothing reads them.
* :class:`ForwardedCertificateMiddleware` (mesh mode) reads the header a
  trusted proxy sets, and only from a trusted proxy. The TLS extension, if
  any, describes the proxy's own connection and never becomes the client's
  certificate.

Either stores one :class:`~swim_as.clientauth.presented.PresentedCertificate`
(or ``None``) under ``scope["swim_as.certificate"]``; a certificate that
cannot be read leaves a reason under ``scope["swim_as.certificate_error"]``,
and a validating proxy's identity without a certificate goes under
``scope["swim_as.forwarded_identity"]``.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from swim_as.clientauth.forwarded import ForwardedHeaderError
from swim_as.clientauth.mesh import (
    KNOWN_FORWARD_HEADERS,
    ForwardedCertificateReader,
    TrustedProxies,
)
from swim_as.clientauth.presented import CertificateParser, ForwardedIdentity

log = logging.getLogger("swim_as.http")
mesh_log = logging.getLogger("swim_as.mesh")

CERTIFICATE = "swim_as.certificate"
CERTIFICATE_ERROR = "swim_as.certificate_error"
FORWARDED_IDENTITY = "swim_as.forwarded_identity"


class PresentedCertificateMiddleware:
    """Fills ``scope["swim_as.certificate"]`` from the TLS handshake."""

    def __init__(self, app: ASGIApp, parser: CertificateParser) -> None:
        self.app = app
        self._parser = parser

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[CERTIFICATE] = None
            tls = scope.get("extensions", {}).get("tls")
            chain = tls.get("client_cert_chain") if tls else None
            if chain:
                try:
                    scope[CERTIFICATE] = self._parser.from_pem_chain(
                        tuple(chain), "tls"
                    )
                except ValueError as err:
                    scope[CERTIFICATE_ERROR] = f"unparsable client certificate: {err}"
        await self.app(scope, receive, send)


class ForwardedCertificateMiddleware:
    """Mesh mode: fills ``scope["swim_as.certificate"]`` from a trusted
    proxy's header (Envoy XFCC, RFC 9440, nginx; STANDARDS.md §12).

    Every forwarded-certificate header is removed from the request, so no
    later code can read one unchecked. Sent by a peer that is not a trusted
    proxy, the headers are ignored and the attempt is logged as a warning
    (``mesh.untrusted_forward``). From a trusted proxy, the configured
    header is decoded; a malformed or contradictory one leaves a reason in
    ``scope["swim_as.certificate_error"]`` (the token endpoint answers
    ``invalid_client``) and is logged (``mesh.bad_forward``).
    """

    def __init__(
        self,
        app: ASGIApp,
        reader: ForwardedCertificateReader,
        proxies: TrustedProxies,
    ) -> None:
        self.app = app
        self._reader = reader
        self._proxies = proxies
        self._names = tuple(name.encode("ascii") for name in reader.header_names)
        self._strip = frozenset(
            name.encode("ascii")
            for name in (*KNOWN_FORWARD_HEADERS, *reader.header_names)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[CERTIFICATE] = None
            self._take_forwarded(scope)
        await self.app(scope, receive, send)

    def _take_forwarded(self, scope: Scope) -> None:
        strip = self._strip
        headers = scope["headers"]
        if not any(name in strip for name, _ in headers):
            return
        found: dict[bytes, list[bytes]] = {}
        kept = []
        for name, value in headers:
            if name in strip:
                found.setdefault(name, []).append(value)
            else:
                kept.append((name, value))
        scope["headers"] = kept

        client = scope.get("client")
        peer = client[0] if client else None
        tls = scope.get("extensions", {}).get("tls")
        refusal = self._proxies.refusal(
            peer, tls.get("client_cert_chain") if tls else None
        )
        if refusal is not None:
            mesh_log.warning(
                "forwarded client certificate from an untrusted peer ignored: %s",
                refusal,
                extra={
                    "event": "mesh.untrusted_forward",
                    "peer": _peer(client),
                    "headers": sorted(n.decode("latin-1") for n in found),
                    "reason": refusal,
                    "path": scope.get("path"),
                },
            )
            return

        values = [found.get(name, []) for name in self._names]
        if not any(values):
            return
        try:
            forwarded = self._reader.read(values)
        except ForwardedHeaderError as err:
            scope[CERTIFICATE_ERROR] = f"forwarded certificate refused: {err}"
            mesh_log.warning(
                "forwarded client certificate refused: %s",
                err,
                extra={
                    "event": "mesh.bad_forward",
                    "peer": _peer(client),
                    "reason": str(err),
                    "path": scope.get("path"),
                },
            )
            return
        if isinstance(forwarded, ForwardedIdentity):
            scope[FORWARDED_IDENTITY] = forwarded
        else:
            scope[CERTIFICATE] = forwarded


def _peer(client: tuple[str, int] | list[object] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None
