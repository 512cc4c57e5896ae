"""SPIFFE IDs, trust domains and registered ID patterns as value objects.

SPIFFE-ID §2 defines the syntax; swim-as reads it strictly (decision D4):
the scheme is exactly ``spiffe://``; the trust domain is lowercase
``[a-z0-9._-]`` with no port or userinfo; path segments are
``[A-Za-z0-9._-]``, never empty, ``.`` or ``..``; there is no trailing
slash, no percent-encoding, no query and no fragment; the whole ID is at
most 2048 bytes and the trust domain at most 255. Nothing is normalised: an
ID that is not already canonical is refused, so ``str(SpiffeId.parse(s))``
is ``s`` for every accepted ``s``.

SPIFFE-ID §2.4 calls the scheme and trust domain case-insensitive while
§2.1 says the trust domain MUST be lowercase; swim-as refuses uppercase
rather than folding it, so one workload has exactly one spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from swim_as.spiffe.errors import SpiffeIdError, quote

__all__ = [
    "MAX_SPIFFE_ID_BYTES",
    "MAX_TRUST_DOMAIN_BYTES",
    "SpiffeId",
    "SpiffeIdPattern",
    "TrustDomain",
]

SCHEME = "spiffe://"
MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_PATH_RE = re.compile(r"(?:/[A-Za-z0-9._-]+)*")
_TRUST_DOMAIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_SEGMENT_CHARS = _TRUST_DOMAIN_CHARS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _fail(what: str, shown: str, detail: str, reason: str) -> SpiffeIdError:
    return SpiffeIdError(f"invalid {what} {quote(shown)}: {detail}", reason=reason)


def _check_trust_domain(name: str, *, shown: str, what: str) -> None:
    """Apply SPIFFE-ID §2.1 and §2.3 to a trust domain name."""
    if _TRUST_DOMAIN_RE.fullmatch(name) is None:
        if not name:
            raise _fail(what, shown, "the trust domain is empty", "empty_trust_domain")
        if "@" in name:
            raise _fail(what, shown, "userinfo is not allowed", "userinfo")
        if ":" in name:
            raise _fail(what, shown, "a port is not allowed", "port")
        if "%" in name:
            raise _fail(
                what, shown, "percent-encoding is not allowed", "percent_encoding"
            )
        bad = next(c for c in name if c not in _TRUST_DOMAIN_CHARS)
        if bad.lower() in _TRUST_DOMAIN_CHARS:
            detail = f"the trust domain must be lowercase (found {bad!r})"
        else:
            detail = (
                f"the trust domain has the character {bad!r}; only a-z, 0-9, "
                "'.', '-' and '_' are allowed"
            )
        raise _fail(what, shown, detail, "trust_domain_char")
    if len(name) > MAX_TRUST_DOMAIN_BYTES:
        raise _fail(
            what,
            shown,
            f"the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes",
            "trust_domain_too_long",
        )


def _check_path(path: str, *, shown: str, what: str) -> None:
    """Apply SPIFFE-ID §2.2 to a path ("" for the root ID)."""
    if _PATH_RE.fullmatch(path) is not None and not any(
        segment in (".", "..") for segment in path.split("/")
    ):
        return
    if not path.startswith("/"):
        raise _fail(what, shown, "the path must start with '/'", "path_char")
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        if segment == "":
            if index == len(segments) - 1:
                raise _fail(
                    what, shown, "a trailing slash is not allowed", "trailing_slash"
                )
            raise _fail(what, shown, "empty path segment ('//')", "empty_segment")
        if segment in (".", ".."):
            raise _fail(
                what, shown, f"{segment!r} is not allowed as a segment", "dot_segment"
            )
        bad = next((c for c in segment if c not in _SEGMENT_CHARS), None)
        if bad == "%":
            raise _fail(
                what, shown, "percent-encoding is not allowed", "percent_encoding"
            )
        if bad is not None:
            raise _fail(
                what,
                shown,
                f"the path has the character {bad!r}; only A-Z, a-z, 0-9, "
                "'.', '-' and '_' are allowed",
                "path_char",
            )


def _check_length(text: str, *, shown: str, what: str) -> None:
    try:
        encoded = text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (JSON's "\ud800") is no character at all.
        raise _fail(what, shown, "not valid Unicode text", "path_char") from None
    if len(text) > MAX_SPIFFE_ID_BYTES or len(encoded) > MAX_SPIFFE_ID_BYTES:
        raise _fail(
            what,
            shown,
            f"longer than {MAX_SPIFFE_ID_BYTES} bytes",
            "too_long",
        )


def _split(text: object, *, shown: str, what: str) -> tuple[str, str]:
    """Check a whole SPIFFE ID and return its trust domain and path.

    ``shown`` is the text quoted in errors (a pattern quotes itself, not
    the ID inside it). SPIFFE-ID §2, §2.1-§2.3, decision D4.
    """
    if not isinstance(text, str):
        raise SpiffeIdError(
            f"invalid {what}: expected a string, got {type(text).__name__}",
            reason="not_a_string",
        )
    if not text:
        raise _fail(what, shown, "it is empty", "empty")
    _check_length(text, shown=shown, what=what)
    if not text.startswith(SCHEME):
        raise _fail(
            what, shown, "the scheme must be exactly 'spiffe://' (lowercase)", "scheme"
        )
    if "?" in text:
        raise _fail(what, shown, "a query is not allowed", "query")
    if "#" in text:
        raise _fail(what, shown, "a fragment is not allowed", "fragment")
    if "%" in text:
        raise _fail(what, shown, "percent-encoding is not allowed", "percent_encoding")
    rest = text[len(SCHEME) :]
    slash = rest.find("/")
    trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    _check_trust_domain(trust_domain, shown=shown, what=what)
    _check_path(path, shown=shown, what=what)
    return trust_domain, path


@dataclass(frozen=True, slots=True)
class TrustDomain:
    """A SPIFFE trust domain name such as ``example.org`` (SPIFFE-ID §2.1).

    Constructing one validates the name; ``str()`` gives the bare name and
    :attr:`id` the trust domain's own SPIFFE ID.
    """

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise SpiffeIdError(
                "invalid trust domain: expected a string, "
                f"got {type(self.name).__name__}",
                reason="not_a_string",
            )
        _check_trust_domain(self.name, shown=self.name, what="trust domain")

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Parse ``example.org`` or ``spiffe://example.org`` (SPIFFE-ID §2.1).

        A SPIFFE ID with a path is refused: it names a workload, not a
        trust domain.

        Raises:
            SpiffeIdError: the text is not a trust domain.
        """
        if isinstance(text, str) and "://" in text:
            trust_domain, path = _split(text, shown=text, what="trust domain")
            if path:
                raise _fail(
                    "trust domain",
                    text,
                    "a trust domain has no path; this is a workload's SPIFFE ID",
                    "trust_domain_path",
                )
            return cls(trust_domain)
        return cls(text)

    @property
    def id(self) -> str:
        """The trust domain's SPIFFE ID, ``spiffe://<name>`` (SPIFFE-ID §2)."""
        return SCHEME + self.name

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A SPIFFE ID (SPIFFE-ID §2), valid by construction.

    ``path`` is ``""`` for the trust domain's root ID or starts with ``/``.
    Use :meth:`parse` for text; ``str()`` gives the ID back exactly.
    """

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise TypeError("trust_domain must be a TrustDomain")
        if not isinstance(self.path, str):
            raise TypeError("path must be a string")
        text = str(self)
        _check_length(text, shown=text, what="SPIFFE ID")
        _check_path(self.path, shown=text, what="SPIFFE ID")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse a SPIFFE ID strictly (SPIFFE-ID §2, decision D4).

        The root form ``spiffe://example.org`` is a valid SPIFFE ID and is
        accepted; :attr:`is_root` tells it apart. Workload identities
        (SPIFFE X509-SVID §5.2) must not be root IDs; the verifiers check
        that.

        Raises:
            SpiffeIdError: the text is not a canonical SPIFFE ID; ``reason``
                says which rule it breaks.
        """
        trust_domain, path = _split(text, shown=text, what="SPIFFE ID")
        return cls(TrustDomain(trust_domain), path)

    @property
    def is_root(self) -> bool:
        """Whether this is the trust domain's own ID (an empty path)."""
        return not self.path

    def member_of(self, trust_domain: TrustDomain) -> bool:
        """Whether the ID belongs to ``trust_domain``."""
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return SCHEME + self.trust_domain.name + self.path


@dataclass(frozen=True, slots=True)
class SpiffeIdPattern:
    """A registered ``spiffe_id``: an exact ID, or a prefix ending in ``/*``.

    OAuth SPIFFE client authentication draft §5.1 and decision D4: a value
    ending in ``/*`` matches every ID below the prefix on a whole-segment
    boundary, so ``spiffe://example.org/client/*`` matches
    ``.../client/123`` and ``.../client/a/b`` but neither
    ``.../client123`` nor ``.../client`` itself. ``spiffe://example.org/*``
    matches every workload of the trust domain. Anything else matches by
    equality.

    An exact root ID (``spiffe://example.org``) parses, since it is a valid
    SPIFFE ID, but it names no workload and so matches no verified SVID;
    callers registering clients refuse it (see
    :attr:`spiffe_id_is_root`).
    """

    spiffe_id: SpiffeId
    is_wildcard: bool = False

    @classmethod
    def parse(cls, text: str) -> SpiffeIdPattern:
        """Parse an exact SPIFFE ID or one ending in ``/*``.

        ``*`` is allowed only as the whole last segment.

        Raises:
            SpiffeIdError: the text is neither form.
        """
        what = "SPIFFE ID pattern"
        if not isinstance(text, str):
            raise SpiffeIdError(
                f"invalid {what}: expected a string, got {type(text).__name__}",
                reason="not_a_string",
            )
        wildcard = text.endswith("/*")
        prefix = text[:-2] if wildcard else text
        if "*" in prefix:
            raise _fail(
                what,
                text,
                "'*' is allowed only as the whole last segment, "
                "as in 'spiffe://example.org/ns/*'",
                "wildcard",
            )
        if wildcard and prefix.endswith("/"):
            raise _fail(what, text, "empty path segment ('//')", "empty_segment")
        if not prefix:
            raise _fail(
                what,
                text,
                "the scheme must be exactly 'spiffe://' (lowercase)",
                "scheme",
            )
        trust_domain, path = _split(prefix, shown=text, what=what)
        return cls(SpiffeId(TrustDomain(trust_domain), path), wildcard)

    @property
    def spiffe_id_is_root(self) -> bool:
        """Whether the ID (or the prefix before ``/*``) is a root ID."""
        return self.spiffe_id.is_root

    def matches(self, spiffe_id: SpiffeId) -> bool:
        """Whether ``spiffe_id`` is matched, on whole path segments only."""
        if not self.is_wildcard:
            return spiffe_id == self.spiffe_id
        if spiffe_id.trust_domain != self.spiffe_id.trust_domain or spiffe_id.is_root:
            return False
        prefix = self.spiffe_id.path
        # IDs are canonical (no empty segments, no trailing slash), so a
        # match on "<prefix>/" always leaves at least one whole segment.
        return not prefix or spiffe_id.path.startswith(prefix + "/")

    def __str__(self) -> str:
        return str(self.spiffe_id) + ("/*" if self.is_wildcard else "")
