"""Trust bundles: PEM and SPIFFE bundle JSON (Trust Domain and Bundle §4)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from swim_as.spiffe.bundle import JwtBundle, X509Bundle, parse_bundle, parse_jwt_bundle
from swim_as.spiffe.errors import BundleError, SpiffeError
from swim_as.spiffe.ids import TrustDomain

TD = TrustDomain("example.org")


Roots = tuple[Any, Any]
Make = Callable[[Any, Any], bytes]


@pytest.fixture(scope="module")
def roots(kit: Any) -> Roots:
    return kit.root(), kit.root(common_name="second root")


# PEM -------------------------------------------------------------------------


def test_pem_with_several_certificates_and_comments(kit: Any, roots: Roots) -> None:
    first, second = roots
    data = (
        b"# example.org roots\nSubject: whatever openssl printed\n"
        + kit.pem(first.cert)
        + b"\n\n"
        + kit.pem(second.cert, first.cert)  # a duplicate is read once
    )

    x509_bundle, jwt_bundle = parse_bundle(data, TD)

    assert x509_bundle == X509Bundle(TD, (first.cert, second.cert))
    assert x509_bundle.sequence is None and x509_bundle.refresh_hint is None
    assert x509_bundle.skipped == ()
    assert jwt_bundle.trust_domain == TD and len(jwt_bundle.keys) == 0


def test_pem_with_crlf_line_ends(kit: Any, roots: Roots) -> None:
    data = kit.pem(roots[0].cert).replace(b"\n", b"\r\n")

    x509_bundle, _ = parse_bundle(data, TD)

    assert x509_bundle.authorities == (roots[0].cert,)


@pytest.mark.parametrize(
    ("make", "reason", "fragment"),
    [
        (lambda kit, root: kit.pem(root.cert)[:-40], "pem", "truncated"),
        (lambda kit, root: kit.pem(root.cert)[:200], "pem", "truncated"),
        (
            lambda kit, root: kit.pem(root.cert).replace(b"MII", b"M!I", 1),
            "pem",
            "not valid base64",
        ),
        (
            lambda kit, root: kit.pem(kit.leaf(root)),
            "not_ca",
            "not a CA certificate",
        ),
        (
            lambda kit, root: kit.pem(kit.leaf(root, ca=None)),
            "not_ca",
            "no basicConstraints",
        ),
        (
            lambda kit, root: (
                kit.pem(root.cert)
                + kit.ec_key().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            ),
            "private_key",
            "is a private key",
        ),
        (
            lambda kit, root: (
                kit.ec_key()
                .public_key()
                .public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo,
                )
            ),
            "pem",
            "not a certificate",
        ),
        (
            lambda kit, root: (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ),
            "certificate",
            "not a valid certificate",
        ),
        (lambda kit, root: b"just some text", "format", "neither PEM"),
        (lambda kit, root: b"", "format", "neither PEM"),
        (lambda kit, root: b"\xff\xfe\x00", "format", "not UTF-8"),
    ],
    ids=[
        "truncated-end-marker",
        "truncated-body",
        "bad-base64",
        "leaf-not-ca",
        "no-basic-constraints",
        "private-key-block",
        "public-key-block",
        "garbage-der",
        "not-pem-nor-json",
        "empty",
        "not-utf8",
    ],
)
def test_bad_pem(
    kit: Any, roots: Roots, make: Make, reason: str, fragment: str
) -> None:
    with pytest.raises(BundleError) as caught:
        parse_bundle(make(kit, roots[0]), TD)

    assert caught.value.reason == reason
    assert fragment in str(caught.value)
    assert "'example.org'" in str(caught.value)


# SPIFFE bundle JSON ----------------------------------------------------------


def test_full_spiffe_bundle(kit: Any, roots: Roots) -> None:
    ec_key = kit.ec_key().public_key()
    p384 = kit.ec_key(ec.SECP384R1()).public_key()
    p521 = kit.ec_key(ec.SECP521R1()).public_key()
    rsa_key = kit.rsa_key().public_key()
    okp = ed25519.Ed25519PrivateKey.generate().public_key()
    data = kit.bundle_json(
        [
            kit.x509_entry(roots[0].cert),
            kit.x509_entry(roots[1].cert),
            kit.jwt_entry(ec_key, "ec"),
            kit.jwt_entry(p384, "p384"),
            kit.jwt_entry(p521, "p521"),
            kit.jwt_entry(rsa_key, "rsa"),
            kit.jwt_entry(rsa_key, "rsa-ps", alg="PS256"),
            kit.jwt_entry(okp, "okp"),
        ],
        sequence=2**63 + 5,
        refresh_hint=60,
    )

    x509_bundle, jwt_bundle = parse_bundle(data, TD)

    assert x509_bundle.authorities == (roots[0].cert, roots[1].cert)
    assert x509_bundle.sequence == 2**63 + 5 and x509_bundle.refresh_hint == 60
    assert jwt_bundle.sequence == 2**63 + 5 and jwt_bundle.refresh_hint == 60
    assert x509_bundle.skipped == jwt_bundle.skipped == ()
    keys = jwt_bundle.keys
    assert sorted(keys) == ["ec", "okp", "p384", "p521", "rsa", "rsa-ps"]
    assert keys["ec"].public_key == ec_key
    assert (keys["ec"].kty, keys["ec"].crv) == ("EC", "P-256")
    assert keys["ec"].algorithms == {"ES256"}
    assert keys["p384"].algorithms == {"ES384"}
    assert keys["p521"].algorithms == {"ES512"}
    assert keys["rsa"].algorithms == {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
    }
    assert keys["rsa"].crv is None
    assert keys["rsa-ps"].algorithms == {"PS256"}
    assert keys["okp"].algorithms == {"EdDSA"}
    assert isinstance(keys["rsa"].public_key, rsa.RSAPublicKey)
    with pytest.raises(TypeError):
        keys["new"] = keys["ec"]  # type: ignore[index]


def test_bundle_without_hints_and_empty_keys(kit: Any) -> None:
    data = kit.bundle_json([], sequence=None, refresh_hint=None)

    x509_bundle, jwt_bundle = parse_bundle(data, TD)

    assert x509_bundle == X509Bundle(TD, ())
    assert jwt_bundle == JwtBundle(TD, {})


def test_unknown_members_are_ignored(kit: Any, roots: Roots) -> None:
    document = json.loads(kit.bundle_json([kit.x509_entry(roots[0].cert)]))
    document["spiffe_future_thing"] = {"x": 1}
    document["keys"][0]["x5t#S256"] = "abc"

    x509_bundle, _ = parse_bundle(json.dumps(document).encode(), TD)

    assert x509_bundle.authorities == (roots[0].cert,)


def test_skipped_entries_are_reported(kit: Any, roots: Roots) -> None:
    key = kit.ec_key().public_key()
    unknown_use = kit.jwt_entry(key, "w1", use="wit-svid")
    no_use = kit.jwt_entry(key, "n1")
    del no_use["use"]
    unknown_kty = {"kty": "XYZ", "use": "jwt-svid", "kid": "x"}
    no_kty = {"use": "x509-svid", "x5c": []}
    secp256k1 = {
        "kty": "EC",
        "crv": "secp256k1",
        "x": "AA",
        "y": "AA",
        "use": "jwt-svid",
        "kid": "k",
    }
    x25519 = {"kty": "OKP", "crv": "X25519", "x": "AA", "use": "jwt-svid", "kid": "o"}
    short_rsa = kit.jwt_entry(kit.rsa_key(1024).public_key(), "short")
    wrong_alg = kit.jwt_entry(key, "es", alg="ES384")
    data = kit.bundle_json(
        [
            kit.x509_entry(roots[0].cert),
            unknown_use,
            no_use,
            unknown_kty,
            no_kty,
            secp256k1,
            x25519,
            short_rsa,
            wrong_alg,
            kit.jwt_entry(key, "good"),
        ]
    )

    x509_bundle, jwt_bundle = parse_bundle(data, TD)

    assert x509_bundle.authorities == (roots[0].cert,)
    assert list(jwt_bundle.keys) == ["good"]
    assert jwt_bundle.skipped == x509_bundle.skipped
    assert x509_bundle.skipped == (
        "keys[1]: use 'wit-svid' is not supported",
        "keys[2]: no 'use'",
        "keys[3]: key type 'XYZ' is not supported",
        "keys[4]: key type missing is not supported",
        "keys[5] (kid 'k'): EC curve 'secp256k1' is not supported",
        "keys[6] (kid 'o'): OKP curve 'X25519' is not supported",
        "keys[7] (kid 'short'): RSA key of 1024 bits is shorter than 2048",
        "keys[8] (kid 'es'): alg 'ES384' does not fit the key",
    )


def _entry_with(kit: Any, root: Any, **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = kit.x509_entry(root.cert)
    entry.update(changes)
    return entry


def _der64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


BAD_JSON = [
    (lambda kit, root: b'{"keys": [', "json", "not valid JSON"),
    (
        lambda kit, root: b'{"keys": [], "keys": []}',
        "duplicate",
        "'keys' appears twice",
    ),
    (lambda kit, root: b'{"keys": [], "spiffe_sequence": NaN}', "json", "NaN"),
    (lambda kit, root: b"[]", "json", "not an object"),
    (lambda kit, root: b"{}", "json", "'keys' must be an array"),
    (lambda kit, root: b'{"keys": {}}', "json", "'keys' must be an array"),
    (lambda kit, root: b'{"keys": [1]}', "json", "keys[0] is not an object"),
    (
        lambda kit, root: kit.bundle_json([], sequence=True),
        "json",
        "'spiffe_sequence' must be a non-negative integer",
    ),
    (
        lambda kit, root: kit.bundle_json([], sequence="7"),
        "json",
        "'spiffe_sequence' must be a non-negative integer",
    ),
    (
        lambda kit, root: kit.bundle_json([], refresh_hint=-1),
        "json",
        "'spiffe_refresh_hint' must be a non-negative integer",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [
                kit.jwt_entry(kit.ec_key().public_key(), "dup"),
                kit.jwt_entry(kit.ec_key().public_key(), "dup"),
            ]
        ),
        "duplicate_kid",
        "keys[1]: duplicate kid 'dup'",
    ),
    (
        lambda kit, root: kit.bundle_json([_entry_with(kit, root, x5c=[])]),
        "x5c",
        "exactly one certificate in 'x5c', found 0",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [_entry_with(kit, root, x5c=[_der64(root.cert), _der64(root.cert)])]
        ),
        "x5c",
        "exactly one certificate in 'x5c', found 2",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [{k: v for k, v in kit.x509_entry(root.cert).items() if k != "x5c"}]
        ),
        "x5c",
        "found 0",
    ),
    (
        lambda kit, root: kit.bundle_json([_entry_with(kit, root, x5c=["%%%"])]),
        "x5c",
        "'x5c' is not base64",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [kit.x509_entry(kit.leaf(root))]  # a workload certificate, not a CA
        ),
        "not_ca",
        "keys[0] is not a CA certificate",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [
                _entry_with(
                    kit, root, **kit.public_jwk(kit.ec_key().public_key())
                )  # key members of another key
            ]
        ),
        "jwk",
        "do not match the 'x5c' certificate",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [_entry_with(kit, root, d="c2VjcmV0")]  # private EC member
        ),
        "private_key",
        "keys[0] holds private key members d",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [
                {
                    **kit.jwt_entry(kit.rsa_key().public_key(), "r"),
                    "p": "AQ",
                    "q": "AQ",
                    "use": "no-such-use",  # refused even when skipped otherwise
                }
            ]
        ),
        "private_key",
        "holds private key members p, q",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [{"kty": "oct", "k": "c2VjcmV0", "use": "jwt-svid", "kid": "h"}]
        ),
        "symmetric_key",
        "keys[0] is a symmetric key",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [kit.jwt_entry(kit.ec_key().public_key(), None)]
        ),
        "kid",
        "keys[0]: a jwt-svid key needs a 'kid'",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [kit.jwt_entry(kit.ec_key().public_key(), "")]
        ),
        "kid",
        "needs a 'kid'",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [
                {
                    **kit.jwt_entry(kit.ec_key().public_key(), "bad"),
                    "y": kit.public_jwk(kit.ec_key().public_key())["y"],
                }
            ]
        ),
        "jwk",
        "keys[0] (kid 'bad'): invalid EC key",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [{**kit.jwt_entry(kit.ec_key().public_key(), "short"), "x": "AAAA"}]
        ),
        "jwk",
        "'x' has the wrong length",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [{**kit.jwt_entry(kit.ec_key().public_key(), "pad"), "x": "AA=="}]
        ),
        "jwk",
        "'x' is not base64url",
    ),
    (
        lambda kit, root: kit.bundle_json(
            [
                {
                    k: v
                    for k, v in kit.jwt_entry(kit.rsa_key().public_key(), "r").items()
                    if k != "e"
                }
            ]
        ),
        "jwk",
        "'e' is missing",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason", "fragment"),
    BAD_JSON,
    ids=[
        "syntax",
        "duplicate-member",
        "nan",
        "not-an-object",
        "no-keys",
        "keys-not-array",
        "entry-not-object",
        "sequence-bool",
        "sequence-string",
        "negative-refresh-hint",
        "duplicate-kid",
        "x5c-empty",
        "x5c-two-certs",
        "x5c-missing",
        "x5c-not-base64",
        "x5c-not-ca",
        "x5c-key-mismatch",
        "private-ec-member",
        "private-rsa-members-unknown-use",
        "symmetric-key",
        "jwt-key-without-kid",
        "jwt-key-empty-kid",
        "ec-point-not-on-curve",
        "ec-coordinate-short",
        "padded-base64url",
        "rsa-missing-exponent",
    ],
)
def test_bad_json(
    kit: Any, roots: Roots, make: Make, reason: str, fragment: str
) -> None:
    with pytest.raises(BundleError) as caught:
        parse_bundle(make(kit, roots[0]), TD)

    assert caught.value.reason == reason
    assert fragment in str(caught.value)


def test_bundle_error_wraps_its_cause(kit: Any) -> None:
    with pytest.raises(BundleError) as caught:
        parse_bundle(b'{"keys": [', TD)

    assert isinstance(caught.value.__cause__, json.JSONDecodeError)
    assert isinstance(caught.value, SpiffeError)


def test_parse_bundle_refuses_text() -> None:
    with pytest.raises(TypeError):
        parse_bundle("{}", TD)  # type: ignore[arg-type]


def test_bundle_error_has_a_default_reason() -> None:
    assert BundleError("cannot read the file").reason == "invalid_bundle"


# JWT bundle files ------------------------------------------------------------


def test_jwt_bundle_file(kit: Any, roots: Roots) -> None:
    key = kit.ec_key().public_key()
    no_use = kit.jwt_entry(key, "plain")
    del no_use["use"]
    data = kit.bundle_json(
        [
            no_use,
            kit.jwt_entry(kit.rsa_key().public_key(), "tagged"),
            kit.x509_entry(roots[0].cert),
            kit.jwt_entry(key, "wit", use="wit-svid"),
        ],
        sequence=3,
        refresh_hint=None,
    )

    bundle = parse_jwt_bundle(data, TD)

    assert sorted(bundle.keys) == ["plain", "tagged"]
    assert bundle.keys["plain"].public_key == key
    assert bundle.sequence == 3 and bundle.refresh_hint is None
    assert bundle.skipped == (
        "keys[2]: use 'x509-svid' is not read from a JWT bundle",
        "keys[3]: use 'wit-svid' is not read from a JWT bundle",
    )


def test_plain_jwks_without_spiffe_members(kit: Any) -> None:
    data = json.dumps({"keys": [kit.jwt_entry(kit.ec_key().public_key(), "k")]})

    bundle = parse_jwt_bundle(data.encode(), TD)

    assert list(bundle.keys) == ["k"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"-----BEGIN CERTIFICATE-----\n", "format"),
        (b'{"keys": [{"kty": "oct", "k": "AA", "kid": "h"}]}', "symmetric_key"),
        (b'{"keys": [{"kty": "EC", "crv": "P-256", "x": "A"}]}', "kid"),
        (b"{", "json"),
    ],
    ids=["pem", "symmetric", "no-kid", "syntax"],
)
def test_bad_jwt_bundle_file(data: bytes, reason: str) -> None:
    with pytest.raises(BundleError) as caught:
        parse_jwt_bundle(data, TD)

    assert caught.value.reason == reason
