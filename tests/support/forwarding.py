"""Writing forwarded-certificate headers the way proxies do, for tests.

Envoy XFCC elements, RFC 9440 byte sequences and nginx's escaped PEM, built
from real certificates made at test time.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(DER)


def escaped_pem(*certs: x509.Certificate) -> str:
    """URL-encoded PEM, as Envoy's Cert/Chain and nginx's
    $ssl_client_escaped_cert write it (every reserved character encoded)."""
    return quote(b"".join(c.public_bytes(PEM) for c in certs).decode(), safe="")


def quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def xfcc_element(
    cert: x509.Certificate | None = None,
    *,
    chain: Sequence[x509.Certificate] = (),
    by: Sequence[str] = (),
    uri: Sequence[str] | None = None,
    dns: Sequence[str] = (),
    subject: str | None = None,
    hash_hex: str | None = None,
    with_hash: bool = True,
    with_cert: bool = True,
    with_chain: bool = False,
) -> str:
    """One XFCC element, in Envoy's key order."""
    pairs = [f"By={b}" for b in by]
    if cert is not None and with_hash:
        pairs.append(f"Hash={hash_hex or hashlib.sha256(der(cert)).hexdigest()}")
    elif hash_hex is not None:
        pairs.append(f"Hash={hash_hex}")
    if cert is not None and with_cert:
        pairs.append(f'Cert="{escaped_pem(cert)}"')
    if cert is not None and with_chain:
        pairs.append(f'Chain="{escaped_pem(cert, *chain)}"')
    if subject is not None:
        pairs.append(f"Subject={quoted(subject)}")
    if uri is None and cert is not None:
        try:
            sans = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
            uri = sans.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uri = []
    pairs += [f"URI={u}" for u in uri or ()]
    pairs += [f"DNS={d}" for d in dns]
    return ";".join(pairs)


def byte_sequence(data: bytes) -> str:
    """RFC 8941 §3.3.5 byte sequence."""
    return ":" + base64.b64encode(data).decode() + ":"
