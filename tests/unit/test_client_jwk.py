"""A client's JWK Set: public keys only, algs that fit, x5c that matches."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from swim_as.clientauth.jwk import JwkError, parse_client_jwks
from tests.support.jose import b64, jwk_of, x5c_of

P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
RSA = rsa.generate_private_key(65537, 2048)
RSA_SHORT = rsa.generate_private_key(65537, 1024)
ED = ed25519.Ed25519PrivateKey.generate()


def certificate(key: Any) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_supported_keys_and_algorithms() -> None:
    keys = parse_client_jwks(
        {
            "keys": [
                jwk_of(P256.public_key(), kid="ec"),
                jwk_of(P384.public_key(), kid="ec384"),
                jwk_of(RSA.public_key(), kid="rsa"),
                jwk_of(ED.public_key(), kid="ed"),
                jwk_of(RSA.public_key(), kid="rsa-ps", alg="PS256"),
            ]
        },
        require_x5c=False,
    )
    by_kid = {k.kid: k.algorithms for k in keys}
    assert by_kid["ec"] == {"ES256"}
    assert by_kid["ec384"] == {"ES384"}
    assert by_kid["rsa"] == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert by_kid["ed"] == {"EdDSA"}
    assert by_kid["rsa-ps"] == {"PS256"}


def test_unknown_kinds_skipped_but_one_needed() -> None:
    keys = parse_client_jwks(
        {
            "keys": [
                {"kty": "XYZ", "kid": "future"},
                jwk_of(P256.public_key(), kid="enc", use="enc"),
                {"kty": "OKP", "crv": "X25519", "x": b64(b"x" * 32)},
                jwk_of(P256.public_key(), kid="sig", use="sig"),
            ]
        },
        require_x5c=False,
    )
    assert [k.kid for k in keys] == ["sig"]
    with pytest.raises(JwkError, match="no usable signature key"):
        parse_client_jwks({"keys": [{"kty": "XYZ"}]}, require_x5c=False)


def test_x5c_matches_and_is_returned() -> None:
    cert = certificate(P256)
    keys = parse_client_jwks(
        {"keys": [jwk_of(P256.public_key(), x5c=x5c_of(cert))]}, require_x5c=True
    )
    assert keys.certificates() == [cert.public_bytes(serialization.Encoding.DER)]


PRIVATE = jwk_of(P256.public_key())
PRIVATE["d"] = b64(P256.private_numbers().private_value.to_bytes(32, "big"))


@pytest.mark.parametrize(
    "document,message",
    [
        ([], "JWK Set object"),
        ({"keys": {}}, "JWK Set object"),
        ({"keys": []}, "holds no key"),
        ({"keys": [jwk_of(P256.public_key())] * 40}, "more than 32 keys"),
        ({"keys": ["x"]}, r"keys\[0\] is not an object"),
        ({"keys": [PRIVATE]}, "is not a public key"),
        ({"keys": [{**jwk_of(RSA.public_key()), "p": "AQAB"}]}, "is not a public key"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "is not a public key"),
        ({"keys": [{"kty": "oct"}]}, "is not a public key"),
        (
            {"keys": [jwk_of(P256.public_key(), alg="HS256")]},
            "alg that does not fit",
        ),
        (
            {"keys": [jwk_of(P256.public_key(), alg="ES384")]},
            "alg that does not fit",
        ),
        ({"keys": [jwk_of(RSA_SHORT.public_key())]}, "shorter than 2048"),
        (
            {"keys": [{**jwk_of(P256.public_key()), "x": "not base64!"}]},
            "invalid key members",
        ),
        (
            {"keys": [{**jwk_of(P256.public_key()), "y": b64(b"\x01" * 32)}]},
            "invalid key members",
        ),
        (
            {
                "keys": [
                    jwk_of(P256.public_key(), kid="a"),
                    jwk_of(ED.public_key(), kid="a"),
                ]
            },
            "repeats a kid",
        ),
        ({"keys": [jwk_of(P256.public_key(), kid=7)]}, "invalid kid"),
        (
            {"keys": [jwk_of(P256.public_key(), x5c=x5c_of(certificate(P384)))]},
            "do not match its x5c",
        ),
        ({"keys": [jwk_of(P256.public_key(), x5c=["%%%"])]}, "not a certificate"),
        (
            {
                "keys": [
                    jwk_of(P256.public_key(), x5c=[base64.b64encode(b"junk").decode()])
                ]
            },
            "not a certificate",
        ),
        ({"keys": [jwk_of(P256.public_key(), x5c=[])]}, "invalid x5c"),
    ],
    ids=[
        "not-object",
        "keys-not-list",
        "empty",
        "too-many",
        "entry-not-object",
        "ec-private",
        "rsa-private",
        "oct-with-k",
        "oct",
        "hmac-alg",
        "wrong-curve-alg",
        "short-rsa",
        "bad-base64",
        "point-off-curve",
        "duplicate-kid",
        "kid-not-string",
        "x5c-other-key",
        "x5c-not-base64",
        "x5c-not-der",
        "x5c-empty",
    ],
)
def test_refused(document: Any, message: str) -> None:
    with pytest.raises(JwkError, match=message):
        parse_client_jwks(document, require_x5c=False)


def test_self_signed_needs_x5c() -> None:
    with pytest.raises(JwkError, match="no x5c certificate"):
        parse_client_jwks({"keys": [jwk_of(P256.public_key())]}, require_x5c=True)


@pytest.mark.parametrize(
    "ca,cert_sign",
    [(True, True), (True, False), (False, True)],
    ids=["ca", "ca-flag-only", "key-cert-sign-only"],
)
def test_self_signed_refuses_a_ca_certificate(ca: bool, cert_sign: bool) -> None:
    """A registered certificate joins the handshake store: a CA there would
    anchor every certificate it signs."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "would-be-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(P256.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(P256, hashes.SHA256())
    )
    jwk = {**jwk_of(P256.public_key()), "x5c": x5c_of(cert)}
    with pytest.raises(JwkError, match="CA certificate"):
        parse_client_jwks({"keys": [jwk]}, require_x5c=True)
