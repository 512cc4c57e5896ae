"""JWKs, JWT bundles and signed JWTs made at test time.

:func:`compact` builds a JWS by hand, so tests can make tokens that no
library would (``alg`` ``none``, an HMAC keyed with a public key, extra
header members).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_SIZES = {
    "secp256r1": ("P-256", 32),
    "secp384r1": ("P-384", 48),
    "secp521r1": ("P-521", 66),
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(public_key: Any, **members: Any) -> dict[str, Any]:
    """The public JWK of a key (RFC 7518 §6, RFC 8037 §2)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        crv, size = _SIZES[public_key.curve.name]
        numbers = public_key.public_numbers()
        jwk = {
            "kty": "EC",
            "crv": crv,
            "x": b64(numbers.x.to_bytes(size, "big")),
            "y": b64(numbers.y.to_bytes(size, "big")),
        }
    elif isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        jwk = {
            "kty": "RSA",
            "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        }
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    else:
        raise TypeError(type(public_key))
    jwk.update(members)
    return jwk


def x5c_of(certificate: x509.Certificate) -> list[str]:
    der = certificate.public_bytes(serialization.Encoding.DER)
    return [base64.b64encode(der).decode()]


def jwt_bundle(keys: Mapping[str, Any]) -> str:
    """A SPIFFE JWT bundle: kid -> public key."""
    return json.dumps(
        {
            "spiffe_sequence": 1,
            "keys": [jwk_of(k, kid=kid, use="jwt-svid") for kid, k in keys.items()],
        }
    )


def sign(
    claims: Mapping[str, Any],
    key: PrivateKey,
    *,
    alg: str,
    kid: str | None,
    headers: Mapping[str, Any] | None = None,
    typ: str | None = "JWT",
) -> str:
    """A compact JWS signed by ``key`` with ``alg`` (PyJWT's algorithms)."""
    header: dict[str, Any] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid
    if typ is not None:
        header["typ"] = typ
    header.update(headers or {})
    algorithm = jwt.get_algorithm_by_name(alg)
    return compact(header, claims, lambda data: algorithm.sign(data, key))


def compact(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    signer: Callable[[bytes], bytes],
) -> str:
    head = b64(json.dumps(dict(header)).encode())
    body = b64(json.dumps(dict(claims)).encode())
    signing_input = f"{head}.{body}".encode()
    return f"{head}.{body}.{b64(signer(signing_input))}"


def unsigned(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """``alg`` ``none``: an empty signature."""
    return compact({**header, "alg": "none"}, claims, lambda data: b"")


def hmac_with_public_key(
    header: Mapping[str, Any], claims: Mapping[str, Any], public_key: Any
) -> str:
    """HS256 keyed with the PEM of a public key (the classic confusion)."""
    secret = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return compact(
        {**header, "alg": "HS256"},
        claims,
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )


def json_serialization(token: str) -> str:
    """The same JWS in JSON serialization (RFC 7515 §7.2.2)."""
    head, body, signature = token.split(".")
    return json.dumps({"protected": head, "payload": body, "signature": signature})
