"""A client's own public keys: JWK Sets registered in ``jwks`` or ``jwks_uri``.

Used by ``private_key_jwt`` (RFC 7523 §2.2, the key that signs the client's
assertions) and ``self_signed_tls_client_auth`` (RFC 8705 §2.2, the
certificate the client presents in the handshake). The rules, for both the
registration (RFC 7591 §2) and every later fetch of a ``jwks_uri``:

- a JWK Set object (RFC 7517 §5) with 1 to :data:`MAX_KEYS` keys;
- public keys only: a key with private members (``d``, ``p``, ``q``, ``dp``,
  ``dq``, ``qi``, ``oth``) or a symmetric key (``kty`` ``oct``, ``k``) is
  refused, never skipped (RFC 7517 §9.2 asks for exactly this care);
- EC keys on P-256, P-384 or P-521, RSA keys of at least 2048 bits, OKP
  Ed25519; a key of another type or curve, or whose ``use`` is not ``sig``,
  is skipped, as RFC 7517 §5 allows, but at least one key must remain;
- ``alg``, when present, must be an asymmetric JWS algorithm that fits the
  key (RFC 7518 §3); ``kid``s are unique;
- ``x5c``, when present, holds standard base64 DER certificates (RFC 7517
  §4.7) and the key members must be the public key of ``x5c[0]`` (RFC 8705
  §2.2.2); the self-signed method requires ``x5c`` on every key.

Errors are :class:`JwkError`, whose message is short and safe to send as an
``error_description``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MAX_KEYS",
    "ClientKey",
    "ClientKeySet",
    "JwkError",
    "PublicKey",
    "b64url_decode",
    "parse_client_jwks",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

# RFC 7518 §3.3-§3.5 and RFC 8037 §3.1: the signature algorithms a client
# may use. No "none" and no HMAC: a public key is never a shared secret.
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: dict[str, tuple[ec.EllipticCurve, int, str]] = {
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
    "P-521": (ec.SECP521R1(), 66, "ES512"),
}
ASYMMETRIC_ALGORITHMS = frozenset(
    {*_RSA_ALGORITHMS, "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_KEYS = 32
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_ALPHABET_RE = re.compile(r"[A-Za-z0-9_-]*")


class JwkError(ValueError):
    """A JWK Set breaks a rule; ``str(err)`` is a safe public description."""


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2).

    Raises:
        ValueError: padding, whitespace or characters outside the alphabet.
    """
    if _ALPHABET_RE.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One usable public key of a client.

    ``algorithms`` are the JWS algs it fits (narrowed to its own ``alg``);
    ``certificate_der`` is ``x5c[0]`` when the JWK carries certificates.
    """

    kid: str | None
    public_key: PublicKey
    algorithms: frozenset[str]
    certificate_der: bytes | None = None


@dataclass(frozen=True, slots=True)
class ClientKeySet:
    """The usable keys of one JWK Set, in document order."""

    keys: tuple[ClientKey, ...]

    def __iter__(self) -> Iterator[ClientKey]:
        return iter(self.keys)

    def with_kid(self, kid: str) -> list[ClientKey]:
        return [key for key in self.keys if key.kid == kid]

    def certificates(self) -> list[bytes]:
        """DER of every registered certificate (``x5c[0]`` of each key)."""
        return [k.certificate_der for k in self.keys if k.certificate_der]


def parse_client_jwks(document: object, *, require_x5c: bool) -> ClientKeySet:
    """Read a client's JWK Set (RFC 7517 §5) under the rules above.

    Raises:
        JwkError: the set, or one of its keys, is unacceptable.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwkError("jwks must be a JWK Set object with a keys array")
    entries = document["keys"]
    if not entries:
        raise JwkError("jwks holds no key")
    if len(entries) > MAX_KEYS:
        raise JwkError(f"jwks holds more than {MAX_KEYS} keys")
    keys: list[ClientKey] = []
    kids: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"jwks keys[{index}]"
        key = _client_key(entry, where, require_x5c)
        if key is None:
            continue
        if key.kid is not None:
            if key.kid in kids:
                raise JwkError(f"{where} repeats a kid")
            kids.add(key.kid)
        keys.append(key)
    if not keys:
        raise JwkError("jwks holds no usable signature key")
    return ClientKeySet(tuple(keys))


def _client_key(entry: object, where: str, require_x5c: bool) -> ClientKey | None:
    """One JWK; ``None`` when it is of a kind swim-as skips."""
    if not isinstance(entry, dict):
        raise JwkError(f"{where} is not an object")
    if entry.get("kty") == "oct" or _PRIVATE_MEMBERS & entry.keys():
        raise JwkError(f"{where} is not a public key")
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise JwkError(f"{where} has an invalid kid")
    use = entry.get("use")
    if use is not None and use != "sig":
        return None
    public = _public_key(entry, where)
    if public is None:
        return None
    public_key, algorithms = public
    alg = entry.get("alg")
    if alg is not None:
        if alg not in algorithms:
            raise JwkError(f"{where} has an alg that does not fit the key")
        algorithms = frozenset({alg})
    certificate = _certificate(entry, where, public_key)
    if require_x5c and certificate is None:
        raise JwkError(f"{where} has no x5c certificate")
    if require_x5c and certificate is not None and _is_authority(certificate):
        # A registered certificate joins the TLS handshake's store, where a
        # CA would become an anchor for certificates it signs.
        raise JwkError(f"{where} has a CA certificate in x5c; a client's own is needed")
    return ClientKey(kid, public_key, algorithms, certificate)


def _public_key(
    entry: dict[str, object], where: str
) -> tuple[PublicKey, frozenset[str]] | None:
    """The key of an EC, RSA or OKP JWK (RFC 7518 §6, RFC 8037 §2)."""
    kty = entry.get("kty")
    try:
        if kty == "EC":
            crv = entry.get("crv")
            if not isinstance(crv, str) or crv not in _EC_CURVES:
                return None
            curve, size, alg = _EC_CURVES[crv]
            x = _member(entry, "x", size)
            y = _member(entry, "y", size)
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            )
            return numbers.public_key(), frozenset({alg})
        if kty == "RSA":
            n = int.from_bytes(_member(entry, "n"), "big")
            e = int.from_bytes(_member(entry, "e"), "big")
            if n.bit_length() < MIN_RSA_BITS:
                raise JwkError(
                    f"{where} is an RSA key shorter than {MIN_RSA_BITS} bits"
                )
            return rsa.RSAPublicNumbers(e, n).public_key(), _RSA_ALGORITHMS
        if kty == "OKP":
            if entry.get("crv") != "Ed25519":
                return None
            x = _member(entry, "x", 32)
            return ed25519.Ed25519PublicKey.from_public_bytes(x), frozenset({"EdDSA"})
    except JwkError:
        raise
    except ValueError as err:
        raise JwkError(f"{where} has invalid key members") from err
    return None


def _member(entry: dict[str, object], name: str, size: int | None = None) -> bytes:
    value = entry.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is missing")
    raw = b64url_decode(value)
    if not raw or (size is not None and len(raw) != size):
        raise ValueError(f"{name!r} has the wrong length")
    return raw


def _certificate(
    entry: dict[str, object], where: str, public_key: PublicKey
) -> bytes | None:
    """``x5c[0]`` as DER, after checking it holds this very key (§4.7)."""
    chain = entry.get("x5c")
    if chain is None:
        return None
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        raise JwkError(f"{where} has an invalid x5c")
    try:
        # RFC 7517 §4.7: standard base64 (not base64url), no line breaks.
        der = base64.b64decode(chain[0], validate=True)
        certificate = x509.load_der_x509_certificate(der)
        presented = certificate.public_key()
    except (binascii.Error, ValueError) as err:
        raise JwkError(f"{where} has an x5c that is not a certificate") from err
    if _spki(presented) != _spki(public_key):
        raise JwkError(f"{where} key members do not match its x5c certificate")
    return der


def _is_authority(der: bytes) -> bool:
    """Whether a certificate may sign others (cA, or keyCertSign)."""
    certificate = x509.load_der_x509_certificate(der)
    try:
        if certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value.ca:
            return True
    except x509.ExtensionNotFound:
        pass
    except (ValueError, x509.DuplicateExtension):
        return True  # not parseable as a plain leaf: refuse
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    except (ValueError, x509.DuplicateExtension):
        return True
    return bool(usage.key_cert_sign)


def _spki(key: object) -> bytes:
    if not isinstance(
        key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    ):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
