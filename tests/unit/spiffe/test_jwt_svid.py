"""JWT-SVID client assertions (SPIFFE JWT-SVID §2-§4, OAuth SPIFFE draft §3.1).

Covers the "bad input" list of issue 3 item 1 and decision D13.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from swim_as.spiffe.bundle import JwtBundle, JwtKey, parse_jwt_bundle
from swim_as.spiffe.errors import JwtSvidError, SpiffeIdError
from swim_as.spiffe.ids import SpiffeId, TrustDomain
from swim_as.spiffe.jwtsvid import MAX_TOKEN_LENGTH, VerifiedJwtSvid, verify_jwt_svid

TD = TrustDomain("example.org")
OTHER = TrustDomain("other.org")
ISSUER = "https://as.example.com"
TOKEN_ENDPOINT = "https://as.example.com/token"
WORKLOAD = "spiffe://example.org/ns/prod/sa/api"
# Marks a header member or claim to leave out.
_ABSENT = object()


class Keys:
    """Signing keys of two trust domains and their JWT bundles."""

    def __init__(self, kit: Any, now: datetime) -> None:
        self.kit = kit
        self.now = now
        self.p256 = kit.ec_key()
        self.p384 = kit.ec_key(ec.SECP384R1())
        self.p521 = kit.ec_key(ec.SECP521R1())
        self.rsa = kit.rsa_key()
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.other = kit.ec_key()
        self.private = {
            "ec1": self.p256,
            "ec384": self.p384,
            "ec521": self.p521,
            "rsa1": self.rsa,
            "ed1": self.ed,
        }
        self.bundles = {
            TD: parse_jwt_bundle(
                kit.bundle_json(
                    [
                        kit.jwt_entry(key.public_key(), kid)
                        for kid, key in self.private.items()
                    ]
                ),
                TD,
            ),
            # other.org reuses the kid "ec1" for a key of its own.
            OTHER: parse_jwt_bundle(
                kit.bundle_json(
                    [
                        kit.jwt_entry(self.other.public_key(), "other1"),
                        kit.jwt_entry(self.other.public_key(), "ec1"),
                    ]
                ),
                OTHER,
            ),
        }

    def bundle_for(self, trust_domain: TrustDomain) -> JwtBundle | None:
        return self.bundles.get(trust_domain)

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(self.now.timestamp())
        claims: dict[str, Any] = {
            "sub": WORKLOAD,
            "aud": ISSUER,
            "exp": now + 300,
            "iat": now,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not _ABSENT}

    def token(
        self,
        *,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        kid: str = "ec1",
        alg: str = "ES256",
        key: Any = None,
        sign_alg: str | None = None,
    ) -> str:
        full_header: dict[str, Any] = {"alg": alg, "kid": kid, "typ": "JWT"}
        full_header.update(header or {})
        full_header = {k: v for k, v in full_header.items() if v is not _ABSENT}
        token: str = self.kit.sign_jwt(
            full_header,
            claims if claims is not None else self.claims(),
            key if key is not None else self.private.get(kid, self.p256),
            sign_alg or alg,
        )
        return token

    def verify(self, token: str, **options: Any) -> VerifiedJwtSvid:
        options.setdefault("audience", ISSUER)
        options.setdefault("at", self.now)
        return verify_jwt_svid(token, self.bundle_for, **options)


@pytest.fixture(scope="module")
def keys(kit: Any) -> Keys:
    return Keys(kit, datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(
    kit: Any, header: dict[str, Any], claims: dict[str, Any], sig: bytes
) -> str:
    return f"{kit.encode_part(header)}.{kit.encode_part(claims)}.{_b64url(sig)}"


def _duplicate_claim(keys: Keys) -> str:
    header = keys.kit.encode_part({"alg": "ES256", "kid": "ec1"})
    payload = _b64url(b'{"sub":"spiffe://example.org/a","sub":"spiffe://x.org/b"}')
    signature = keys.kit.signature(f"{header}.{payload}".encode(), keys.p256, "ES256")
    return f"{header}.{payload}.{_b64url(signature)}"


def _hs256_with_public_key(keys: Keys) -> str:
    # The classic confusion attack: HMAC keyed with the verifier's public key.
    secret = keys.p256.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": "ec1", "typ": "JWT"}
    signing_input = (
        f"{keys.kit.encode_part(header)}.{keys.kit.encode_part(keys.claims())}"
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return _unsigned(keys.kit, header, keys.claims(), mac)


def _json_serialization(keys: Keys) -> str:
    protected, payload, signature = keys.token().split(".")
    return json.dumps(
        {"payload": payload, "protected": protected, "signature": signature}
    )


def _tampered(keys: Keys) -> str:
    header, _, signature = keys.token().split(".")
    payload = keys.kit.encode_part(keys.claims(sub="spiffe://example.org/admin"))
    return f"{header}.{payload}.{signature}"


NEGATIVE = [
    (
        "alg-none",
        lambda k: _unsigned(k.kit, {"alg": "none", "kid": "ec1"}, k.claims(), b""),
        "alg",
    ),
    ("hs256-keyed-with-public-key", _hs256_with_public_key, "alg"),
    ("eddsa", lambda k: k.token(kid="ed1", alg="EdDSA"), "alg"),
    ("alg-missing", lambda k: k.token(header={"alg": _ABSENT}), "alg"),
    ("alg-lowercase", lambda k: k.token(header={"alg": "es256"}), "alg"),
    (
        "es384-on-p256-key",
        lambda k: k.token(kid="ec1", alg="ES384", key=k.p256),
        "alg_mismatch",
    ),
    (
        "rs256-on-ec-key",
        lambda k: k.token(kid="ec1", alg="RS256", key=k.rsa),
        "alg_mismatch",
    ),
    (
        "es256-on-rsa-key",
        lambda k: k.token(kid="rsa1", alg="ES256", key=k.p256),
        "alg_mismatch",
    ),
    (
        "es256-on-p384-key",
        lambda k: k.token(kid="ec384", alg="ES256", key=k.p256),
        "alg_mismatch",
    ),
    (
        "header-jku",
        lambda k: k.token(header={"jku": "https://evil.example/jwks"}),
        "header",
    ),
    (
        "header-jwk",
        lambda k: k.token(header={"jwk": k.kit.public_jwk(k.p256.public_key())}),
        "header",
    ),
    ("header-x5c", lambda k: k.token(header={"x5c": ["MII"]}), "header"),
    (
        "header-x5u",
        lambda k: k.token(header={"x5u": "https://evil.example/c"}),
        "header",
    ),
    ("header-crit", lambda k: k.token(header={"crit": ["exp"]}), "header"),
    ("header-cty", lambda k: k.token(header={"cty": "JWT"}), "header"),
    ("unknown-kid", lambda k: k.token(kid="nope", key=k.p256), "unknown_kid"),
    (
        "sub-in-another-td-than-the-key",
        # Signed with example.org's key, but sub names other.org: only
        # other.org's bundle is consulted, and its "ec1" is another key.
        lambda k: k.token(claims=k.claims(sub="spiffe://other.org/w"), kid="ec1"),
        "signature",
    ),
    (
        "sub-in-another-td-unknown-kid",
        lambda k: k.token(
            claims=k.claims(sub="spiffe://other.org/w"), kid="rsa1", alg="RS256"
        ),
        "unknown_kid",
    ),
    (
        "sub-in-td-without-bundle",
        lambda k: k.token(claims=k.claims(sub="spiffe://third.example/w")),
        "no_bundle",
    ),
    ("json-serialization", _json_serialization, "json_serialization"),
    (
        "aud-token-endpoint",
        lambda k: k.token(claims=k.claims(aud=TOKEN_ENDPOINT)),
        "audience",
    ),
    (
        "aud-token-endpoint-in-array",
        lambda k: k.token(claims=k.claims(aud=[TOKEN_ENDPOINT])),
        "audience",
    ),
    (
        "aud-extra-values",
        lambda k: k.token(claims=k.claims(aud=[ISSUER, "https://rs.example.com"])),
        "audience",
    ),
    (
        "aud-issuer-twice",
        lambda k: k.token(claims=k.claims(aud=[ISSUER, ISSUER])),
        "audience",
    ),
    (
        "aud-trailing-slash",
        lambda k: k.token(claims=k.claims(aud=ISSUER + "/")),
        "audience",
    ),
    ("aud-missing", lambda k: k.token(claims=k.claims(aud=_ABSENT)), "audience"),
    ("aud-empty-array", lambda k: k.token(claims=k.claims(aud=[])), "audience"),
    ("aud-number", lambda k: k.token(claims=k.claims(aud=1)), "audience"),
    (
        "expired",
        lambda k: k.token(claims=k.claims(exp=int(k.now.timestamp()) - 31)),
        "expired",
    ),
    (
        "expired-at-leeway-edge",
        lambda k: k.token(claims=k.claims(exp=int(k.now.timestamp()) - 30)),
        "expired",
    ),
    (
        "too-long-lived",
        lambda k: k.token(claims=k.claims(exp=int(k.now.timestamp()) + 601)),
        "lifetime",
    ),
    (
        "exp-far-future",
        lambda k: k.token(claims=k.claims(exp=10**400)),
        "lifetime",
    ),
    (
        "nbf-in-future",
        lambda k: k.token(claims=k.claims(nbf=int(k.now.timestamp()) + 31)),
        "not_yet_valid",
    ),
    ("nbf-not-a-number", lambda k: k.token(claims=k.claims(nbf="soon")), "nbf"),
    ("missing-exp", lambda k: k.token(claims=k.claims(exp=_ABSENT)), "exp"),
    ("exp-string", lambda k: k.token(claims=k.claims(exp="2030-01-01")), "exp"),
    ("exp-bool", lambda k: k.token(claims=k.claims(exp=True)), "exp"),
    ("missing-kid", lambda k: k.token(header={"kid": _ABSENT}), "kid"),
    ("empty-kid", lambda k: k.token(header={"kid": ""}), "kid"),
    ("kid-not-string", lambda k: k.token(header={"kid": 1}), "kid"),
    ("typ-at-jwt", lambda k: k.token(header={"typ": "at+jwt"}), "typ"),
    ("typ-lowercase-jwt", lambda k: k.token(header={"typ": "jwt"}), "typ"),
    (
        "typ-client-authentication",
        lambda k: k.token(header={"typ": "client-authentication+jwt"}),
        "typ",
    ),
    ("sub-missing", lambda k: k.token(claims=k.claims(sub=_ABSENT)), "sub"),
    (
        "sub-not-spiffe",
        lambda k: k.token(claims=k.claims(sub="https://example.org/w")),
        "invalid_spiffe_id",
    ),
    (
        "sub-uppercase-td",
        lambda k: k.token(claims=k.claims(sub="spiffe://Example.org/w")),
        "invalid_spiffe_id",
    ),
    (
        "sub-root-id",
        lambda k: k.token(claims=k.claims(sub="spiffe://example.org")),
        "root_id",
    ),
    ("tampered-payload", _tampered, "signature"),
    ("jti-not-string", lambda k: k.token(claims=k.claims(jti=42)), "jti"),
    ("two-parts", lambda k: ".".join(k.token().split(".")[:2]), "malformed"),
    ("four-parts", lambda k: k.token() + ".e30", "malformed"),
    ("padded-base64", lambda k: k.token().replace(".", "=.", 1), "malformed"),
    (
        "header-not-json",
        lambda k: "bm90LWpzb24" + k.token()[k.token().index(".") :],
        "malformed",
    ),
    ("header-array", lambda k: "W10" + k.token()[k.token().index(".") :], "malformed"),
    ("duplicate-claim", _duplicate_claim, "malformed"),
    ("too-long", lambda k: "a" * (MAX_TOKEN_LENGTH + 1), "malformed"),
    ("empty", lambda k: "", "malformed"),
]


@pytest.mark.parametrize(
    ("build", "reason"),
    [(v[1], v[2]) for v in NEGATIVE],
    ids=[v[0] for v in NEGATIVE],
)
def test_refused_assertions(
    keys: Keys, build: Callable[[Keys], str], reason: str
) -> None:
    token = build(keys)

    with pytest.raises(JwtSvidError) as caught:
        keys.verify(token)

    assert caught.value.reason == reason
    if token:
        assert token not in str(caught.value)


POSITIVE = [
    ("string-aud", lambda k: k.token(claims=k.claims(aud=ISSUER))),
    ("one-element-array-aud", lambda k: k.token(claims=k.claims(aud=[ISSUER]))),
    ("typ-absent", lambda k: k.token(header={"typ": _ABSENT})),
    ("typ-jwt", lambda k: k.token(header={"typ": "JWT"})),
    ("typ-jose", lambda k: k.token(header={"typ": "JOSE"})),
    (
        "iat-in-the-future",
        lambda k: k.token(claims=k.claims(iat=int(k.now.timestamp()) + 3600)),
    ),
    ("iat-not-a-number", lambda k: k.token(claims=k.claims(iat="yesterday"))),
    ("iat-absent", lambda k: k.token(claims=k.claims(iat=_ABSENT))),
    (
        "exp-within-leeway",
        lambda k: k.token(claims=k.claims(exp=int(k.now.timestamp()) - 29)),
    ),
    (
        "exp-at-lifetime-cap",
        lambda k: k.token(claims=k.claims(exp=int(k.now.timestamp()) + 600)),
    ),
    (
        "exp-fractional",
        lambda k: k.token(claims=k.claims(exp=k.now.timestamp() + 60.5)),
    ),
    (
        "nbf-within-leeway",
        lambda k: k.token(claims=k.claims(nbf=int(k.now.timestamp()) + 29)),
    ),
    ("nbf-past", lambda k: k.token(claims=k.claims(nbf=int(k.now.timestamp()) - 60))),
    ("iss-and-extra-claims", lambda k: k.token(claims=k.claims(iss="spire", x=[1]))),
    ("es384", lambda k: k.token(kid="ec384", alg="ES384")),
    ("es512", lambda k: k.token(kid="ec521", alg="ES512")),
    ("rs256", lambda k: k.token(kid="rsa1", alg="RS256")),
    ("rs512", lambda k: k.token(kid="rsa1", alg="RS512")),
    ("ps256", lambda k: k.token(kid="rsa1", alg="PS256")),
    ("ps384", lambda k: k.token(kid="rsa1", alg="PS384")),
    (
        "other-trust-domain-own-key",
        lambda k: k.token(
            claims=k.claims(sub="spiffe://other.org/w"), kid="other1", key=k.other
        ),
    ),
]


@pytest.mark.parametrize(
    "build", [v[1] for v in POSITIVE], ids=[v[0] for v in POSITIVE]
)
def test_accepted_assertions(keys: Keys, build: Callable[[Keys], str]) -> None:
    verified = keys.verify(build(keys))

    assert verified.spiffe_id.trust_domain in (TD, OTHER)
    assert verified.expires_at.tzinfo is not None


def test_verified_svid_fields(keys: Keys) -> None:
    now = int(keys.now.timestamp())
    token = keys.token(claims=keys.claims(iat=now - 5, jti="abc-1", iss="spire"))

    verified = keys.verify(token)

    assert verified.spiffe_id == SpiffeId.parse(WORKLOAD)
    assert verified.expires_at == datetime.fromtimestamp(now + 300, tz=UTC)
    assert verified.issued_at == datetime.fromtimestamp(now - 5, tz=UTC)
    assert verified.jti == "abc-1"
    assert verified.kid == "ec1"
    assert verified.claims["iss"] == "spire"
    with pytest.raises(TypeError):
        verified.claims["sub"] = "x"  # type: ignore[index]


def test_optional_claims_absent(keys: Keys) -> None:
    verified = keys.verify(keys.token(claims=keys.claims(iat=_ABSENT)))

    assert verified.issued_at is None
    assert verified.jti is None


def test_a_reused_token_is_accepted(keys: Keys) -> None:
    token = keys.token(claims=keys.claims(jti="same"))

    first = keys.verify(token)
    second = keys.verify(token, at=keys.now + timedelta(seconds=30))

    assert first.jti == second.jti == "same"


def test_lifetime_cap_and_leeway_are_configurable(keys: Keys) -> None:
    token = keys.token(claims=keys.claims(exp=int(keys.now.timestamp()) + 300))

    with pytest.raises(JwtSvidError) as caught:
        keys.verify(token, max_remaining_lifetime=120)
    assert caught.value.reason == "lifetime"

    late = keys.now + timedelta(seconds=305)
    with pytest.raises(JwtSvidError) as caught:
        keys.verify(token, at=late, leeway=0)
    assert caught.value.reason == "expired"
    keys.verify(token, at=late, leeway=10)


def test_only_the_subjects_trust_domain_bundle_is_asked(keys: Keys) -> None:
    asked: list[TrustDomain] = []

    def bundle_for(trust_domain: TrustDomain) -> JwtBundle | None:
        asked.append(trust_domain)
        return keys.bundle_for(trust_domain)

    token = keys.token(claims=keys.claims(sub="spiffe://other.org/w"), kid="ec1")
    with pytest.raises(JwtSvidError):
        verify_jwt_svid(token, bundle_for, audience=ISSUER, at=keys.now)

    assert asked == [OTHER]


def test_a_bundle_of_another_trust_domain_is_not_used(keys: Keys) -> None:
    token = keys.token()

    with pytest.raises(JwtSvidError) as caught:
        verify_jwt_svid(
            token, lambda td: keys.bundles[OTHER], audience=ISSUER, at=keys.now
        )

    assert caught.value.reason == "no_bundle"


def test_an_empty_bundle_is_no_bundle(keys: Keys) -> None:
    with pytest.raises(JwtSvidError) as caught:
        verify_jwt_svid(
            keys.token(), lambda td: JwtBundle(td, {}), audience=ISSUER, at=keys.now
        )

    assert caught.value.reason == "no_bundle"


def test_alg_is_checked_against_the_bundle_keys_own_alg(keys: Keys) -> None:
    rsa_public = keys.rsa.public_key()
    bundle = JwtBundle(
        TD,
        {
            "ps": JwtKey("ps", rsa_public, "RSA", None, frozenset({"PS256"})),
        },
    )

    token = keys.token(kid="ps", alg="RS256", key=keys.rsa)
    with pytest.raises(JwtSvidError) as caught:
        verify_jwt_svid(token, lambda td: bundle, audience=ISSUER, at=keys.now)

    assert caught.value.reason == "alg_mismatch"


def test_invalid_sub_wraps_the_spiffe_id_error(keys: Keys) -> None:
    token = keys.token(claims=keys.claims(sub="spiffe://example.org/a/"))

    with pytest.raises(JwtSvidError) as caught:
        keys.verify(token)

    assert isinstance(caught.value.__cause__, SpiffeIdError)
    assert caught.value.__cause__.reason == "trailing_slash"


def test_messages_never_contain_the_token(keys: Keys) -> None:
    token = keys.token(claims=keys.claims(aud=TOKEN_ENDPOINT))

    with pytest.raises(JwtSvidError) as caught:
        keys.verify(token)

    message = str(caught.value)
    assert token.split(".")[1] not in message and token.split(".")[2] not in message
    assert "'spiffe://example.org/ns/prod/sa/api'" in message


@pytest.mark.parametrize(
    "options",
    [
        {"audience": ""},
        {"at": datetime(2026, 3, 1, 12, 0, 0)},
        {"leeway": -1},
        {"max_remaining_lifetime": -1},
    ],
    ids=["empty-audience", "naive-time", "negative-leeway", "negative-cap"],
)
def test_programming_errors_raise_value_error(
    keys: Keys, options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        keys.verify(keys.token(), **options)


def test_ed25519_keys_are_read_but_never_verify_a_jwt_svid(keys: Keys) -> None:
    assert keys.bundles[TD].keys["ed1"].algorithms == {"EdDSA"}
    token = keys.token(kid="ed1", alg="ES256", key=keys.p256)

    with pytest.raises(JwtSvidError) as caught:
        keys.verify(token)

    assert caught.value.reason == "alg_mismatch"
