"""JWT-SVID verification for OAuth client assertions.

Implements SPIFFE JWT-SVID §1-§4 as profiled by the OAuth SPIFFE client
authentication draft §3.1 and decision D13. :func:`verify_jwt_svid` checks:

- JWS compact serialization only, never JSON serialization (§1, §5.1);
- header members limited to ``alg``, ``kid`` and ``typ`` (§2); ``alg``
  from the nine RS/ES/PS algorithms of §2.1, checked first (§4); ``typ``
  absent, ``JWT`` or ``JOSE`` (§2.3); ``kid`` required (D13: keys are
  picked by ``kid``, although §2.2 makes it optional);
- ``sub`` a strict, non-root SPIFFE ID (§3.1);
- the key taken by ``kid`` from the JWT bundle of the trust domain named in
  ``sub``, and from no other (§6.2; Trust Domain and Bundle §3), and the
  ``alg`` fitting that key's type and curve before the signature is
  checked, so a public key can never serve as an HMAC secret;
- the signature, checked with PyJWT's algorithm implementations;
- ``aud`` exactly the expected audience: a string equal to it, or a
  one-element array holding it (§3.2, draft §3.1: the issuer identifier
  only, no extra values);
- ``exp`` present and not past, with ``leeway`` seconds of clock skew
  (§3.3, Appendix A), and not more than ``max_remaining_lifetime`` seconds
  ahead of ``at`` (D13, without leeway);
- ``nbf``, when present, reached, with the same leeway (RFC 7519 §4.1.5).

``iat`` is never a reason to refuse (D13); ``iss`` is not read; ``jti`` is
optional and a reused token is accepted (§7.1). Header and claim rules are
checked here rather than by ``jwt.decode`` so that they are exactly these.
Error messages never contain the token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import jwt

from swim_as.spiffe import _base64url
from swim_as.spiffe.bundle import JwtBundle, JwtKey
from swim_as.spiffe.errors import JwtSvidError, SpiffeIdError, quote
from swim_as.spiffe.ids import SpiffeId, TrustDomain

__all__ = [
    "ALGORITHMS",
    "MAX_TOKEN_LENGTH",
    "VerifiedJwtSvid",
    "verify_jwt_svid",
]

# SPIFFE JWT-SVID §2.1: RFC 7518 §3.3-§3.5 only; no "none", HMAC or EdDSA.
ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "PS384",
        "PS512",
    }
)
# JWT-SVIDs are a few hundred bytes; this bounds parsing work.
MAX_TOKEN_LENGTH = 16_384
_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
_TYPES = frozenset({"JWT", "JOSE"})
# Clamp for NumericDate values so that huge numbers compare without
# overflowing floats or datetimes (about the year 318000).
_FAR = 10_000_000_000_000
_SIGNATURE_ALGORITHMS = {alg: jwt.get_algorithm_by_name(alg) for alg in ALGORITHMS}


@dataclass(frozen=True, slots=True)
class VerifiedJwtSvid:
    """A JWT-SVID that passed :func:`verify_jwt_svid`.

    Times are aware UTC datetimes. ``claims`` is a read-only view of the
    whole payload; ``kid`` names the bundle key that verified it.
    """

    spiffe_id: SpiffeId
    expires_at: datetime
    issued_at: datetime | None
    jti: str | None
    claims: Mapping[str, Any]
    kid: str


def verify_jwt_svid(
    token: str,
    bundle_for: Callable[[TrustDomain], JwtBundle | None],
    *,
    audience: str,
    at: datetime,
    max_remaining_lifetime: int = 600,
    leeway: int = 30,
) -> VerifiedJwtSvid:
    """Verify a JWT-SVID client assertion (SPIFFE JWT-SVID §2-§4) at ``at``.

    ``audience`` is the authorization server's issuer identifier.
    ``bundle_for`` is asked only for the trust domain named in ``sub``.
    ``at`` must be timezone-aware.

    Raises:
        JwtSvidError: the token is not a valid JWT-SVID for ``audience`` at
            ``at``; ``reason`` says why (``"unknown_kid"`` tells the caller
            a bundle refresh might help).
    """
    if not audience:
        raise ValueError("the expected audience must not be empty")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("the verification time must be timezone-aware")
    if max_remaining_lifetime < 0 or leeway < 0:
        raise ValueError("lifetimes and leeway must not be negative")

    header, claims, signing_input, signature = _split(token)
    alg, kid = _check_header(header)
    spiffe_id = _subject(claims)
    label = f"JWT-SVID {quote(str(spiffe_id))}"

    key = _select_key(bundle_for, spiffe_id, kid, alg, label)
    if not _signature_valid(alg, signing_input, key.public_key, signature):
        raise JwtSvidError(
            f"invalid {label}: the signature does not verify with key {quote(kid)}",
            reason="signature",
        )

    _check_audience(claims, audience, label)
    now = at.timestamp()
    expires = _check_times(claims, now, max_remaining_lifetime, leeway, label)
    jti = claims.get("jti")
    if jti is not None and not isinstance(jti, str):
        raise JwtSvidError(f"invalid {label}: 'jti' is not a string", reason="jti")
    return VerifiedJwtSvid(
        spiffe_id=spiffe_id,
        expires_at=datetime.fromtimestamp(expires, tz=UTC),
        issued_at=_issued_at(claims.get("iat")),
        jti=jti,
        claims=MappingProxyType(claims),
        kid=kid,
    )


def _select_key(
    bundle_for: Callable[[TrustDomain], JwtBundle | None],
    spiffe_id: SpiffeId,
    kid: str,
    alg: str,
    label: str,
) -> JwtKey:
    """The ``kid`` key of ``sub``'s trust domain, fitting ``alg`` (§4, §6.2)."""
    trust_domain = spiffe_id.trust_domain
    bundle = bundle_for(trust_domain)
    if bundle is None or not bundle.keys or bundle.trust_domain != trust_domain:
        raise JwtSvidError(
            f"invalid {label}: no JWT bundle for trust domain "
            f"{quote(trust_domain.name)}",
            reason="no_bundle",
        )
    key = bundle.keys.get(kid)
    if key is None:
        raise JwtSvidError(
            f"invalid {label}: kid {quote(kid)} is not in the bundle of "
            f"{quote(trust_domain.name)}",
            reason="unknown_kid",
        )
    if alg not in key.algorithms:
        curve = f" {key.crv}" if key.crv else ""
        raise JwtSvidError(
            f"invalid {label}: alg {alg} does not fit key {quote(kid)} "
            f"({key.kty}{curve})",
            reason="alg_mismatch",
        )
    return key


def _malformed(detail: str) -> JwtSvidError:
    return JwtSvidError(f"invalid JWT-SVID: {detail}", reason="malformed")


def _split(token: object) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """JWS compact serialization (RFC 7515 §3.1, §7.1; JWT-SVID §5.1)."""
    if not isinstance(token, str):
        raise _malformed("the token is not a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise _malformed(f"longer than {MAX_TOKEN_LENGTH} characters")
    if token.lstrip().startswith("{"):
        raise JwtSvidError(
            "invalid JWT-SVID: JWS JSON serialization is not allowed, "
            "only compact serialization",
            reason="json_serialization",
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise _malformed(
            f"compact serialization has 3 dot-separated parts, found {len(parts)}"
        )
    header = _json_part(parts[0], "header")
    claims = _json_part(parts[1], "payload")
    try:
        signature = _base64url.decode(parts[2])
    except ValueError as err:
        raise _malformed("the signature is not base64url") from err
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return header, claims, signing_input, signature


def _json_part(part: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(
            _base64url.decode(part).decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError) as err:
        raise _malformed(f"the {name} is not base64url JSON ({err})") from err
    if not isinstance(value, dict):
        raise _malformed(f"the {name} is not a JSON object")
    try:
        # JSON admits lone surrogates ("\ud800"), which are no text.
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise _malformed(f"the {name} holds invalid Unicode") from None
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"duplicate member {quote(name, 40)}")
        members[name] = value
    return members


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _show(value: object) -> str:
    return quote(value, 40) if isinstance(value, str) else type(value).__name__


def _check_header(header: dict[str, Any]) -> tuple[str, str]:
    """JOSE header rules of SPIFFE JWT-SVID §2 and §4; returns alg, kid."""
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise JwtSvidError(
            f"invalid JWT-SVID: alg {_show(alg)} is not allowed", reason="alg"
        )
    extra = sorted(set(header) - _HEADER_MEMBERS)
    if extra:
        shown = ", ".join(quote(name, 20) for name in extra[:5])
        raise JwtSvidError(
            f"invalid JWT-SVID: header member(s) {shown} not allowed; "
            "only alg, kid and typ",
            reason="header",
        )
    if "typ" in header and header["typ"] not in _TYPES:
        raise JwtSvidError(
            f"invalid JWT-SVID: typ {_show(header['typ'])} is not JWT or JOSE",
            reason="typ",
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwtSvidError("invalid JWT-SVID: the header has no kid", reason="kid")
    return alg, kid


def _subject(claims: dict[str, Any]) -> SpiffeId:
    """``sub`` is the workload's SPIFFE ID (JWT-SVID §3.1, X509-SVID §5.2)."""
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise JwtSvidError("invalid JWT-SVID: no 'sub' string", reason="sub")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except SpiffeIdError as err:
        raise JwtSvidError(
            f"invalid JWT-SVID: sub is not a SPIFFE ID: {err}",
            reason="invalid_spiffe_id",
        ) from err
    if spiffe_id.is_root:
        raise JwtSvidError(
            f"invalid JWT-SVID: sub {quote(sub)} is a trust domain's root ID",
            reason="root_id",
        )
    return spiffe_id


def _signature_valid(
    alg: str, signing_input: bytes, public_key: object, signature: bytes
) -> bool:
    try:
        return bool(
            _SIGNATURE_ALGORITHMS[alg].verify(signing_input, public_key, signature)
        )
    except (ValueError, TypeError):
        return False


def _check_audience(claims: dict[str, Any], audience: str, label: str) -> None:
    """Exactly our audience (JWT-SVID §3.2, OAuth SPIFFE draft §3.1)."""
    aud = claims.get("aud")
    if isinstance(aud, str) and aud == audience:
        return
    if isinstance(aud, list) and len(aud) == 1 and aud[0] == audience:
        return
    if aud is None:
        detail = "no 'aud'"
    elif isinstance(aud, list) and audience in aud:
        detail = f"aud has {len(aud)} values; it must hold only {quote(audience)}"
    elif isinstance(aud, list):
        shown = ", ".join(_show(value) for value in aud[:3])
        detail = f"aud [{shown}] is not {quote(audience)}"
    else:
        detail = f"aud {_show(aud)} is not {quote(audience)}"
    raise JwtSvidError(f"invalid {label}: {detail}", reason="audience")


def _numeric_date(value: object) -> float | None:
    """RFC 7519 §2 NumericDate, clamped; None if not a JSON number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(max(min(value, _FAR), -_FAR))


def _check_times(
    claims: dict[str, Any],
    now: float,
    max_remaining_lifetime: int,
    leeway: int,
    label: str,
) -> float:
    """``exp`` and ``nbf`` (RFC 7519 §4.1.4-§4.1.5, JWT-SVID §3.3, D13)."""
    if "exp" not in claims:
        raise JwtSvidError(f"invalid {label}: no 'exp'", reason="exp")
    expires = _numeric_date(claims["exp"])
    if expires is None:
        raise JwtSvidError(f"invalid {label}: 'exp' is not a number", reason="exp")
    if now >= expires + leeway:
        raise JwtSvidError(
            f"invalid {label}: expired {now - expires:.0f} s ago", reason="expired"
        )
    if expires - now > max_remaining_lifetime:
        raise JwtSvidError(
            f"invalid {label}: exp is {expires - now:.0f} s ahead, more than "
            f"the {max_remaining_lifetime} s allowed",
            reason="lifetime",
        )
    if "nbf" in claims:
        not_before = _numeric_date(claims["nbf"])
        if not_before is None:
            raise JwtSvidError(f"invalid {label}: 'nbf' is not a number", reason="nbf")
        if now + leeway < not_before:
            raise JwtSvidError(
                f"invalid {label}: not valid for another {not_before - now:.0f} s",
                reason="not_yet_valid",
            )
    return expires


def _issued_at(value: object) -> datetime | None:
    """``iat`` for information only: never a reason to refuse (D13)."""
    issued = _numeric_date(value)
    if issued is None:
        return None
    try:
        return datetime.fromtimestamp(issued, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None
