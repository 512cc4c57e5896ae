"""X.509-SVID verification vectors (SPIFFE X509-SVID §4-§5, D3, D13)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from swim_as.spiffe import x509svid
from swim_as.spiffe.bundle import X509Bundle
from swim_as.spiffe.errors import SpiffeIdError, X509SvidError
from swim_as.spiffe.ids import SpiffeId, TrustDomain
from swim_as.spiffe.x509svid import thumbprint, verify_x509_svid

TD = TrustDomain("example.org")
OTHER = TrustDomain("other.org")
WORKLOAD = "spiffe://example.org/ns/prod/sa/api"
HOUR = timedelta(hours=1)


class Pki:
    """Two trust domains, an intermediate, and a CA trusted by nobody."""

    def __init__(self, kit: Any, now: datetime) -> None:
        self.kit = kit
        self.now = now
        self.root = kit.root("example.org")
        self.intermediate = kit.intermediate(self.root)
        self.other_root = kit.root("other.org")
        # Same subject name as example.org's root, but another key.
        self.impostor_root = kit.root("example.org", common_name="example.org root")
        self.rogue_root = kit.root("example.org", common_name="rogue")
        self.bundles = {
            TD: X509Bundle(TD, (self.root.cert,)),
            OTHER: X509Bundle(OTHER, (self.other_root.cert,)),
        }

    def bundle_for(self, trust_domain: TrustDomain) -> X509Bundle | None:
        return self.bundles.get(trust_domain)


@pytest.fixture
def pki(kit: Any, now: datetime) -> Pki:
    return Pki(kit, now)


Svid = tuple[x509.Certificate, list[x509.Certificate]]
Build = Callable[[Pki], Svid]


def _leaf(pki: Pki, **overrides: Any) -> Svid:
    return pki.kit.leaf(pki.root, WORKLOAD, **overrides), []


def _under(pki: Pki, intermediate: Any) -> Svid:
    return pki.kit.leaf(intermediate, WORKLOAD), [intermediate.cert]


def _two_intermediates(pki: Pki) -> Svid:
    second = pki.kit.intermediate(pki.intermediate, common_name="second")
    return pki.kit.leaf(second, WORKLOAD), [second.cert, pki.intermediate.cert]


def _own_root(pki: Pki) -> Svid:
    # A root without a SPIFFE URI SAN, in a bundle of its own.
    root = pki.kit.root("example.org", common_name="plain root", uri=False)
    pki.bundles[TrustDomain("plain.example")] = X509Bundle(
        TrustDomain("plain.example"), (root.cert,)
    )
    return pki.kit.leaf(root, "spiffe://plain.example/w"), []


def _ku(**flags: bool) -> x509.KeyUsage:
    values = {
        "digital_signature": False,
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "key_cert_sign": False,
        "crl_sign": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    values.update(flags)
    return x509.KeyUsage(**values)


def _path_length_exceeded(pki: Pki) -> Svid:
    root = pki.kit.root("strict.example", path_length=0)
    pki.bundles[TrustDomain("strict.example")] = X509Bundle(
        TrustDomain("strict.example"), (root.cert,)
    )
    intermediate = pki.kit.intermediate(root, "strict.example")
    return pki.kit.leaf(intermediate, "spiffe://strict.example/w"), [intermediate.cert]


def _leaf_with_name_constraints(pki: Pki) -> x509.Certificate:
    key = pki.kit.ec_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(pki.root.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pki.now - HOUR)
        .not_valid_after(pki.now + HOUR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_ku(digital_signature=True), True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(WORKLOAD)]),
            True,
        )
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName("example.org")],
                excluded_subtrees=None,
            ),
            True,
        )
    )
    return builder.sign(pki.root.key, hashes.SHA256())


VALID = [
    ("leaf-under-root", lambda p: _leaf(p)),
    (
        "leaf-under-client-sent-intermediate",
        lambda p: (p.kit.leaf(p.intermediate, WORKLOAD), [p.intermediate.cert]),
    ),
    (
        "two-intermediates",
        lambda p: _two_intermediates(p),
    ),
    (
        "intermediate-without-spiffe-uri",
        lambda p: _under(p, p.kit.intermediate(p.root, None)),
    ),
    (
        "extra-unrelated-intermediate",
        lambda p: (
            p.kit.leaf(p.intermediate, WORKLOAD),
            [p.kit.intermediate(p.other_root, "other.org").cert, p.intermediate.cert],
        ),
    ),
    ("no-eku", lambda p: _leaf(p, eku=None)),
    (
        "eku-server-and-client",
        lambda p: _leaf(
            p, eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        ),
    ),
    ("eku-client-only", lambda p: _leaf(p, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])),
    ("no-authority-key-identifier", lambda p: _leaf(p, aki=False)),
    ("critical-san-with-subject", lambda p: _leaf(p, san_critical=True)),
    ("dns-san-beside-uri", lambda p: _leaf(p, dns_names=["api.example.org"])),
    (
        "key-encipherment-allowed",
        lambda p: _leaf(
            p,
            usage=_ku(
                digital_signature=True, key_encipherment=True, key_agreement=True
            ),
        ),
    ),
    ("rsa-2048-leaf-key", lambda p: _leaf(p, key=p.kit.rsa_key())),
    (
        "ed25519-leaf-key",
        lambda p: _leaf(p, key=ed25519.Ed25519PrivateKey.generate()),
    ),
    ("root-without-uri", lambda p: _own_root(p)),
]


@pytest.mark.parametrize("build", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_svids(pki: Pki, now: datetime, build: Build) -> None:
    leaf, intermediates = build(pki)

    svid = verify_x509_svid(leaf, intermediates, pki.bundle_for, now)

    spiffe_id = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)[0]
    assert svid.spiffe_id == SpiffeId.parse(spiffe_id)
    assert svid.leaf is leaf
    assert svid.chain[0] == leaf
    assert svid.chain[-1] in pki.bundles[svid.spiffe_id.trust_domain].authorities
    assert svid.not_after == leaf.not_valid_after_utc
    assert svid.not_after.tzinfo is not None
    assert svid.thumbprint == thumbprint(leaf)


def test_verified_chain_is_leaf_first_to_the_anchor(pki: Pki, now: datetime) -> None:
    leaf, intermediates = _two_intermediates(pki)

    svid = verify_x509_svid(leaf, intermediates, pki.bundle_for, now)

    assert svid.chain == (leaf, intermediates[0], pki.intermediate.cert, pki.root.cert)


INVALID = [
    (
        "cross-trust-domain",
        # other.org's CA signs a certificate claiming example.org.
        lambda p: (p.kit.leaf(p.other_root, WORKLOAD), []),
        "unknown_authority",
    ),
    (
        "cross-trust-domain-same-issuer-name",
        lambda p: (p.kit.leaf(p.impostor_root, WORKLOAD), []),
        "unknown_authority",
    ),
    (
        "cross-trust-domain-intermediate",
        lambda p: _under(p, p.kit.intermediate(p.other_root, "other.org")),
        "unknown_authority",
    ),
    (
        "claims-other-td-but-chains-here",
        lambda p: (p.kit.leaf(p.root, "spiffe://other.org/w"), []),
        "unknown_authority",
    ),
    (
        "unanchored-ca",
        lambda p: (p.kit.leaf(p.rogue_root, WORKLOAD), []),
        "unknown_authority",
    ),
    (
        "unanchored-ca-sent-as-intermediate",
        lambda p: (p.kit.leaf(p.rogue_root, WORKLOAD), [p.rogue_root.cert]),
        "unknown_authority",
    ),
    (
        "intermediate-not-sent",
        lambda p: (p.kit.leaf(p.intermediate, WORKLOAD), []),
        "unknown_authority",
    ),
    (
        "ca-leaf",
        lambda p: _leaf(p, ca=True, usage=_ku(digital_signature=True)),
        "ca_leaf",
    ),
    (
        "ca-leaf-with-cert-sign",
        lambda p: _leaf(
            p, ca=True, usage=_ku(digital_signature=True, key_cert_sign=True)
        ),
        "ca_leaf",
    ),
    (
        "bundle-root-as-leaf",
        lambda p: (p.root.cert, []),
        "root_id",
    ),
    ("no-basic-constraints", lambda p: _leaf(p, ca=None), "basic_constraints"),
    (
        "key-cert-sign",
        lambda p: _leaf(p, usage=_ku(digital_signature=True, key_cert_sign=True)),
        "key_usage",
    ),
    (
        "crl-sign",
        lambda p: _leaf(p, usage=_ku(digital_signature=True, crl_sign=True)),
        "key_usage",
    ),
    (
        "no-digital-signature",
        lambda p: _leaf(p, usage=_ku(key_encipherment=True)),
        "key_usage",
    ),
    ("no-key-usage", lambda p: _leaf(p, usage=None), "key_usage"),
    ("non-critical-key-usage", lambda p: _leaf(p, usage_critical=False), "key_usage"),
    ("zero-uri-sans", lambda p: _leaf(p, uris=[]), "uri_san_count"),
    (
        "dns-san-only",
        lambda p: _leaf(p, uris=[], dns_names=["api.example.org"]),
        "uri_san_count",
    ),
    (
        "two-uri-sans",
        lambda p: _leaf(p, uris=[WORKLOAD, "spiffe://example.org/other"]),
        "uri_san_count",
    ),
    (
        "uri-san-not-spiffe",
        lambda p: _leaf(p, uris=["https://example.org/ns/prod"]),
        "invalid_spiffe_id",
    ),
    (
        "uri-san-uppercase-td",
        lambda p: _leaf(p, uris=["spiffe://Example.org/w"]),
        "invalid_spiffe_id",
    ),
    (
        "uri-san-dot-segment",
        lambda p: _leaf(p, uris=["spiffe://example.org/a/../b"]),
        "invalid_spiffe_id",
    ),
    ("root-id-as-leaf", lambda p: _leaf(p, uris=["spiffe://example.org"]), "root_id"),
    (
        "expired",
        lambda p: _leaf(p, not_before=p.now - 3 * HOUR, not_after=p.now - HOUR),
        "expired",
    ),
    (
        "not-yet-valid",
        lambda p: _leaf(p, not_before=p.now + HOUR, not_after=p.now + 3 * HOUR),
        "not_yet_valid",
    ),
    (
        "non-ca-intermediate",
        lambda p: _under(p, p.kit.intermediate(p.root, ca=False)),
        "chain",
    ),
    (
        "intermediate-without-basic-constraints",
        lambda p: _under(p, p.kit.intermediate(p.root, ca=None)),
        "chain",
    ),
    (
        "intermediate-without-key-cert-sign",
        lambda p: _under(
            p, p.kit.intermediate(p.root, usage=_ku(digital_signature=True))
        ),
        "chain",
    ),
    (
        "intermediate-non-critical-key-usage",
        lambda p: _under(p, p.kit.intermediate(p.root, usage_critical=False)),
        "chain",
    ),
    (
        "expired-intermediate",
        lambda p: _under(
            p,
            p.kit.intermediate(
                p.root, not_before=p.now - 3 * HOUR, not_after=p.now - HOUR
            ),
        ),
        "chain",
    ),
    (
        "intermediate-eku-server-only",
        lambda p: _under(
            p, p.kit.intermediate(p.root, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
        ),
        "chain",
    ),
    (
        "path-length-exceeded",
        lambda p: _path_length_exceeded(p),
        "chain",
    ),
    (
        "leaf-with-name-constraints",
        lambda p: (_leaf_with_name_constraints(p), []),
        "chain",
    ),
    (
        "eku-server-only",
        lambda p: _leaf(p, eku=[ExtendedKeyUsageOID.SERVER_AUTH]),
        "ext_key_usage",
    ),
    (
        "intermediate-names-another-td",
        lambda p: _under(p, p.kit.intermediate(p.root, "other.org")),
        "wrong_trust_domain",
    ),
    (
        "intermediate-invalid-spiffe-uri",
        lambda p: _under(p, p.kit.intermediate(p.root, "Example.org")),
        "invalid_spiffe_id",
    ),
    ("rsa-1024-leaf-key", lambda p: _leaf(p, key=p.kit.rsa_key(1024)), "leaf_key"),
    (
        "no-bundle-for-trust-domain",
        lambda p: (p.kit.leaf(p.root, "spiffe://unknown.example/w"), []),
        "no_bundle",
    ),
    (
        "too-many-intermediates",
        lambda p: (p.kit.leaf(p.root, WORKLOAD), [p.intermediate.cert] * 17),
        "chain",
    ),
]


@pytest.mark.parametrize(
    ("build", "reason"),
    [(v[1], v[2]) for v in INVALID],
    ids=[v[0] for v in INVALID],
)
def test_invalid_svids(pki: Pki, now: datetime, build: Build, reason: str) -> None:
    leaf, intermediates = build(pki)

    with pytest.raises(X509SvidError) as caught:
        verify_x509_svid(leaf, intermediates, pki.bundle_for, now)

    assert caught.value.reason == reason
    assert str(caught.value).startswith("invalid X.509-SVID ")


def test_path_errors_wrap_cryptographys_verification_error(
    pki: Pki, now: datetime
) -> None:
    leaf, intermediates = _under(pki, pki.kit.intermediate(pki.root, ca=False))

    with pytest.raises(X509SvidError) as caught:
        verify_x509_svid(leaf, intermediates, pki.bundle_for, now)

    assert isinstance(caught.value.__cause__, VerificationError)
    assert "basicConstraints.cA must be asserted" in str(caught.value)


def test_unknown_authority_wraps_cryptographys_verification_error(
    pki: Pki, now: datetime
) -> None:
    with pytest.raises(X509SvidError) as caught:
        verify_x509_svid(
            pki.kit.leaf(pki.other_root, WORKLOAD), [], pki.bundle_for, now
        )

    assert caught.value.reason == "unknown_authority"
    assert isinstance(caught.value.__cause__, VerificationError)


def test_invalid_uri_san_wraps_the_spiffe_id_error(pki: Pki, now: datetime) -> None:
    leaf, _ = _leaf(pki, uris=["spiffe://example.org/a%2fb"])

    with pytest.raises(X509SvidError) as caught:
        verify_x509_svid(leaf, [], pki.bundle_for, now)

    assert caught.value.reason == "invalid_spiffe_id"
    assert isinstance(caught.value.__cause__, SpiffeIdError)
    assert caught.value.__cause__.reason == "percent_encoding"


def test_only_the_leafs_trust_domain_bundle_is_asked(pki: Pki, now: datetime) -> None:
    asked: list[TrustDomain] = []

    def bundle_for(trust_domain: TrustDomain) -> X509Bundle | None:
        asked.append(trust_domain)
        return pki.bundle_for(trust_domain)

    with pytest.raises(X509SvidError):
        verify_x509_svid(pki.kit.leaf(pki.other_root, WORKLOAD), [], bundle_for, now)

    assert asked == [TD]


@pytest.mark.parametrize(
    "make_bundle",
    [
        lambda p: X509Bundle(TD, ()),
        lambda p: X509Bundle(OTHER, (p.root.cert,)),
    ],
    ids=["empty-bundle", "bundle-of-another-trust-domain"],
)
def test_unusable_bundle_is_no_bundle(
    pki: Pki, now: datetime, make_bundle: Callable[[Pki], X509Bundle]
) -> None:
    bundle = make_bundle(pki)
    leaf, _ = _leaf(pki)

    with pytest.raises(X509SvidError) as caught:
        verify_x509_svid(leaf, [], lambda td: bundle, now)

    assert caught.value.reason == "no_bundle"


def test_validity_bounds_are_inclusive(pki: Pki, now: datetime) -> None:
    leaf, _ = _leaf(pki, not_before=now - HOUR, not_after=now + HOUR)

    verify_x509_svid(leaf, [], pki.bundle_for, now - HOUR)
    verify_x509_svid(leaf, [], pki.bundle_for, now + HOUR)
    with pytest.raises(X509SvidError) as caught:
        verify_x509_svid(leaf, [], pki.bundle_for, now + HOUR + timedelta(seconds=1))
    assert caught.value.reason == "expired"


def test_verification_time_must_be_aware(pki: Pki, now: datetime) -> None:
    leaf, _ = _leaf(pki)

    with pytest.raises(ValueError, match="timezone-aware"):
        verify_x509_svid(leaf, [], pki.bundle_for, now.replace(tzinfo=None))


def test_thumbprint_is_rfc8705_x5t_s256(pki: Pki) -> None:
    leaf, _ = _leaf(pki)
    digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()

    value = thumbprint(leaf)

    assert value == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert "=" not in value and len(value) == 43


def _verify_with_policies(pki: Pki, leaf: x509.Certificate) -> None:
    (
        PolicyBuilder()
        .store(Store([pki.root.cert]))
        .time(pki.now)
        .extension_policies(
            ca_policy=x509svid._CA_POLICY, ee_policy=x509svid._EE_POLICY
        )
        .build_client_verifier()
        .verify(leaf, [])
    )


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"ca": True}, "a CA certificate cannot be a leaf SVID"),
        ({"uris": [WORKLOAD, WORKLOAD + "2"]}, "exactly one URI SAN"),
        ({"uris": ["spiffe://example.org"]}, "root ID"),
        ({"usage": _ku(digital_signature=True, crl_sign=True)}, "cRLSign"),
        ({"usage_critical": False}, "incorrect criticality"),
        ({"ca": None}, "missing required extension"),
        ({"eku": [ExtendedKeyUsageOID.SERVER_AUTH]}, "lacks clientAuth"),
    ],
    ids=[
        "ca-leaf",
        "two-uris",
        "root-id",
        "crl-sign",
        "non-critical-key-usage",
        "no-basic-constraints",
        "eku",
    ],
)
def test_the_verifier_policy_itself_enforces_the_leaf_rules(
    pki: Pki, overrides: dict[str, Any], fragment: str
) -> None:
    # The same rules run before path validation; the extension policy is a
    # second line of defence inside cryptography's verifier.
    leaf, _ = _leaf(pki, **overrides)

    with pytest.raises(VerificationError, match=fragment):
        _verify_with_policies(pki, leaf)


def test_the_verifier_policy_accepts_what_spiffe_allows(pki: Pki) -> None:
    # No EKU, no AKI, a critical SAN beside a subject: webpki's end-entity
    # defaults would refuse the last two.
    leaf, _ = _leaf(pki, eku=None, aki=False, san_critical=True)

    _verify_with_policies(pki, leaf)
