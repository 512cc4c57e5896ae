"""ASGI middleware that turns the TLS connection into a presented certificate.

Pure ASGI (no request wrapper): it reads the ASGI TLS extension that
swim-as's server runner fills (``scope["extensions"]["tls"]``) and stores one
:class:`~swim_as.clientauth.presented.PresentedCertificate` (or ``None``)
under ``scope["swim_as.certificate"]`` for the routes (D5).
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from swim_as.clientauth.presented import CertificateParser

log = logging.getLogger("swim_as.http")

CERTIFICATE = "swim_as.certificate"
CERTIFICATE_ERROR = "swim_as.certificate_error"


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
