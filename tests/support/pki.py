"""Test PKI for integration tests: trust domains, SVIDs and broken variants.

Every key is generated when a test session needs it and written to a
temporary folder; nothing here is checked in.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.UTC


def x5t_s256(cert: x509.Certificate) -> str:
    der = cert.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "swim-as tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _usage(
    *,
    leaf: bool,
    digital_signature: bool = True,
    cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature if leaf else False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=leaf,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Svid:
    """A leaf certificate with its key and chain files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path
    chain_path: Path
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def x5t(self) -> str:
        return x5t_s256(self.cert)

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc


@dataclass
class Authority:
    """A CA of a trust domain (or of no trust domain, for the web PKI)."""

    folder: Path
    name: str
    trust_domain: str | None
    parent: Authority | None = None
    is_ca: bool = True
    key: ec.EllipticCurvePrivateKey = field(init=False)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{self.name} CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(
                x509.BasicConstraints(ca=self.is_ca, path_length=None), critical=True
            )
            .add_extension(
                _usage(leaf=not self.is_ca, cert_sign=self.is_ca, crl_sign=self.is_ca),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if self.trust_domain:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]
                ),
                critical=False,
            )
        if self.parent is None:
            self.cert = builder.issuer_name(_name(f"{self.name} CA")).sign(
                self.key, hashes.SHA256()
            )
        else:
            self.cert = (
                builder.issuer_name(self.parent.cert.subject)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(
                        self.parent.key.public_key()
                    ),
                    critical=False,
                )
                .sign(self.parent.key, hashes.SHA256())
            )
        self.bundle_path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))

    @property
    def root(self) -> x509.Certificate:
        return self.cert if self.parent is None else self.parent.root

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """Intermediates a leaf of this CA sends (root excluded)."""
        if self.parent is None:
            return ()
        return (self.cert, *self.parent.chain)

    @property
    def bundle_path(self) -> Path:
        return self.folder / f"{self.name}.bundle.pem"

    def issue(
        self,
        stem: str,
        uris: list[str] | None = None,
        *,
        dns: list[str] | None = None,
        ips: list[str] | None = None,
        is_ca: bool = False,
        digital_signature: bool = True,
        key_cert_sign: bool = False,
        crl_sign: bool = False,
        key_usage: bool = True,
        eku: list[x509.ObjectIdentifier] | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Svid:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(stem))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(hours=1))
            .add_extension(
                x509.BasicConstraints(ca=is_ca, path_length=None), critical=True
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()
                ),
                critical=False,
            )
        )
        if key_usage:
            builder = builder.add_extension(
                _usage(
                    leaf=True,
                    digital_signature=digital_signature,
                    cert_sign=key_cert_sign,
                    crl_sign=crl_sign,
                ),
                critical=True,
            )
        usages = (
            eku
            if eku is not None
            else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        if usages:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(usages), critical=False
            )
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(u) for u in uris or []
        ]
        names += [x509.DNSName(d) for d in dns or []]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return write_svid(self.folder, stem, cert, key, self.chain)


def write_svid(
    folder: Path,
    stem: str,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    chain: tuple[x509.Certificate, ...] = (),
) -> Svid:
    pem = serialization.Encoding.PEM
    cert_path = folder / f"{stem}.pem"
    key_path = folder / f"{stem}.key.pem"
    chain_path = folder / f"{stem}.chain.pem"
    cert_path.write_bytes(cert.public_bytes(pem))
    chain_path.write_bytes(
        cert.public_bytes(pem) + b"".join(c.public_bytes(pem) for c in chain)
    )
    key_path.write_bytes(
        key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(key_path, 0o600)
    return Svid(cert, key, cert_path, key_path, chain_path, chain)


def self_signed(
    folder: Path, stem: str, *, uri: str | None = None, dns: str | None = None
) -> Svid:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(UTC)
    names: list[x509.GeneralName] = []
    if uri:
        names.append(x509.UniformResourceIdentifier(uri))
    if dns:
        names.append(x509.DNSName(dns))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(_name(stem))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(leaf=True), critical=True)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    return write_svid(folder, stem, builder.sign(key, hashes.SHA256()), key)
