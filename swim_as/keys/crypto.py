"""Signing-key material: generation, sealing under the KEK, JWK export (D7).

Private keys are stored sealed with AES-256-GCM under the key-encryption key
(KEK) from configuration; the key id is the associated data, so a sealed key
cannot be moved to another row unnoticed.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_NONCE = 12


class KeyDecryptionError(Exception):
    """The KEK does not open a stored key (wrong KEK, or tampered row)."""


def generate_private_key(alg: str) -> PrivateKey:
    """A new key for a JWS algorithm (RFC 7518 §3; RFC 8037 for EdDSA)."""
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported signing algorithm {alg!r}")


def seal(kek: bytes, kid: str, key: PrivateKey) -> bytes:
    """Encrypt a private key (PKCS#8 DER) under the KEK."""
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(kek).encrypt(nonce, der, kid.encode())


def unseal(kek: bytes, kid: str, sealed: bytes) -> PrivateKey:
    """Decrypt a sealed private key.

    Raises:
        KeyDecryptionError: the KEK is wrong or the row was altered.
    """
    try:
        der = AESGCM(kek).decrypt(sealed[:_NONCE], sealed[_NONCE:], kid.encode())
    except InvalidTag as err:
        raise KeyDecryptionError(
            f"the key-encryption key does not open signing key {kid}"
        ) from err
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise KeyDecryptionError(f"signing key {kid} has an unsupported type")
    return key


def public_jwk(key: PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK (RFC 7517 §4) with ``kid``, ``alg`` and ``use``."""
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    for private_member in ("d", "p", "q", "dp", "dq", "qi", "oth", "k"):
        jwk.pop(private_member, None)
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, used as the key id."""
    required = {
        "EC": ("crv", "kty", "x", "y"),
        "RSA": ("e", "kty", "n"),
        "OKP": ("crv", "kty", "x"),
    }[jwk["kty"]]
    canonical = "{" + ",".join(f'"{m}":"{jwk[m]}"' for m in required) + "}"
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical.encode())
    return base64.urlsafe_b64encode(digest.finalize()).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key, ready to store."""

    kid: str
    alg: str
    private_key: PrivateKey
    jwk: dict[str, Any]


def new_key(alg: str) -> NewKey:
    """Generate a key and name it by its RFC 7638 thumbprint."""
    key = generate_private_key(alg)
    draft = public_jwk(key, "", alg)
    kid = jwk_thumbprint(draft)
    return NewKey(kid, alg, key, public_jwk(key, kid, alg))
