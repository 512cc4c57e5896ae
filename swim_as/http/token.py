"""``POST /token`` (RFC 6749 §3.2), as a short list of named steps.

parse the form → authenticate the client → pick the grant → decide and mint
→ respond. Every response carries ``Cache-Control: no-store`` and
``Pragma: no-cache`` (RFC 6749 §5.1). No refresh token is ever issued for
client_credentials (RFC 6749 §4.4.3).

This endpoint is a plain ASGI application: it is the hot path, and it needs
nothing from a request wrapper.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import DBAPIError
from starlette.types import Receive, Scope, Send

from swim_as.clientauth.authenticate import (
    AuthenticatedClient,
    ClientAuthenticator,
    Credentials,
)
from swim_as.clientauth.presented import ForwardedIdentity
from swim_as.clients.metadata import parse_scope
from swim_as.errors import (
    InvalidClient,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    UnsupportedGrantType,
)
from swim_as.grants.client_credentials import (
    GRANT_TYPE as CLIENT_CREDENTIALS,
)
from swim_as.grants.client_credentials import (
    ClientCredentialsGrant,
    ClientCredentialsRequest,
)
from swim_as.http.forms import FORM_TYPE, content_type_is, parse_form, read_body
from swim_as.http.middleware import CERTIFICATE, CERTIFICATE_ERROR, FORWARDED_IDENTITY
from swim_as.http.responses import NO_STORE, log_refusal, send_error, send_json
from swim_as.observability.audit import AuditBuffer

log = logging.getLogger("swim_as.token")

# RFC 8707 §2: `resource` may be sent several times; nothing else may.
REPEATABLE = frozenset({"resource"})

TokenListener = Callable[[AuthenticatedClient], None]
# Mesh mode with a validating proxy: authenticates a forwarded identity that
# came without a certificate (swim_as.clientauth.forwarded_identity).
IdentityAuthenticator = Callable[
    [ForwardedIdentity, str | None], Awaitable[AuthenticatedClient]
]


class TokenEndpoint:
    """The token endpoint as an ASGI application."""

    def __init__(
        self,
        authenticator: ClientAuthenticator,
        client_credentials: ClientCredentialsGrant,
        audit: AuditBuffer,
        *,
        max_body: int,
        on_issued: TokenListener | None = None,
        forwarded_identity: IdentityAuthenticator | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._forwarded_identity = forwarded_identity
        self._client_credentials = client_credentials
        self._audit = audit
        self._max_body = max_body
        self._on_issued = on_issued

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_json(
                send,
                405,
                {"error": "invalid_request", "error_description": "use POST"},
                [*NO_STORE, (b"allow", b"POST")],
            )
            return
        client_id: str | None = None
        try:
            form = await self._parse(scope, receive)
            client_id = _single(form, "client_id")
            grant_type = self._grant_type(form)
            caller = await self._authenticate(scope, form, client_id)
            body = self._issue(caller, grant_type, form)
        except OAuthError as error:
            self._refused(error, client_id, scope)
            await send_error(send, error)
            return
        except (DBAPIError, OSError) as err:
            unavailable = TemporarilyUnavailable(detail=f"database: {err!r}"[:500])
            self._refused(unavailable, client_id, scope)
            await send_error(send, unavailable)
            return
        except Exception:
            log.exception("token request failed", extra={"event": "token.error"})
            await send_error(send, ServerError())
            return
        await send_json(send, 200, body, NO_STORE)

    async def _parse(self, scope: Scope, receive: Receive) -> dict[str, list[str]]:
        """RFC 6749 §3.2: a form-encoded POST body."""
        if not content_type_is(scope, FORM_TYPE):
            raise InvalidRequest(
                "body must be application/x-www-form-urlencoded",
                detail="token request with another content type",
            )
        body = await read_body(scope, receive, self._max_body)
        return parse_form(body, REPEATABLE)

    @staticmethod
    def _grant_type(form: dict[str, list[str]]) -> str:
        grant_type = _single(form, "grant_type")
        if grant_type is None:
            raise InvalidRequest("grant_type is required")
        if grant_type != CLIENT_CREDENTIALS:
            raise UnsupportedGrantType(detail=f"grant_type {grant_type[:80]!r}")
        return grant_type

    async def _authenticate(
        self, scope: Scope, form: dict[str, list[str]], client_id: str | None
    ) -> AuthenticatedClient:
        certificate = scope.get(CERTIFICATE)
        if certificate is None and CERTIFICATE_ERROR in scope:
            raise InvalidClient(
                "client certificate could not be read", detail=scope[CERTIFICATE_ERROR]
            )
        credentials = Credentials(
            client_id=client_id,
            certificate=certificate,
            client_assertion_type=_single(form, "client_assertion_type"),
            client_assertion=_single(form, "client_assertion"),
            client_secret=_single(form, "client_secret"),
            authorization=_authorization(scope),
        )
        if self._forwarded_identity is not None and certificate is None:
            # Mesh mode with a validating proxy (D5): the proxy's word stands
            # in for a certificate, so there is nothing for the X.509-SVID
            # method to verify; forwarded_identity runs the same client and
            # registration checks on the forwarded SPIFFE ID instead.
            identity = scope.get(FORWARDED_IDENTITY)
            if (
                identity is not None
                and credentials.client_assertion is None
                and credentials.client_assertion_type is None
            ):
                if (
                    credentials.authorization is not None
                    or credentials.client_secret is not None
                ):
                    raise InvalidRequest(
                        "only one client authentication method may be used",
                        detail="a forwarded identity and another credential",
                    )
                return await self._forwarded_identity(identity, client_id)
        return await self._authenticator.authenticate(credentials)

    def _issue(
        self, caller: AuthenticatedClient, grant_type: str, form: dict[str, list[str]]
    ) -> dict[str, Any]:
        scope_text = _single(form, "scope")
        scopes = parse_scope(scope_text) if scope_text is not None else None
        if scope_text is not None and scopes is None:
            raise InvalidScope(
                "scope is malformed",
                detail=f"scope {scope_text[:200]!r} (RFC 6749 §3.3)",
            )
        request = ClientCredentialsRequest(
            scopes=scopes,
            resources=[_resource(r) for r in form.get("resource", ())],
        )
        token, decision = self._client_credentials.issue(caller, request)
        client_id = caller.client.client_id
        # DEBUG: at thousands of tokens a second an INFO line each would cost
        # more than the token; the audit trail records every issuance.
        log.debug(
            "token issued",
            extra={
                "event": "token.issued",
                "client_id": client_id,
                "auth_method": caller.method,
                "jti": token.jti,
                "kid": token.kid,
                "bound": token.bound,
                "rule": decision.rule,
            },
        )
        self._audit.add(
            "token.issued",
            actor=caller.spiffe_id or client_id,
            client_id=client_id,
            detail={
                "jti": token.jti,
                "kid": token.kid,
                "scope": list(token.scope),
                "aud": list(decision.audience),
                "bound": token.bound,
            },
        )
        if self._on_issued is not None:
            self._on_issued(caller)
        body: dict[str, Any] = {
            "access_token": token.access_token,
            "token_type": "Bearer",
            "expires_in": token.expires_in,
        }
        if token.scope:
            body["scope"] = " ".join(token.scope)
        return body

    def _refused(self, error: OAuthError, client_id: str | None, scope: Scope) -> None:
        certificate = scope.get(CERTIFICATE)
        thumbprint = certificate.thumbprint if certificate is not None else None
        log_refusal(
            "token",
            error,
            client_id=_printable(client_id),
            x5t=thumbprint,
            peer=_peer(scope),
        )
        if isinstance(error, InvalidClient):
            # The claimed client_id is not an actor: nobody proved it.
            self._audit.add(
                "client_auth.failed",
                actor="unauthenticated",
                client_id=None,
                detail={
                    "claimed_client_id": _printable(client_id),
                    "reason": error.detail[:500],
                    "x5t": thumbprint,
                    "peer": _peer(scope),
                },
            )


def _single(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _authorization(scope: Scope) -> str | None:
    """The ``Authorization`` header (RFC 6749 §2.3.1), if sent once."""
    found = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if found is not None:
                raise InvalidRequest("authorization header is repeated")
            found = value.decode("latin-1")
    return found


def _resource(value: str) -> str:
    """RFC 8707 §2: an absolute URI without a fragment."""
    try:
        parts = urlsplit(value)
    except ValueError:
        raise InvalidTarget(
            "resource must be an absolute URI", detail=f"unparsable {value[:200]!r}"
        ) from None
    if not parts.scheme or not (parts.netloc or parts.path) or " " in value:
        raise InvalidTarget(
            "resource must be an absolute URI", detail=f"not absolute: {value[:200]!r}"
        )
    if "#" in value:
        raise InvalidTarget(
            "resource must not have a fragment", detail=f"fragment in {value[:200]!r}"
        )
    return value


def _printable(value: str | None) -> str | None:
    if value is None:
        return None
    return value[:300] if value.isprintable() else repr(value[:300])


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None
