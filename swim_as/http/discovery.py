"""Discovery (RFC 8414 §2, §3), the JWKS, and health (D10).

The metadata document is built from the configured issuer, never from the
request's Host. Empty lists are left out, and a method or feature is listed
only when it can succeed. The document is built when the bundles have been
loaded and again whenever they change (``spiffe_jwt`` depends on JWT-SVID
keys being present); the route serves the current one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from swim_as.http.responses import json_bytes

METADATA_PATH = "/.well-known/oauth-authorization-server"
OPENID_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks"
TOKEN_PATH = "/token"  # noqa: S105 (a path)
REGISTER_PATH = "/register"


def build_metadata(
    issuer: str,
    *,
    auth_methods: Iterable[str],
    auth_signing_algs: Iterable[str] = (),
    scopes: Iterable[str] = (),
    mtls_aliases: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The RFC 8414 §2 document (with RFC 8705 §3.3 and §5 members)."""
    document: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": issuer + TOKEN_PATH,
        "registration_endpoint": issuer + REGISTER_PATH,
        "jwks_uri": issuer + JWKS_PATH,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": list(auth_methods),
        "token_endpoint_auth_signing_alg_values_supported": list(auth_signing_algs),
        "tls_client_certificate_bound_access_tokens": True,
        "scopes_supported": sorted(set(scopes)),
        "mtls_endpoint_aliases": mtls_aliases or {},
    }
    # D10: empty lists and objects are omitted rather than sent.
    return {k: v for k, v in document.items() if v not in ([], {}, None)}


class DiscoveryRoutes:
    """Metadata, JWKS and health handlers."""

    def __init__(
        self,
        metadata: Callable[[], Mapping[str, Any]],
        jwks: Callable[[], bytes],
        readiness: Callable[[], Any],
        *,
        jwks_max_age: int,
    ) -> None:
        self._document = metadata
        self._rendered: tuple[Mapping[str, Any], bytes] | None = None
        self._jwks = jwks
        self._readiness = readiness
        self._jwks_cache_control = f"public, max-age={jwks_max_age}"

    async def metadata(self, request: Request) -> Response:
        document = self._document()
        if self._rendered is None or self._rendered[0] is not document:
            self._rendered = (document, json_bytes(document))
        return Response(
            self._rendered[1],
            media_type="application/json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    async def jwks(self, request: Request) -> Response:
        """RFC 7517 §5; cached no longer than the next key's lead time."""
        return Response(
            self._jwks(),
            media_type="application/jwk-set+json",
            headers={"Cache-Control": self._jwks_cache_control},
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(self, request: Request) -> Response:
        report = await self._readiness()
        return JSONResponse(
            report,
            status_code=200 if report["ready"] else 503,
            headers={"Cache-Control": "no-store"},
        )
