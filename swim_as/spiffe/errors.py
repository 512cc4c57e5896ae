"""Errors of the SPIFFE layer.

Every failure in ``swim_as.spiffe`` raises one of these, so a caller catches
``SpiffeError`` or one branch of it::

    SpiffeError
    ├── SpiffeIdError      a SPIFFE ID, trust domain or ID pattern (SPIFFE-ID §2)
    ├── BundleError        a trust bundle (SPIFFE Trust Domain and Bundle §4)
    ├── X509SvidError      an X.509-SVID (SPIFFE X509-SVID §4-§5)
    └── JwtSvidError       a JWT-SVID (SPIFFE JWT-SVID §2-§4)

A message names what was being parsed, quotes the offending input (shortened
and escaped by :func:`quote`, so it is safe to log), then says what is wrong.
``reason`` is a short, stable label such as ``"expired"`` or
``"unknown_authority"`` for logs and counters; the message is for people.
The edge maps these errors to OAuth errors (``invalid_client`` and so on);
neither the message nor the reason is meant to be sent to a client verbatim.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "JwtSvidError",
    "SpiffeError",
    "SpiffeIdError",
    "X509SvidError",
    "quote",
]

_QUOTE_LIMIT = 80


def quote(text: str, limit: int = _QUOTE_LIMIT) -> str:
    """Quote untrusted text for an error message or a log line.

    The text is cut to ``limit`` characters (the full length is then given)
    and rendered with ``repr``, so control characters, line breaks and
    quotes come out escaped and cannot forge log lines.
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class SpiffeError(Exception):
    """Root of every error raised by ``swim_as.spiffe``.

    ``reason`` defaults to the class's ``default_reason`` when the raiser
    gives none.
    """

    default_reason = "spiffe_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason: str = reason if reason is not None else self.default_reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, reason={self.reason!r})"


class SpiffeIdError(SpiffeError):
    """A SPIFFE ID, trust domain name or ID pattern is not valid.

    SPIFFE-ID §2 and swim-as decision D4: IDs are strict and never
    normalised.
    """

    default_reason = "invalid_spiffe_id"


class BundleError(SpiffeError):
    """A trust bundle cannot be used at all.

    SPIFFE Trust Domain and Bundle §4. Entries that are merely unknown are
    skipped, not errors; see :mod:`swim_as.spiffe.bundle`.
    """

    default_reason = "invalid_bundle"


class X509SvidError(SpiffeError):
    """An X.509-SVID failed verification (SPIFFE X509-SVID §4-§5)."""

    default_reason = "invalid_x509_svid"


class JwtSvidError(SpiffeError):
    """A JWT-SVID failed verification (SPIFFE JWT-SVID §2-§4)."""

    default_reason = "invalid_jwt_svid"
