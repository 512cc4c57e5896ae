"""OAuth errors swim-as returns, one class per error code.

Every error carries two texts: ``description``, short and safe, sent to the
client as ``error_description`` (RFC 6749 §5.2), and ``detail``, which goes to
the operator's log and never onto the wire (D9).

The tree::

    OAuthError
    ├── InvalidRequest            400 invalid_request          RFC 6749 §5.2
    ├── InvalidClient             400/401 invalid_client       RFC 6749 §5.2
    ├── InvalidGrant              400 invalid_grant            RFC 6749 §5.2
    ├── UnauthorizedClient        400 unauthorized_client      RFC 6749 §5.2
    ├── UnsupportedGrantType      400 unsupported_grant_type   RFC 6749 §5.2
    ├── InvalidScope              400 invalid_scope            RFC 6749 §5.2
    ├── InvalidTarget             400 invalid_target           RFC 8707 §2
    ├── InvalidClientMetadata     400 invalid_client_metadata  RFC 7591 §3.2.2
    ├── InvalidSoftwareStatement  400 invalid_software_statement
    ├── UnapprovedSoftwareStatement 400 unapproved_software_statement
    ├── InvalidToken              401 invalid_token            RFC 6750 §3.1
    ├── InsufficientScope         403 insufficient_scope       RFC 6750 §3.1
    ├── AccessDenied              403 access_denied
    ├── NotFound                  404 (no body error code; RFC 7592 §2)
    ├── RequestTooLarge           413 invalid_request
    ├── ServerError               500 server_error
    └── TemporarilyUnavailable    503 temporarily_unavailable
"""

from __future__ import annotations

import re
from typing import ClassVar

# RFC 6749 §5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
_SAFE_TEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


class OAuthError(Exception):
    """An error answered in the protocol's own JSON format.

    Args:
        description: the public ``error_description``; short, lower case, no
            final period, never a secret, never the offending input.
        detail: what the operator needs to know; logged, never sent.
    """

    error: ClassVar[str] = "invalid_request"
    status_code: ClassVar[int] = 400
    default_description: ClassVar[str] = "the request is invalid"

    def __init__(self, description: str | None = None, *, detail: str = "") -> None:
        text = description if description is not None else self.default_description
        if not _SAFE_TEXT.fullmatch(text):
            raise ValueError(f"error_description outside RFC 6749 §5.2: {text!r}")
        super().__init__(text)
        self.description = text
        self.detail = detail or text

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error (beyond no-store)."""
        return {}

    def body(self) -> dict[str, str]:
        """The JSON object of RFC 6749 §5.2."""
        return {"error": self.error, "error_description": self.description}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r}, detail={self.detail!r})"


class InvalidRequest(OAuthError):
    """Missing, repeated or malformed parameter (RFC 6749 §5.2)."""

    error = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed (RFC 6749 §5.2).

    400 by default, the RFC's choice for clients that did not use the
    ``Authorization`` header (D9); ``scheme`` turns it into a 401 with a
    challenge for that scheme.
    """

    error = "invalid_client"
    default_description = "client authentication failed"

    def __init__(
        self,
        description: str | None = None,
        *,
        detail: str = "",
        scheme: str | None = None,
    ) -> None:
        super().__init__(description, detail=detail)
        self.scheme = scheme

    @property
    def http_status(self) -> int:
        return 401 if self.scheme else 400

    def headers(self) -> dict[str, str]:
        if self.scheme:
            return {"WWW-Authenticate": f'{self.scheme} realm="swim-as"'}
        return {}


class InvalidGrant(OAuthError):
    """The grant or assertion is invalid (RFC 6749 §5.2)."""

    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """The client may not use this grant type (RFC 6749 §5.2)."""

    error = "unauthorized_client"
    default_description = "the client may not use this grant type"


class UnsupportedGrantType(OAuthError):
    """The grant type is not served (RFC 6749 §5.2)."""

    error = "unsupported_grant_type"
    default_description = "grant type not supported"


class InvalidScope(OAuthError):
    """A requested scope is unknown or not granted (RFC 6749 §5.2)."""

    error = "invalid_scope"
    default_description = "requested scope is not allowed"


class InvalidTarget(OAuthError):
    """The resource is invalid or not allowed (RFC 8707 §2)."""

    error = "invalid_target"
    default_description = "requested resource is not allowed"


class InvalidClientMetadata(OAuthError):
    """Registration metadata is invalid (RFC 7591 §3.2.2)."""

    error = "invalid_client_metadata"


class InvalidSoftwareStatement(OAuthError):
    """The software statement is invalid (RFC 7591 §3.2.2)."""

    error = "invalid_software_statement"


class UnapprovedSoftwareStatement(OAuthError):
    """The software statement is not approved (RFC 7591 §3.2.2)."""

    error = "unapproved_software_statement"


class InvalidToken(OAuthError):
    """Bearer token missing, expired or unknown (RFC 6750 §3.1)."""

    error = "invalid_token"
    status_code = 401
    default_description = "the access token is invalid"

    def __init__(
        self, description: str | None = None, *, detail: str = "", missing: bool = False
    ) -> None:
        super().__init__(description, detail=detail)
        self.missing = missing

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3.1: a request without any token gets a bare challenge.
        if self.missing:
            return {"WWW-Authenticate": 'Bearer realm="swim-as"'}
        return {
            "WWW-Authenticate": (
                f'Bearer realm="swim-as", error="{self.error}", '
                f'error_description="{self.description}"'
            )
        }

    def body(self) -> dict[str, str]:
        if self.missing:
            return {}
        return super().body()


class InsufficientScope(OAuthError):
    """The token lacks the needed scope (RFC 6750 §3.1)."""

    error = "insufficient_scope"
    status_code = 403

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3: the challenge names the error on a refused token.
        return {
            "WWW-Authenticate": (
                f'Bearer realm="swim-as", error="{self.error}", '
                f'error_description="{self.description}"'
            )
        }


class AccessDenied(OAuthError):
    """The caller may not do this."""

    error = "access_denied"
    status_code = 403
    default_description = "access denied"


class NotFound(OAuthError):
    """No such resource."""

    error = "not_found"
    status_code = 404
    default_description = "not found"


class RequestTooLarge(OAuthError):
    """The body exceeds the configured limit."""

    error = "invalid_request"
    status_code = 413
    default_description = "request body too large"


class ServerError(OAuthError):
    """Something failed inside swim-as; the detail stays in the log."""

    error = "server_error"
    status_code = 500
    default_description = "internal error"


class TemporarilyUnavailable(OAuthError):
    """A dependency (the database) is unavailable (RFC 6749 §5.2)."""

    error = "temporarily_unavailable"
    status_code = 503
    default_description = "service temporarily unavailable"


def status_of(error: OAuthError) -> int:
    """The HTTP status an error is answered with."""
    if isinstance(error, InvalidClient):
        return error.http_status
    return error.status_code
