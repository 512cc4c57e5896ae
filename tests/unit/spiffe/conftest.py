"""Test PKI and JWT tooling for the SPIFFE layer, made at test time.

Nothing here is checked in key material: every key is generated when the
test session starts. Tests get the toolkit through the ``kit`` fixture and
the pinned verification time through ``now``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_usage(
    *,
    digital_signature: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
    key_encipherment: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


LEAF_USAGE = key_usage(digital_signature=True)
CA_USAGE = key_usage(key_cert_sign=True, crl_sign=True)


@dataclass(frozen=True)
class Authority:
    """A CA made by the kit: its key, certificate and subject name."""

    key: CertificateIssuerPrivateKeyTypes
    cert: x509.Certificate

    @property
    def name(self) -> x509.Name:
        return self.cert.subject


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "swim-as tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class Kit:
    """Makes CAs, SVIDs, bundle documents and signed JWTs for tests."""

    def __init__(self) -> None:
        self._rsa: dict[int, rsa.RSAPrivateKey] = {}

    # Keys ---------------------------------------------------------------

    def ec_key(
        self, curve: ec.EllipticCurve | None = None
    ) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(curve or ec.SECP256R1())

    def rsa_key(self, bits: int = 2048) -> rsa.RSAPrivateKey:
        # RSA generation is slow; one key per size serves the session.
        if bits not in self._rsa:
            self._rsa[bits] = rsa.generate_private_key(65537, bits)
        return self._rsa[bits]

    # Certificates -------------------------------------------------------

    def certificate(
        self,
        *,
        subject: x509.Name,
        public_key: CertificatePublicKeyTypes,
        issuer_name: x509.Name,
        issuer_key: CertificateIssuerPrivateKeyTypes,
        ca: bool | None,
        usage: x509.KeyUsage | None,
        usage_critical: bool = True,
        uris: Iterable[str] = (),
        dns_names: Iterable[str] = (),
        san_critical: bool = False,
        eku: list[x509.ObjectIdentifier] | None = None,
        not_before: datetime = NOW - HOUR,
        not_after: datetime = NOW + HOUR,
        path_length: int | None = None,
        aki: bool = True,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
            )
        )
        if aki:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer_key.public_key()
                ),
                critical=False,
            )
        if ca is not None:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                critical=True,
            )
        if usage is not None:
            builder = builder.add_extension(usage, critical=usage_critical)
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(u) for u in uris
        ]
        names += [x509.DNSName(d) for d in dns_names]
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=san_critical
            )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        algorithm = (
            None
            if isinstance(issuer_key, ed25519.Ed25519PrivateKey)
            else hashes.SHA256()
        )
        return builder.sign(issuer_key, algorithm)

    def root(
        self,
        trust_domain: str = "example.org",
        *,
        common_name: str | None = None,
        key: CertificateIssuerPrivateKeyTypes | None = None,
        uri: bool = True,
        **overrides: Any,
    ) -> Authority:
        key = key or self.ec_key()
        name = _name(common_name or f"{trust_domain} root")
        settings: dict[str, Any] = {
            "ca": True,
            "usage": CA_USAGE,
            "uris": [f"spiffe://{trust_domain}"] if uri else [],
            "aki": False,
            "not_before": NOW - 24 * HOUR,
            "not_after": NOW + 24 * HOUR,
        }
        settings.update(overrides)
        cert = self.certificate(
            subject=name,
            public_key=key.public_key(),
            issuer_name=name,
            issuer_key=key,
            **settings,
        )
        return Authority(key, cert)

    def intermediate(
        self,
        issuer: Authority,
        trust_domain: str | None = "example.org",
        *,
        common_name: str = "intermediate",
        **overrides: Any,
    ) -> Authority:
        key = self.ec_key()
        settings: dict[str, Any] = {
            "ca": True,
            "usage": CA_USAGE,
            "uris": [f"spiffe://{trust_domain}"] if trust_domain else [],
            "not_before": NOW - 12 * HOUR,
            "not_after": NOW + 12 * HOUR,
        }
        settings.update(overrides)
        cert = self.certificate(
            subject=_name(common_name),
            public_key=key.public_key(),
            issuer_name=issuer.name,
            issuer_key=issuer.key,
            **settings,
        )
        return Authority(key, cert)

    def leaf(
        self,
        issuer: Authority,
        spiffe_id: str | None = "spiffe://example.org/ns/prod/sa/api",
        *,
        key: Any = None,
        **overrides: Any,
    ) -> x509.Certificate:
        key = key or self.ec_key()
        settings: dict[str, Any] = {
            "ca": False,
            "usage": LEAF_USAGE,
            "uris": [spiffe_id] if spiffe_id else [],
        }
        settings.update(overrides)
        return self.certificate(
            subject=_name("workload"),
            public_key=key.public_key(),
            issuer_name=issuer.name,
            issuer_key=issuer.key,
            **settings,
        )

    # Bundle documents ---------------------------------------------------

    @staticmethod
    def pem(*certs: x509.Certificate) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    @staticmethod
    def public_jwk(public_key: Any) -> dict[str, Any]:
        """The RFC 7517 members of a public key."""
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            size = (public_key.curve.key_size + 7) // 8
            numbers = public_key.public_numbers()
            crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
            return {
                "kty": "EC",
                "crv": crv.get(public_key.curve.name, public_key.curve.name),
                "x": b64url(numbers.x.to_bytes(size, "big")),
                "y": b64url(numbers.y.to_bytes(size, "big")),
            }
        if isinstance(public_key, rsa.RSAPublicKey):
            n = public_key.public_numbers().n
            e = public_key.public_numbers().e
            return {
                "kty": "RSA",
                "n": b64url(n.to_bytes((n.bit_length() + 7) // 8, "big")),
                "e": b64url(e.to_bytes(3, "big")),
            }
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            raw = public_key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        raise TypeError(type(public_key))

    def x509_entry(self, cert: x509.Certificate, **extra: Any) -> dict[str, Any]:
        entry = self.public_jwk(cert.public_key())
        entry["use"] = "x509-svid"
        entry["x5c"] = [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        ]
        entry.update(extra)
        return entry

    def jwt_entry(
        self, public_key: Any, kid: str | None, **extra: Any
    ) -> dict[str, Any]:
        entry = self.public_jwk(public_key)
        entry["use"] = "jwt-svid"
        if kid is not None:
            entry["kid"] = kid
        entry.update(extra)
        return entry

    @staticmethod
    def bundle_json(
        keys: list[Any], *, sequence: Any = 7, refresh_hint: Any = 300
    ) -> bytes:
        document: dict[str, Any] = {"keys": keys}
        if sequence is not None:
            document["spiffe_sequence"] = sequence
        if refresh_hint is not None:
            document["spiffe_refresh_hint"] = refresh_hint
        return json.dumps(document).encode()

    # JWTs ---------------------------------------------------------------

    @staticmethod
    def encode_part(value: Any) -> str:
        return b64url(json.dumps(value, separators=(",", ":")).encode())

    def sign_jwt(
        self, header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str
    ) -> str:
        """Sign a compact JWS exactly as given (no library defaults).

        ``alg`` picks the signature algorithm independently of the header,
        so tests can pair any header with any key.
        """
        signing_input = f"{self.encode_part(header)}.{self.encode_part(claims)}"
        signature = self.signature(signing_input.encode(), key, alg)
        return f"{signing_input}.{b64url(signature)}"

    @staticmethod
    def signature(data: bytes, key: Any, alg: str) -> bytes:
        digest = {
            "256": hashes.SHA256(),
            "384": hashes.SHA384(),
            "512": hashes.SHA512(),
        }
        if alg.startswith("ES"):
            der = key.sign(data, ec.ECDSA(digest[alg[2:]]))
            r, s = decode_dss_signature(der)
            size = (key.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if alg.startswith("RS"):
            return bytes(key.sign(data, padding.PKCS1v15(), digest[alg[2:]]))
        if alg.startswith("PS"):
            hash_alg = digest[alg[2:]]
            pss = padding.PSS(
                mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size
            )
            return bytes(key.sign(data, pss, hash_alg))
        if alg == "EdDSA":
            return bytes(key.sign(data))
        raise ValueError(alg)


@pytest.fixture(scope="session")
def kit() -> Kit:
    """The session's test PKI and JWT toolkit."""
    return Kit()


@pytest.fixture
def now() -> datetime:
    """The pinned verification time every test PKI is built around."""
    return NOW
