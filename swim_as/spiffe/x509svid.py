"""X.509-SVID verification for client authentication.

Implements SPIFFE X509-SVID §4-§5 with the X.509 path validation of
``cryptography.x509.verification``; every call into that API lives in this
module. :func:`verify_x509_svid` checks, in order:

1. the leaf has exactly one URI SAN, a strict SPIFFE ID (decision D4) with a
   non-root path (§2, §5.2);
2. BasicConstraints is present with ``cA`` false (§4.1, §5.2; D13);
3. KeyUsage is present and critical, with ``digitalSignature`` and with
   neither ``keyCertSign`` nor ``cRLSign`` (§4.3, §5.2; D13);
4. an ExtendedKeyUsage, when present, includes ``clientAuth`` (§4.4);
5. the leaf key is EC P-256/P-384/P-521, RSA of at least 2048 bits or
   Ed25519 (swim-as binds tokens to this key);
6. the leaf is valid at the injected time ``at``;
7. RFC 5280 path validation (§5.1) against the bundle of the trust domain
   named in the leaf's SPIFFE ID, and no other anchor: never the system
   trust store (D3);
8. no signing certificate on the verified path names another trust domain
   in a ``spiffe://`` URI SAN (§4.1 lets signing certificates carry the
   trust domain's ID; they need not).

Steps 1-6 run first in Python so each refusal has its own ``reason``.

Policy given to cryptography's verifier, and why:

- End-entity: ``ExtensionPolicy.permit_all()`` plus the SPIFFE leaf rules
  above as extension validators (so the verifier itself enforces them too)
  and no NameConstraints on a leaf. ``webpki_defaults_ee()`` does not fit
  SVIDs: it requires an AuthorityKeyIdentifier, which SPIFFE does not; it
  refuses a critical SAN when the subject is non-empty, which RFC 5280 and
  SPIFFE allow; and it knows nothing of URI SANs. Like webpki, an EKU
  without ``clientAuth`` is refused and a missing EKU is accepted (§4.4
  says SHOULD be present; ``serverAuth`` matters only to servers). A
  non-critical SAN on a leaf with an empty subject (against §3.1 and
  RFC 5280 §4.2.1.6) is an issuer's slip that §5 does not ask validators
  to refuse, so it is accepted.
- CA: ``webpki_defaults_ca()`` (BasicConstraints critical with ``cA`` true,
  path length, name constraints, AKI format, EKU chaining to
  ``clientAuth`` or anyEKU) with KeyUsage tightened to critical with
  ``keyCertSign``, as SPIFFE X509-SVID §4.3 requires of every signing
  certificate. It applies to the bundle's authorities too. cryptography
  always requires ``cA`` true on issuers, so a non-CA intermediate never
  chains.
- Both: cryptography's own checks stay in force, among them validity at
  ``at`` for every certificate, the issuer keys and signatures it accepts
  (ECDSA P-256/P-384/P-521 and RSA of at least 2048 bits, with SHA-2;
  no Ed25519 CAs) and the refusal of unknown critical extensions.
  cryptography does not check revocation; SPIFFE relies on short-lived
  SVIDs instead.

Step 8 also covers the bundle authority at the end of the path: a root
that names another trust domain is a sign of a mixed-up bundle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from swim_as.spiffe import _base64url
from swim_as.spiffe.bundle import MIN_RSA_BITS, X509Bundle
from swim_as.spiffe.errors import SpiffeIdError, X509SvidError, quote
from swim_as.spiffe.ids import SpiffeId, TrustDomain

__all__ = [
    "MAX_INTERMEDIATES",
    "VerifiedX509Svid",
    "thumbprint",
    "verify_x509_svid",
]

# SPIRE chains are one to three signing certificates deep; a longer list
# only costs path building time.
MAX_INTERMEDIATES = 16
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_E = TypeVar("_E", bound=x509.ExtensionType)


@dataclass(frozen=True, slots=True)
class VerifiedX509Svid:
    """An X.509-SVID that passed :func:`verify_x509_svid`.

    ``chain`` is the verified path, leaf first, ending at the bundle
    authority. ``not_after`` is the leaf's (aware, UTC). ``thumbprint`` is
    the leaf's RFC 8705 §3.1 ``x5t#S256``.
    """

    spiffe_id: SpiffeId
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    not_after: datetime
    thumbprint: str


def thumbprint(certificate: x509.Certificate) -> str:
    """RFC 8705 §3.1 ``x5t#S256``: base64url, no padding, of SHA-256(DER)."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return _base64url.encode(hashlib.sha256(der).digest())


def verify_x509_svid(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    bundle_for: Callable[[TrustDomain], X509Bundle | None],
    at: datetime,
) -> VerifiedX509Svid:
    """Verify a client's X.509-SVID (SPIFFE X509-SVID §5) at time ``at``.

    ``intermediates`` are the certificates the client sent besides the
    leaf. ``bundle_for`` is asked only for the trust domain named in the
    leaf's SPIFFE ID. ``at`` must be timezone-aware.

    Raises:
        X509SvidError: the certificate is not a valid SVID of a trusted
            trust domain at ``at``; ``reason`` says why.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("the verification time must be timezone-aware")
    label = f"X.509-SVID (serial {leaf.serial_number:#x})"
    try:
        spiffe_id = _check_leaf(leaf)
        label = f"X.509-SVID {quote(str(spiffe_id))}"
        _check_validity(leaf, at)
    except _Refusal as refusal:
        raise refusal.as_error(label) from refusal.__cause__

    bundle = bundle_for(spiffe_id.trust_domain)
    if (
        bundle is None
        or not bundle.authorities
        or bundle.trust_domain != spiffe_id.trust_domain
    ):
        raise X509SvidError(
            f"invalid {label}: no X.509 bundle for trust domain "
            f"{quote(spiffe_id.trust_domain.name)}",
            reason="no_bundle",
        )

    chain = _validate_path(leaf, intermediates, bundle, at, label)
    try:
        _check_signing_certificates(chain[1:], spiffe_id.trust_domain)
    except _Refusal as refusal:
        raise refusal.as_error(label) from refusal.__cause__
    return VerifiedX509Svid(
        spiffe_id=spiffe_id,
        leaf=leaf,
        chain=chain,
        not_after=leaf.not_valid_after_utc,
        thumbprint=thumbprint(leaf),
    )


def _validate_path(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    bundle: X509Bundle,
    at: datetime,
    label: str,
) -> tuple[x509.Certificate, ...]:
    """RFC 5280 path validation to ``bundle`` only (X509-SVID §5.1, D3)."""
    if len(intermediates) > MAX_INTERMEDIATES:
        raise X509SvidError(
            f"invalid {label}: {len(intermediates)} intermediates sent, "
            f"at most {MAX_INTERMEDIATES} are read",
            reason="chain",
        )
    verifier = (
        PolicyBuilder()
        .store(Store(list(bundle.authorities)))
        .time(at)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, list(intermediates))
    except VerificationError as err:
        reaches = _reaches_authority([leaf, *intermediates], bundle.authorities)
        raise X509SvidError(
            f"invalid {label}: path validation to the bundle of "
            f"{quote(bundle.trust_domain.name)} failed: {quote(str(err), 300)}",
            reason="chain" if reaches else "unknown_authority",
        ) from err
    return tuple(verified.chain)


class _Refusal(Exception):
    """Carries a rule violation to the place that names the certificate."""

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason

    def as_error(self, label: str) -> X509SvidError:
        return X509SvidError(f"invalid {label}: {self.detail}", reason=self.reason)


def _check_leaf(leaf: x509.Certificate) -> SpiffeId:
    """Apply the SPIFFE leaf rules (steps 1-5 of the module docstring)."""
    try:
        extensions = leaf.extensions
    except (ValueError, x509.DuplicateExtension) as err:
        raise _Refusal("its extensions do not parse", "malformed") from err
    san = _find(extensions, x509.SubjectAlternativeName)
    spiffe_id = _leaf_spiffe_id(san.value if san else None)
    constraints = _find(extensions, x509.BasicConstraints)
    _leaf_basic_constraints(constraints.value if constraints else None)
    usage = _find(extensions, x509.KeyUsage)
    if usage is not None and not usage.critical:
        raise _Refusal("keyUsage must be critical", "key_usage")
    _leaf_key_usage(usage.value if usage else None)
    extended = _find(extensions, x509.ExtendedKeyUsage)
    _leaf_extended_key_usage(extended.value if extended else None)
    _check_leaf_key(leaf)
    return spiffe_id


def _find(extensions: x509.Extensions, kind: type[_E]) -> x509.Extension[_E] | None:
    try:
        return extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _leaf_spiffe_id(san: x509.SubjectAlternativeName | None) -> SpiffeId:
    """Exactly one URI SAN, a non-root SPIFFE ID (X509-SVID §2, §5.2)."""
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san else []
    if len(uris) != 1:
        raise _Refusal(
            f"a leaf must have exactly one URI SAN, it has {len(uris)}",
            "uri_san_count",
        )
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except SpiffeIdError as err:
        raise _Refusal(
            f"the URI SAN is not a SPIFFE ID: {err}", "invalid_spiffe_id"
        ) from err
    if spiffe_id.is_root:
        raise _Refusal(
            f"the URI SAN {quote(uris[0])} is a trust domain's root ID, "
            "not a workload's",
            "root_id",
        )
    return spiffe_id


def _leaf_basic_constraints(constraints: x509.BasicConstraints | None) -> None:
    """BasicConstraints present, ``cA`` false (X509-SVID §4.1, §5.2)."""
    if constraints is None:
        raise _Refusal("a leaf must carry basicConstraints", "basic_constraints")
    if constraints.ca:
        raise _Refusal("a CA certificate cannot be a leaf SVID", "ca_leaf")


def _leaf_key_usage(usage: x509.KeyUsage | None) -> None:
    """KeyUsage with digitalSignature, no certificate or CRL signing (§4.3)."""
    if usage is None:
        raise _Refusal("a leaf must carry keyUsage", "key_usage")
    if not usage.digital_signature:
        raise _Refusal("keyUsage lacks digitalSignature", "key_usage")
    if usage.key_cert_sign:
        raise _Refusal("keyUsage of a leaf has keyCertSign", "key_usage")
    if usage.crl_sign:
        raise _Refusal("keyUsage of a leaf has cRLSign", "key_usage")


def _leaf_extended_key_usage(usage: x509.ExtendedKeyUsage | None) -> None:
    """An EKU, when present, allows client authentication (X509-SVID §4.4)."""
    if usage is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise _Refusal("extendedKeyUsage lacks clientAuth", "ext_key_usage")


def _check_leaf_key(leaf: x509.Certificate) -> None:
    try:
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as err:
        raise _Refusal("the leaf key is not supported", "leaf_key") from err
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise _Refusal(
                f"an RSA leaf key of {key.key_size} bits is too short", "leaf_key"
            )
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _EC_CURVES):
            raise _Refusal(f"EC curve {key.curve.name} is not supported", "leaf_key")
        return
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise _Refusal(f"a {type(key).__name__} leaf key is not supported", "leaf_key")


def _check_validity(leaf: x509.Certificate, at: datetime) -> None:
    """RFC 5280 §4.1.2.5, with the leaf's own reasons."""
    if at < leaf.not_valid_before_utc:
        raise _Refusal(
            f"not valid before {leaf.not_valid_before_utc.isoformat()}",
            "not_yet_valid",
        )
    if at > leaf.not_valid_after_utc:
        raise _Refusal(f"expired at {leaf.not_valid_after_utc.isoformat()}", "expired")


def _check_signing_certificates(
    signing: Sequence[x509.Certificate], trust_domain: TrustDomain
) -> None:
    """Refuse a signing certificate naming another trust domain (§4.1)."""
    for certificate in signing:
        try:
            san = _find(certificate.extensions, x509.SubjectAlternativeName)
        except (ValueError, x509.DuplicateExtension) as err:
            raise _Refusal(
                "a signing certificate's extensions do not parse", "malformed"
            ) from err
        if san is None:
            continue
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
            if not uri.lower().startswith("spiffe:"):
                continue
            try:
                named = SpiffeId.parse(uri)
            except SpiffeIdError as err:
                raise _Refusal(
                    f"a signing certificate has an invalid SPIFFE ID: {err}",
                    "invalid_spiffe_id",
                ) from err
            if named.trust_domain != trust_domain:
                raise _Refusal(
                    f"a signing certificate names trust domain "
                    f"{quote(named.trust_domain.name)}",
                    "wrong_trust_domain",
                )


def _reaches_authority(
    presented: Sequence[x509.Certificate], authorities: Sequence[x509.Certificate]
) -> bool:
    """Whether any presented certificate is, or is signed by, an authority.

    Only labels a failed verification: false means the client's chain
    cannot lead to this trust domain's bundle at all ("unknown_authority",
    e.g. a certificate of another trust domain); true means a path exists
    but breaks a rule ("chain", e.g. a non-CA or expired intermediate).
    """
    anchors = {a.public_bytes(serialization.Encoding.DER) for a in authorities}
    for certificate in presented:
        if certificate.public_bytes(serialization.Encoding.DER) in anchors:
            return True
        for authority in authorities:
            try:
                certificate.verify_directly_issued_by(authority)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return True
    return False


# Extension validators run inside cryptography's verifier, where a refusal
# becomes its VerificationError. The leaf rules already ran in _check_leaf,
# which names the reason; here they are a second line of defence that keeps
# the verifier's own answer in line with SPIFFE.


def _validate_leaf_san(
    _policy: Policy, _cert: x509.Certificate, san: x509.SubjectAlternativeName
) -> None:
    _leaf_spiffe_id(san)


def _validate_leaf_basic_constraints(
    _policy: Policy, _cert: x509.Certificate, constraints: x509.BasicConstraints
) -> None:
    _leaf_basic_constraints(constraints)


def _validate_leaf_key_usage(
    _policy: Policy, _cert: x509.Certificate, usage: x509.KeyUsage
) -> None:
    _leaf_key_usage(usage)


def _validate_leaf_extended_key_usage(
    _policy: Policy, _cert: x509.Certificate, usage: x509.ExtendedKeyUsage | None
) -> None:
    _leaf_extended_key_usage(usage)


def _validate_ca_key_usage(
    _policy: Policy, _cert: x509.Certificate, usage: x509.KeyUsage
) -> None:
    if not usage.key_cert_sign:
        raise _Refusal("keyUsage of a signing certificate lacks keyCertSign", "chain")


_EE_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, _validate_leaf_san
    )
    .require_present(
        x509.BasicConstraints, Criticality.AGNOSTIC, _validate_leaf_basic_constraints
    )
    .require_present(x509.KeyUsage, Criticality.CRITICAL, _validate_leaf_key_usage)
    .may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _validate_leaf_extended_key_usage
    )
    .require_not_present(x509.NameConstraints)
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca().require_present(
    x509.KeyUsage, Criticality.CRITICAL, _validate_ca_key_usage
)
