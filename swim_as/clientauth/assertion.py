"""``private_key_jwt`` client assertions: RFC 7523 §2.2 and §3, rfc7523bis.

:func:`parse_assertion` reads a client assertion without trusting it (to
learn which client it claims to come from); :func:`verify_assertion` then
checks it against that client's registered keys:

- JWS compact serialization only (RFC 7515 §7.1), at most
  :data:`MAX_ASSERTION_LENGTH` characters;
- header members limited to ``alg``, ``kid`` and ``typ``: a key or a key
  location named by the token itself (``jku``, ``jwk``, ``x5u``, ``x5c``)
  or a ``crit`` extension is refused, never followed;
- ``alg`` an asymmetric JWS algorithm, checked first and against the key's
  type and curve before the signature is verified, so a public key can
  never serve as an HMAC secret; ``typ`` absent, ``JWT`` or
  ``client-authentication+jwt`` (rfc7523bis);
- ``iss`` and ``sub`` both the ``client_id`` (RFC 7523 §3 items 1-2);
- ``aud`` exactly the issuer identifier, a string or a one-element array;
  the token endpoint URL is refused (rfc7523bis);
- ``exp`` required, not past (with leeway) and not further ahead than the
  configured cap; ``nbf`` honoured with the same leeway; ``iat`` never a
  reason to refuse;
- ``jti`` required, so that the caller can refuse a replay (RFC 7523 §3
  item 7).

Errors are :class:`AssertionRefused`; the message never contains the token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jwt

from swim_as.clientauth.jwk import (
    ASYMMETRIC_ALGORITHMS,
    ClientKey,
    ClientKeySet,
    b64url_decode,
)

__all__ = [
    "JWT_BEARER",
    "MAX_ASSERTION_LENGTH",
    "AssertionRefused",
    "ParsedAssertion",
    "VerifiedAssertion",
    "parse_assertion",
    "verify_assertion",
]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LENGTH = 16_384
_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
_TYPES = frozenset({"jwt", "client-authentication+jwt"})
_FAR = 10_000_000_000_000
_ALGORITHMS = {alg: jwt.get_algorithm_by_name(alg) for alg in ASYMMETRIC_ALGORITHMS}


class AssertionRefused(Exception):
    """A client assertion is not acceptable; ``reason`` is a stable label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedAssertion:
    """An assertion split and its header checked, signature not yet."""

    alg: str
    kid: str | None
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def subject(self) -> str | None:
        """``sub`` when both ``iss`` and ``sub`` are the same string."""
        sub, iss = self.claims.get("sub"), self.claims.get("iss")
        if isinstance(sub, str) and sub and iss == sub:
            return sub
        return None


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    """A verified assertion: its ``jti`` and ``exp`` for the replay check."""

    jti: str
    expires_at: float
    kid: str | None


def parse_assertion(token: object) -> ParsedAssertion:
    """Split a compact JWS and check its header (RFC 7515 §7.1, §4.1).

    Raises:
        AssertionRefused: not compact JWS, or a header breaking the rules.
    """
    if not isinstance(token, str) or len(token) > MAX_ASSERTION_LENGTH:
        raise AssertionRefused("the assertion is not a JWT", reason="malformed")
    if token.lstrip().startswith("{"):
        raise AssertionRefused(
            "JWS JSON serialization is not accepted, only compact",
            reason="json_serialization",
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise AssertionRefused(
            f"compact JWS has 3 parts, found {len(parts)}", reason="malformed"
        )
    header = _json_part(parts[0], "header")
    claims = _json_part(parts[1], "payload")
    try:
        signature = b64url_decode(parts[2])
    except ValueError as err:
        raise AssertionRefused(
            "the signature is not base64url", reason="malformed"
        ) from err

    alg = header.get("alg")
    if alg not in ASYMMETRIC_ALGORITHMS:
        shown = alg if isinstance(alg, str) and alg.isprintable() else "?"
        raise AssertionRefused(f"alg {shown[:20]!r} is not allowed", reason="alg")
    extra = sorted(set(header) - _HEADER_MEMBERS)
    if extra:
        names = ", ".join(repr(n[:20]) for n in extra[:5])
        raise AssertionRefused(
            f"header member(s) {names} not allowed; only alg, kid and typ",
            reason="header",
        )
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TYPES):
        raise AssertionRefused("typ is not JWT", reason="typ")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise AssertionRefused("kid is not a string", reason="kid")
    return ParsedAssertion(
        alg=alg,
        kid=kid,
        claims=claims,
        signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
        signature=signature,
    )


def verify_assertion(
    assertion: ParsedAssertion,
    keys: ClientKeySet,
    *,
    client_id: str,
    audience: str,
    now: float,
    max_lifetime: int,
    leeway: int,
) -> VerifiedAssertion:
    """Check signature and claims (RFC 7523 §3) for ``client_id`` at ``now``.

    Raises:
        AssertionRefused: ``reason`` ``"unknown_kid"`` means no registered
            key has the ``kid`` (a refetch of the keys might help).
    """
    key = _verifying_key(assertion, keys)
    if key is None:
        raise AssertionRefused(
            "the signature does not verify with a registered key",
            reason="signature",
        )
    claims = assertion.claims
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise AssertionRefused("iss and sub must both be the client_id", reason="sub")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and aud == [audience])):
        raise AssertionRefused(
            "aud must be exactly the issuer identifier", reason="audience"
        )
    expires = _check_times(claims, now, max_lifetime, leeway)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 512:
        raise AssertionRefused("jti is required", reason="jti")
    return VerifiedAssertion(jti=jti, expires_at=expires, kid=key.kid)


def _verifying_key(assertion: ParsedAssertion, keys: ClientKeySet) -> ClientKey | None:
    """The registered key that verifies the signature; alg checked first."""
    if assertion.kid is not None:
        candidates = keys.with_kid(assertion.kid)
        if not candidates:
            raise AssertionRefused(
                "kid is not among the client's keys", reason="unknown_kid"
            )
        fitting = [k for k in candidates if assertion.alg in k.algorithms]
        if not fitting:
            raise AssertionRefused(
                f"alg {assertion.alg} does not fit the key", reason="alg_mismatch"
            )
    else:
        fitting = [k for k in keys if assertion.alg in k.algorithms]
        if not fitting:
            raise AssertionRefused(
                f"alg {assertion.alg} fits none of the client's keys",
                reason="alg_mismatch",
            )
    algorithm = _ALGORITHMS[assertion.alg]
    for key in fitting:
        try:
            if algorithm.verify(
                assertion.signing_input, key.public_key, assertion.signature
            ):
                return key
        except (ValueError, TypeError):
            continue
    return None


def _json_part(part: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(
            b64url_decode(part).decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError) as err:
        raise AssertionRefused(
            f"the {name} is not base64url JSON", reason="malformed"
        ) from err
    if not isinstance(value, dict):
        raise AssertionRefused(f"the {name} is not a JSON object", reason="malformed")
    try:
        # JSON admits lone surrogates ("\ud800"), which are no text.
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise AssertionRefused(
            f"the {name} holds invalid Unicode", reason="malformed"
        ) from None
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError("duplicate member")
        members[name] = value
    return members


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _numeric_date(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(max(min(value, _FAR), -_FAR))


def _check_times(
    claims: dict[str, Any], now: float, max_lifetime: int, leeway: int
) -> float:
    """``exp`` and ``nbf`` (RFC 7519 §4.1.4-§4.1.5, RFC 7523 §3 items 4-5)."""
    expires = _numeric_date(claims.get("exp"))
    if expires is None:
        raise AssertionRefused("exp is required", reason="exp")
    if now >= expires + leeway:
        raise AssertionRefused(f"expired {now - expires:.0f} s ago", reason="expired")
    if expires - now > max_lifetime:
        raise AssertionRefused(
            f"exp is {expires - now:.0f} s ahead, more than {max_lifetime} s",
            reason="lifetime",
        )
    if "nbf" in claims:
        not_before = _numeric_date(claims["nbf"])
        if not_before is None:
            raise AssertionRefused("nbf is not a number", reason="nbf")
        if now + leeway < not_before:
            raise AssertionRefused("not valid yet", reason="not_yet_valid")
    return expires
