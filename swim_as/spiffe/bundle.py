"""Trust bundles: the X.509 authorities and JWT keys of one trust domain.

A bundle file is either PEM (one or more ``CERTIFICATE`` blocks, each a CA
certificate) or a SPIFFE bundle: a JWK Set with ``spiffe_sequence``,
``spiffe_refresh_hint`` and ``keys`` (SPIFFE Trust Domain and Bundle §4).
A bundle never names its trust domain; the caller says which one it is for
and keeps it keyed by that name (§3).

Following §4.1.3 and §4.2, and decision D13, a JWK whose ``use`` is missing
or unknown, or whose ``kty`` (or curve) swim-as does not support, is
skipped rather than refused; each skip is recorded in ``skipped`` for the
caller to log. What is refused with :class:`BundleError` is input that
cannot be trusted as a whole: text that is neither PEM nor JSON, a truncated
PEM block, a certificate that is not a CA, JSON that does not parse,
private or symmetric key material, duplicate ``kid``s, an ``x509-svid``
entry without exactly one certificate in ``x5c`` (as go-spiffe does), a
``jwt-svid`` key without ``kid`` (SPIFFE JWT-SVID §6.1), malformed key
members, or key members that do not match the ``x5c`` certificate
(RFC 7517 §4.7). A ``kid`` on an ``x509-svid`` entry, which X509-SVID §6.1
says must not be set, is ignored.

A JSON document may also be a SPIFFE Bundle Map (§5): an object whose
``trust_domains`` member maps trust domain names to bundles. Only the entry
of the trust domain asked for is read, so a map never merges trust domains;
a map without that entry is refused, and so is a map that names a trust
domain twice (§5.1.1, §6.3; every JSON object is read with duplicate
member detection). A refresh hint inside a map entry is dropped, as §5.1.1
says it must not steer refreshing.

Supported keys: EC P-256, P-384 and P-521, RSA of at least 2048 bits and,
for JWT keys, OKP Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from swim_as.spiffe import _base64url
from swim_as.spiffe.errors import BundleError, quote
from swim_as.spiffe.ids import TrustDomain

__all__ = [
    "JwtBundle",
    "JwtKey",
    "JwtPublicKey",
    "X509Bundle",
    "parse_bundle",
    "parse_jwt_bundle",
]

JwtPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

MIN_RSA_BITS = 2048

USE_X509_SVID = "x509-svid"
USE_JWT_SVID = "jwt-svid"

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# crv -> (curve, coordinate length in bytes, the one JWS alg it fits);
# RFC 7518 §3.4 ties each ES alg to one curve.
_EC_CURVES: dict[str, tuple[ec.EllipticCurve, int, str]] = {
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
    "P-521": (ec.SECP521R1(), 66, "ES512"),
}
_SUPPORTED_KTY = frozenset({"EC", "RSA", "OKP"})
# RFC 7518 §6.2.2, §6.3.2 and §6.4.1, RFC 8037 §2: members that only
# private or secret keys carry.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_PEM_BEGIN_RE = re.compile(r"-----BEGIN ([^\r\n-]*)-----")


@dataclass(frozen=True, slots=True)
class JwtKey:
    """A JWT-SVID signing key from a bundle (SPIFFE JWT-SVID §6).

    ``algorithms`` holds the JWS ``alg`` values the key fits (RFC 7518 §3):
    one ES alg for an EC key (by curve), the RS and PS algs for RSA,
    ``EdDSA`` for Ed25519; narrowed to the JWK's own ``alg`` when it has
    one.
    """

    kid: str
    public_key: JwtPublicKey
    kty: str
    crv: str | None
    algorithms: frozenset[str]


@dataclass(frozen=True, slots=True)
class X509Bundle:
    """The X.509 authorities of one trust domain (SPIFFE X509-SVID §6).

    ``skipped`` lists why entries of the bundle document were ignored.
    """

    trust_domain: TrustDomain
    authorities: tuple[x509.Certificate, ...]
    sequence: int | None = None
    refresh_hint: int | None = None
    skipped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "authorities", tuple(self.authorities))
        object.__setattr__(self, "skipped", tuple(self.skipped))


@dataclass(frozen=True, slots=True)
class JwtBundle:
    """The JWT-SVID keys of one trust domain by ``kid`` (SPIFFE JWT-SVID §6).

    ``keys`` is read-only. ``skipped`` lists why entries of the bundle
    document were ignored.
    """

    trust_domain: TrustDomain
    keys: Mapping[str, JwtKey]
    sequence: int | None = None
    refresh_hint: int | None = None
    skipped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        object.__setattr__(self, "skipped", tuple(self.skipped))


_B = TypeVar("_B", X509Bundle, JwtBundle)


def parse_bundle(
    data: bytes, trust_domain: TrustDomain
) -> tuple[X509Bundle, JwtBundle]:
    """Parse a bundle file: PEM certificates or a SPIFFE bundle JSON.

    The format is detected from the content. PEM yields CA certificates
    only (and an empty JWT bundle); JSON yields the ``x509-svid`` and
    ``jwt-svid`` entries (SPIFFE Trust Domain and Bundle §4, SPIFFE
    X509-SVID §6.2, SPIFFE JWT-SVID §6.2).

    Raises:
        BundleError: the data cannot be used as a bundle.
    """
    text = _decode_text(data, trust_domain)
    if text.lstrip().startswith(("{", "[")):
        document, from_map = _select(_load_json(text, trust_domain), trust_domain)
        x509_bundle, jwt_bundle = _parse_jwk_set(document, trust_domain, False)
        if from_map:
            return _without_hint(x509_bundle), _without_hint(jwt_bundle)
        return x509_bundle, jwt_bundle
    if _PEM_BEGIN_RE.search(text) is not None:
        authorities = _parse_pem(text, trust_domain)
        return X509Bundle(trust_domain, authorities), JwtBundle(trust_domain, {})
    raise _error(
        trust_domain,
        "neither PEM certificates nor SPIFFE bundle JSON",
        "format",
    )


def parse_jwt_bundle(data: bytes, trust_domain: TrustDomain) -> JwtBundle:
    """Parse a JWT bundle file: a JWK Set of JWT-SVID keys.

    Keys with ``use`` ``jwt-svid`` or with no ``use`` are read; any other
    ``use`` is skipped. Otherwise the rules of :func:`parse_bundle` apply
    (SPIFFE JWT-SVID §6).

    Raises:
        BundleError: the data cannot be used as a JWT bundle.
    """
    text = _decode_text(data, trust_domain)
    if not text.lstrip().startswith(("{", "[")):
        raise _error(trust_domain, "a JWT bundle must be a JSON JWK Set", "format")
    document, from_map = _select(_load_json(text, trust_domain), trust_domain)
    _, jwt_bundle = _parse_jwk_set(document, trust_domain, True)
    return _without_hint(jwt_bundle) if from_map else jwt_bundle


def _select(document: object, trust_domain: TrustDomain) -> tuple[object, bool]:
    """The bundle itself, or this trust domain's entry of a bundle map (§5).

    Returns the document to read as a JWK Set, and whether it came from a
    map.
    """
    if not isinstance(document, dict) or "trust_domains" not in document:
        return document, False
    if "keys" in document:
        raise _error(
            trust_domain,
            "a document with both 'keys' and 'trust_domains' is neither a bundle "
            "nor a bundle map",
            "json",
        )
    entries = document["trust_domains"]
    if not isinstance(entries, dict):
        raise _error(trust_domain, "'trust_domains' must be an object", "json")
    if trust_domain.name not in entries:
        raise _error(
            trust_domain,
            "the bundle map holds no bundle for this trust domain",
            "not_in_map",
        )
    return entries[trust_domain.name], True


def _without_hint(bundle: _B) -> _B:
    return replace(bundle, refresh_hint=None)


def _error(trust_domain: TrustDomain, detail: str, reason: str) -> BundleError:
    return BundleError(
        f"invalid bundle for trust domain {quote(trust_domain.name)}: {detail}",
        reason=reason,
    )


def _show(value: object) -> str:
    return quote(value) if isinstance(value, str) else type(value).__name__


def _decode_text(data: bytes, trust_domain: TrustDomain) -> str:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("bundle data must be bytes")
    try:
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _error(trust_domain, "not UTF-8 text", "format") from err


def _parse_pem(text: str, trust_domain: TrustDomain) -> tuple[x509.Certificate, ...]:
    """Read every PEM block; each must be a complete CA certificate."""
    begins = list(_PEM_BEGIN_RE.finditer(text))
    certificates: dict[bytes, x509.Certificate] = {}
    for index, begin in enumerate(begins):
        label = begin.group(1)
        where = f"PEM block {index + 1} ({quote(label)})"
        end_marker = f"-----END {label}-----"
        limit = begins[index + 1].start() if index + 1 < len(begins) else len(text)
        end = text.find(end_marker, begin.end(), limit)
        if end < 0:
            raise _error(trust_domain, f"{where} is truncated", "pem")
        if "PRIVATE KEY" in label:
            raise _error(trust_domain, f"{where} is a private key", "private_key")
        if label != "CERTIFICATE":
            raise _error(trust_domain, f"{where} is not a certificate", "pem")
        try:
            der = base64.b64decode(
                "".join(text[begin.end() : end].split()), validate=True
            )
        except binascii.Error as err:
            raise _error(trust_domain, f"{where} is not valid base64", "pem") from err
        certificate = _load_certificate(der, trust_domain, where)
        certificates.setdefault(der, certificate)
    return tuple(certificates.values())


def _load_certificate(
    der: bytes, trust_domain: TrustDomain, where: str
) -> x509.Certificate:
    """Load a DER certificate that must be a CA (RFC 5280 §4.2.1.9)."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value
    except x509.ExtensionNotFound as err:
        raise _error(
            trust_domain, f"{where} has no basicConstraints: not a CA", "not_ca"
        ) from err
    except (ValueError, x509.DuplicateExtension) as err:
        raise _error(
            trust_domain, f"{where} is not a valid certificate", "certificate"
        ) from err
    if not constraints.ca:
        raise _error(trust_domain, f"{where} is not a CA certificate", "not_ca")
    return certificate


def _load_json(text: str, trust_domain: TrustDomain) -> object:
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_members,
            parse_constant=_refuse_constant,
        )
    except _DuplicateMember as err:
        # For a bundle map this is a trust domain named twice (§5.1.1, §6.3).
        raise _error(trust_domain, f"not valid JSON ({err})", "duplicate") from err
    except (ValueError, RecursionError) as err:
        raise _error(trust_domain, f"not valid JSON ({err})", "json") from err


class _DuplicateMember(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise _DuplicateMember(f"member {quote(name, 40)} appears twice")
        members[name] = value
    return members


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_UINT64_MAX = 2**64 - 1


def _optional_count(
    document: dict[str, Any], member: str, trust_domain: TrustDomain
) -> int | None:
    """Read ``spiffe_sequence`` / ``spiffe_refresh_hint`` (§4.1.1-§4.1.2)."""
    value = document.get(member)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _error(trust_domain, f"{member!r} must be a non-negative integer", "json")
    if value > _UINT64_MAX:
        # The bundle format's numbers are 64-bit; a larger sequence would
        # make every later, honest bundle look like a rollback.
        raise _error(trust_domain, f"{member!r} is larger than 2^64 - 1", "json")
    return value


def _parse_jwk_set(
    document: object, trust_domain: TrustDomain, jwt_only: bool
) -> tuple[X509Bundle, JwtBundle]:
    """Read a SPIFFE bundle JWK Set (SPIFFE Trust Domain and Bundle §4)."""
    if not isinstance(document, dict):
        raise _error(trust_domain, "the JSON is not an object", "json")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise _error(trust_domain, "'keys' must be an array", "json")
    sequence = _optional_count(document, "spiffe_sequence", trust_domain)
    refresh_hint = _optional_count(document, "spiffe_refresh_hint", trust_domain)

    authorities: dict[bytes, x509.Certificate] = {}
    keys: dict[str, JwtKey] = {}
    skipped: list[str] = []
    for index, entry in enumerate(entries):
        where = f"keys[{index}]"
        if not isinstance(entry, dict):
            raise _error(trust_domain, f"{where} is not an object", "json")
        private = sorted(_PRIVATE_MEMBERS & entry.keys())
        kty = entry.get("kty")
        if kty == "oct":
            raise _error(trust_domain, f"{where} is a symmetric key", "symmetric_key")
        if private:
            raise _error(
                trust_domain,
                f"{where} holds private key members {', '.join(private)}",
                "private_key",
            )

        use = entry.get("use")
        if jwt_only and use not in (None, USE_JWT_SVID):
            skipped.append(f"{where}: use {_show(use)} is not read from a JWT bundle")
            continue
        if not jwt_only and use is None:
            skipped.append(f"{where}: no 'use'")
            continue
        if not jwt_only and use not in (USE_X509_SVID, USE_JWT_SVID):
            skipped.append(f"{where}: use {_show(use)} is not supported")
            continue
        if kty not in _SUPPORTED_KTY:
            shown = "missing" if kty is None else _show(kty)
            skipped.append(f"{where}: key type {shown} is not supported")
            continue

        if use == USE_X509_SVID:
            outcome = _x509_authority(entry, where, trust_domain)
            if isinstance(outcome, str):
                skipped.append(outcome)
            else:
                der = outcome.public_bytes(serialization.Encoding.DER)
                authorities.setdefault(der, outcome)
            continue
        key = _jwt_key(entry, where, trust_domain)
        if isinstance(key, str):
            skipped.append(key)
        elif key.kid in keys:
            raise _error(
                trust_domain,
                f"{where}: duplicate kid {quote(key.kid)}",
                "duplicate_kid",
            )
        else:
            keys[key.kid] = key

    notes = tuple(skipped)
    return (
        X509Bundle(
            trust_domain, tuple(authorities.values()), sequence, refresh_hint, notes
        ),
        JwtBundle(trust_domain, keys, sequence, refresh_hint, notes),
    )


def _x509_authority(
    entry: dict[str, Any], where: str, trust_domain: TrustDomain
) -> x509.Certificate | str:
    """Read an ``x509-svid`` entry (SPIFFE X509-SVID §6); a str means skip."""
    chain = entry.get("x5c")
    count = len(chain) if isinstance(chain, list) else 0
    if not isinstance(chain, list) or count != 1:
        raise _error(
            trust_domain,
            f"{where}: an x509-svid entry needs exactly one certificate in "
            f"'x5c', found {count}",
            "x5c",
        )
    encoded = chain[0]
    if not isinstance(encoded, str):
        raise _error(trust_domain, f"{where}: 'x5c' holds a non-string", "x5c")
    try:
        # RFC 7517 §4.7: x5c values are standard base64, not base64url.
        der = base64.b64decode(encoded, validate=True)
    except binascii.Error as err:
        raise _error(trust_domain, f"{where}: 'x5c' is not base64", "x5c") from err
    certificate = _load_certificate(der, trust_domain, where)

    key = _public_key(entry, where, trust_domain)
    if isinstance(key, str):
        return key
    if _spki(key[0]) != _spki(certificate.public_key()):
        raise _error(
            trust_domain,
            f"{where}: the key members do not match the 'x5c' certificate",
            "jwk",
        )
    return certificate


def _jwt_key(
    entry: dict[str, Any], where: str, trust_domain: TrustDomain
) -> JwtKey | str:
    """Read a ``jwt-svid`` entry (SPIFFE JWT-SVID §6.1); a str means skip."""
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _error(trust_domain, f"{where}: a jwt-svid key needs a 'kid'", "kid")
    where = f"{where} (kid {quote(kid)})"
    key = _public_key(entry, where, trust_domain)
    if isinstance(key, str):
        return key
    public_key, crv, algorithms = key
    alg = entry.get("alg")
    if alg is not None:
        if alg not in algorithms:
            return f"{where}: alg {_show(alg)} does not fit the key"
        algorithms = frozenset({alg})
    return JwtKey(kid, public_key, entry["kty"], crv, algorithms)


def _public_key(
    entry: dict[str, Any], where: str, trust_domain: TrustDomain
) -> tuple[JwtPublicKey, str | None, frozenset[str]] | str:
    """Build the public key of a JWK (RFC 7518 §6, RFC 8037 §2).

    Returns the key, its curve and the algs it fits, or a reason to skip
    an unsupported curve or a short RSA key.
    """
    kty = entry["kty"]
    try:
        if kty == "EC":
            crv = entry.get("crv")
            if crv not in _EC_CURVES:
                return f"{where}: EC curve {_show(crv)} is not supported"
            curve, size, alg = _EC_CURVES[crv]
            x = _member(entry, "x", size)
            y = _member(entry, "y", size)
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            )
            return numbers.public_key(), crv, frozenset({alg})
        if kty == "RSA":
            n = int.from_bytes(_member(entry, "n"), "big")
            e = int.from_bytes(_member(entry, "e"), "big")
            if n.bit_length() < MIN_RSA_BITS:
                return (
                    f"{where}: RSA key of {n.bit_length()} bits is shorter "
                    f"than {MIN_RSA_BITS}"
                )
            return rsa.RSAPublicNumbers(e, n).public_key(), None, _RSA_ALGORITHMS
        crv = entry.get("crv")
        if crv != "Ed25519":
            return f"{where}: OKP curve {_show(crv)} is not supported"
        x = _member(entry, "x", 32)
        return ed25519.Ed25519PublicKey.from_public_bytes(x), crv, frozenset({"EdDSA"})
    except ValueError as err:
        raise _error(
            trust_domain, f"{where}: invalid {kty} key ({err})", "jwk"
        ) from err


def _member(entry: dict[str, Any], name: str, size: int | None = None) -> bytes:
    value = entry.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is missing")
    try:
        raw = _base64url.decode(value)
    except ValueError as err:
        raise ValueError(f"{name!r} is not base64url") from err
    if not raw or (size is not None and len(raw) != size):
        raise ValueError(f"{name!r} has the wrong length")
    return raw


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
