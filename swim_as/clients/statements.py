"""Software statements (RFC 7591 §2.3) from issuers the operator trusts.

A software statement is a signed JWT whose claims are client metadata. The
operator configures each accepted issuer with its public keys
(``[[software_statement_issuers]] issuer, jwks_file``), optionally limited
to SPIFFE ID patterns. :meth:`StatementVerifier.verify` checks, in order:

* a compact JWS of at most 16 KiB whose header names an asymmetric
  ``alg`` (RS/PS/ES 256-512 or EdDSA); ``none`` and HMAC are refused
  (``invalid_software_statement``);
* ``iss`` names a configured issuer, else ``unapproved_software_statement``
  (RFC 7591 §3.2.2);
* the signature, with the key named by ``kid`` (or, without ``kid``, any
  of the issuer's keys);
* ``exp`` and ``nbf`` when present (30 s leeway), ``aud`` when present
  (it must name swim-as's issuer).

Every failure after the issuer is known is ``invalid_software_statement``.
The claims then override the request body's members (RFC 7591 §3.1.1);
JWT registered claims (``iss``, ``aud``, ``exp``…) are not metadata and
are dropped. The statement is never logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from swim_as.clock import Clock
from swim_as.errors import InvalidSoftwareStatement, UnapprovedSoftwareStatement
from swim_as.spiffe.errors import SpiffeIdError
from swim_as.spiffe.ids import SpiffeIdPattern

ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
    }
)
MAX_LENGTH = 16_384
LEEWAY = 30
# JWT claims (RFC 7519 §4.1) that describe the statement, not the client.
JWT_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})


# Which algorithms fit which key type, so that a key is only ever used
# with an algorithm of its own kind (RFC 8725 §2.1, §3.1).
_FAMILIES = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "OKP": frozenset({"EdDSA"}),
}


class StatementConfigError(ValueError):
    """An issuer's configuration cannot be used."""


@dataclass(frozen=True, slots=True)
class StatementKey:
    """One public key of an issuer and the algorithms it may verify."""

    kid: str | None
    algorithms: frozenset[str]
    key: Any


@dataclass(frozen=True, slots=True)
class StatementIssuer:
    """A trusted issuer: its keys and the SPIFFE IDs it may vouch for."""

    issuer: str
    keys: tuple[StatementKey, ...]
    patterns: tuple[SpiffeIdPattern, ...]

    def allows(self, target: SpiffeIdPattern) -> bool:
        """Whether statements of this issuer may register ``target``."""
        return not self.patterns or any(covers(p, target) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class VerifiedStatement:
    """A statement that passed :meth:`StatementVerifier.verify`."""

    issuer: StatementIssuer
    metadata: Mapping[str, Any]
    raw: str

    def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The request body with the statement's claims taking precedence."""
        merged = {k: v for k, v in body.items() if k != "software_statement"}
        merged.update(self.metadata)
        return merged


def covers(outer: SpiffeIdPattern, inner: SpiffeIdPattern) -> bool:
    """Whether every ID ``inner`` matches is matched by ``outer``.

    An exact ``inner`` is covered when ``outer`` matches it; a wildcard
    ``inner`` only by a wildcard ``outer`` at the same or a shorter prefix.
    """
    if not inner.is_wildcard:
        return outer.matches(inner.spiffe_id)
    if not outer.is_wildcard:
        return False
    if outer.spiffe_id.trust_domain != inner.spiffe_id.trust_domain:
        return False
    prefix = outer.spiffe_id.path
    path = inner.spiffe_id.path
    return not prefix or path == prefix or path.startswith(prefix + "/")


def load_issuer(issuer: str, jwks_file: Path, patterns: list[str]) -> StatementIssuer:
    """Read one issuer's JWK Set and patterns.

    Raises:
        StatementConfigError: the file or a pattern is unusable.
    """
    where = f"software statement issuer {issuer!r}"
    try:
        document = json.loads(jwks_file.read_bytes())
    except OSError as err:
        raise StatementConfigError(
            f"{where}: cannot read {jwks_file}: {err.strerror}"
        ) from err
    except ValueError as err:
        raise StatementConfigError(f"{where}: {jwks_file} is not JSON") from err
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise StatementConfigError(f"{where}: {jwks_file} is not a JWK Set")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if "d" in entry:
            raise StatementConfigError(
                f"{where}: {jwks_file} holds a private key; give the public keys only"
            )
        family = _FAMILIES.get(str(entry.get("kty")), frozenset())
        declared = entry.get("alg")
        algorithms = family & {declared} if declared is not None else family
        try:
            jwk = jwt.PyJWK.from_dict(entry)
        except (jwt.PyJWTError, ValueError, TypeError) as err:
            raise StatementConfigError(
                f"{where}: {jwks_file} has an unusable key: {err}"
            ) from err
        if algorithms:
            keys.append(StatementKey(entry.get("kid"), algorithms, jwk.key))
    if not keys:
        raise StatementConfigError(
            f"software statement issuer {issuer!r}: {jwks_file} has no signing key"
        )
    parsed = []
    for text in patterns:
        try:
            parsed.append(SpiffeIdPattern.parse(text))
        except SpiffeIdError as err:
            raise StatementConfigError(
                f"software statement issuer {issuer!r}: {err}"
            ) from err
    return StatementIssuer(issuer, tuple(keys), tuple(parsed))


class StatementVerifier:
    """Verifies software statements against the configured issuers."""

    def __init__(
        self, issuers: Mapping[str, StatementIssuer], *, audience: str, clock: Clock
    ) -> None:
        self._issuers = dict(issuers)
        self._audience = audience
        self._clock = clock

    def verify(self, statement: object) -> VerifiedStatement:
        """Verify a statement (module docstring).

        Raises:
            InvalidSoftwareStatement: malformed, unsigned, badly signed,
                expired, not yet valid, or for another audience.
            UnapprovedSoftwareStatement: its issuer is not configured.
        """
        if not isinstance(statement, str) or not 0 < len(statement) <= MAX_LENGTH:
            raise InvalidSoftwareStatement(
                "software_statement must be a signed JWT",
                detail="software_statement is not a string of a sane length",
            )
        try:
            header = jwt.get_unverified_header(statement)
            claims = jwt.decode(statement, options={"verify_signature": False})
        except jwt.PyJWTError as err:
            raise InvalidSoftwareStatement(
                "software_statement must be a signed JWT",
                detail=f"unparsable software statement: {type(err).__name__}",
            ) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise InvalidSoftwareStatement(
                "software_statement must be signed with an asymmetric algorithm",
                detail=f"software statement alg {str(alg)[:20]!r} refused",
            )
        issuer_name = claims.get("iss")
        issuer = (
            self._issuers.get(issuer_name) if isinstance(issuer_name, str) else None
        )
        if issuer is None:
            raise UnapprovedSoftwareStatement(
                "the software statement's issuer is not approved",
                detail=f"statement from unknown issuer {str(issuer_name)[:200]!r}",
            )
        verified = self._check_signature(statement, header, alg, issuer)
        self._check_times(verified, issuer.issuer)
        self._check_audience(verified, issuer.issuer)
        metadata = {k: v for k, v in verified.items() if k not in JWT_CLAIMS}
        metadata.pop("software_statement", None)
        if not (
            isinstance(metadata.get("spiffe_id"), str)
            or isinstance(metadata.get("tls_client_auth_san_uri"), str)
        ) or not isinstance(metadata.get("token_endpoint_auth_method"), str):
            # A statement is a bearer credential: anyone who sees it can
            # send it again. Pinning the identity and the method means a
            # replay can only register what the issuer signed for.
            raise InvalidSoftwareStatement(
                "the software statement must name the client's SPIFFE ID and "
                "token_endpoint_auth_method",
                detail=f"statement of {issuer.issuer!r} pins no identity",
            )
        return VerifiedStatement(issuer, metadata, statement)

    @staticmethod
    def _check_signature(
        statement: str, header: Mapping[str, Any], alg: str, issuer: StatementIssuer
    ) -> dict[str, Any]:
        kid = header.get("kid")
        candidates = [
            k
            for k in issuer.keys
            if alg in k.algorithms and (kid is None or k.kid == kid)
        ]
        for key in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    statement,
                    key.key,
                    algorithms=[alg],
                    options={
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": False,
                        "verify_iss": False,
                        "verify_sub": False,
                        "verify_jti": False,
                    },
                )
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
            return claims
        raise InvalidSoftwareStatement(
            "the software statement's signature does not verify",
            detail=(
                f"no key of issuer {issuer.issuer!r} verifies the statement "
                f"(kid {str(kid)[:64]!r}, alg {alg})"
            ),
        )

    def _check_times(self, claims: Mapping[str, Any], issuer: str) -> None:
        now = self._clock.time()
        for name in ("exp", "nbf"):
            value = claims.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidSoftwareStatement(
                    f"the software statement's {name} is not a number",
                    detail=f"statement of {issuer!r}: {name} {value!r}",
                )
            if name == "exp" and value + LEEWAY <= now:
                raise InvalidSoftwareStatement(
                    "the software statement has expired",
                    detail=f"statement of {issuer!r} expired at {value}",
                )
            if name == "nbf" and value - LEEWAY > now:
                raise InvalidSoftwareStatement(
                    "the software statement is not valid yet",
                    detail=f"statement of {issuer!r} valid from {value}",
                )

    def _check_audience(self, claims: Mapping[str, Any], issuer: str) -> None:
        aud = claims.get("aud")
        if aud is None:
            return
        values = [aud] if isinstance(aud, str) else aud
        if not isinstance(values, list) or self._audience not in values:
            raise InvalidSoftwareStatement(
                "the software statement is meant for another server",
                detail=f"statement of {issuer!r} has aud {str(aud)[:200]!r}",
            )


def stored_statement_metadata(statement: str) -> dict[str, Any]:
    """The metadata claims of a statement verified when it was stored."""
    claims = jwt.decode(statement, options={"verify_signature": False})
    return {
        k: v
        for k, v in claims.items()
        if k not in JWT_CLAIMS and k != "software_statement"
    }
