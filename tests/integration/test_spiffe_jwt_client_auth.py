"""``spiffe_jwt``: JWT-SVID client assertions against a real server.

OAuth SPIFFE client-auth draft §3.1 and §5.1, SPIFFE JWT-SVID §2-§4, D6 and
D13. Every "bad input" of issue 3 for JWT-SVIDs is here with its exact
status and error; JWT-SVIDs are signed at test time with keys whose public
halves are in the trust domains' JWT bundle files.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import event

from swim_as.clients.model import Client
from tests.support.clients import JWT_SPIFFE, operator
from tests.support.harness import Running, running_server
from tests.support.harness import TestPki as Pki
from tests.support.jose import (
    hmac_with_public_key,
    json_serialization,
    jwk_of,
    jwt_bundle,
    sign,
    unsigned,
)
from tests.support.pki import Svid
from tests.support.postgres import create_database

TD = "spiffe://example.org"
REPORTER = f"{TD}/ns/prod/sa/reporter"
STRICT = f"{TD}/ns/prod/sa/strict"
OTHER_TD = "spiffe://other.org/ns/x/sa/y"
ABSENT = object()


@dataclass
class Keys:
    example: ec.EllipticCurvePrivateKey
    example_rsa: rsa.RSAPrivateKey
    other: ec.EllipticCurvePrivateKey
    rotated: ec.EllipticCurvePrivateKey
    jwt_files: dict[str, Path]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(
        example=ec.generate_private_key(ec.SECP256R1()),
        example_rsa=rsa.generate_private_key(65537, 2048),
        other=ec.generate_private_key(ec.SECP256R1()),
        rotated=ec.generate_private_key(ec.SECP256R1()),
        jwt_files={},
    )


@pytest.fixture(scope="module")
async def server(
    postgres_server: str,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
    keys: Keys,
) -> AsyncIterator[Running]:
    folder = tmp_path_factory.mktemp("jwt-server")
    domains = []
    jwt_keys = {
        "example.org": {
            "ex1": keys.example.public_key(),
            "exrsa": keys.example_rsa.public_key(),
        },
        "other.org": {"ot1": keys.other.public_key()},
    }
    for authority in (pki.example, pki.other):
        td = authority.trust_domain
        assert td is not None
        x509_file = folder / f"{td}.pem"
        x509_file.write_bytes(authority.bundle_path.read_bytes())
        jwt_file = folder / f"{td}.jwt.json"
        jwt_file.write_text(jwt_bundle(jwt_keys[td]))
        keys.jwt_files[td] = jwt_file
        domains.append(
            {"name": td, "bundle_file": x509_file, "jwt_bundle_file": jwt_file}
        )
    url = await create_database(postgres_server)
    async with running_server(pki, url, folder, trust_domains=domains) as running:
        await operator(running).add(
            REPORTER, method="spiffe_jwt", scopes=["reports.read"]
        )
        await operator(running).add(OTHER_TD, method="spiffe_jwt")
        yield running


def svid_jwt(
    server: Running,
    key: Any,
    *,
    kid: str | None = "ex1",
    alg: str = "ES256",
    sub: str = REPORTER,
    aud: Any = None,
    lifetime: float = 120,
    headers: dict[str, Any] | None = None,
    typ: str | None = "JWT",
    **claims: Any,
) -> str:
    now = server.clock.time()
    payload = {
        "sub": sub,
        "aud": [server.issuer] if aud is None else aud,
        "exp": int(now + lifetime),
        "iat": int(now),
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not ABSENT}
    return sign(payload, key, alg=alg, kid=kid, headers=headers, typ=typ)


async def with_assertion(
    server: Running, assertion: str, svid: Svid | None = None, **form: str
) -> Any:
    return await server.token(
        svid, client_assertion_type=JWT_SPIFFE, client_assertion=assertion, **form
    )


def claims_of(response: Any) -> dict[str, Any]:
    return jwt.decode(
        response.json()["access_token"], options={"verify_signature": False}
    )


# -- tokens ------------------------------------------------------------------


async def test_token_for_a_jwt_svid(server: Running, keys: Keys) -> None:
    assertion = svid_jwt(server, keys.example, lifetime=200)
    r = await with_assertion(server, assertion, client_id=REPORTER)
    assert r.status_code == 200, r.text
    claims = claims_of(r)
    assert claims["sub"] == REPORTER and claims["client_id"] == REPORTER
    assert claims["scope"] == "reports.read"
    assert "cnf" not in claims  # no certificate was proven (D6)
    assert (
        claims["exp"]
        <= jwt.decode(assertion, options={"verify_signature": False})["exp"]
    )


@pytest.mark.parametrize(
    "aud", ["issuer-string", "issuer-array"], ids=["string", "array"]
)
async def test_audience_forms_and_no_client_id(
    server: Running, keys: Keys, aud: str
) -> None:
    value = server.issuer if aud == "issuer-string" else [server.issuer]
    r = await with_assertion(server, svid_jwt(server, keys.example, aud=value))
    assert r.status_code == 200, r.text


async def test_rsa_key_and_other_trust_domain(server: Running, keys: Keys) -> None:
    r = await with_assertion(
        server, svid_jwt(server, keys.example_rsa, kid="exrsa", alg="PS256")
    )
    assert r.status_code == 200, r.text
    r = await with_assertion(
        server,
        svid_jwt(server, keys.other, kid="ot1", sub=OTHER_TD),
        client_id=OTHER_TD,
    )
    assert r.status_code == 200, r.text


async def test_token_never_outlives_the_jwt_svid(server: Running, keys: Keys) -> None:
    r = await with_assertion(server, svid_jwt(server, keys.example, lifetime=45))
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] <= 45
    assert claims_of(r)["exp"] <= int(server.clock.time() + 45)


async def test_reused_jwt_svid_accepted(server: Running, keys: Keys) -> None:
    """JWT-SVID §7.1: jti need not be tracked; reuse within life is normal."""
    assertion = svid_jwt(server, keys.example, jti="same")
    for _ in range(2):
        r = await with_assertion(server, assertion)
        assert r.status_code == 200, r.text


async def test_bound_to_an_svid_of_the_same_workload(
    server: Running, keys: Keys
) -> None:
    svid = server.pki.example.issue("reporter-x509", [REPORTER])
    r = await with_assertion(server, svid_jwt(server, keys.example), svid=svid)
    assert r.status_code == 200, r.text
    assert claims_of(r)["cnf"] == {"x5t#S256": svid.x5t}


async def test_not_bound_to_a_certificate_of_someone_else(
    server: Running, keys: Keys
) -> None:
    other = server.pki.example.issue("not-reporter", [f"{TD}/ns/prod/sa/someone"])
    r = await with_assertion(server, svid_jwt(server, keys.example), svid=other)
    assert r.status_code == 200, r.text
    assert "cnf" not in claims_of(r)


async def test_client_requiring_binding(server: Running, keys: Keys) -> None:
    await server.services.registration.register_other(
        {
            "token_endpoint_auth_method": "spiffe_jwt",
            "spiffe_id": STRICT,
            "tls_client_certificate_bound_access_tokens": True,
        },
        actor="operator:test",
    )
    assertion = svid_jwt(server, keys.example, sub=STRICT)
    r = await with_assertion(server, assertion)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text
    someone = server.pki.example.issue("strict-other", [f"{TD}/ns/prod/sa/nope"])
    r = await with_assertion(server, assertion, svid=someone)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text
    svid = server.pki.example.issue("strict", [STRICT])
    r = await with_assertion(server, assertion, svid=svid)
    assert r.status_code == 200, r.text
    assert claims_of(r)["cnf"] == {"x5t#S256": svid.x5t}


async def test_self_registration_defaults_to_unbound(
    server: Running, keys: Keys
) -> None:
    sid = f"{TD}/ns/prod/sa/self-jwt"
    svid = server.pki.example.issue("self-jwt", [sid])
    r = await server.register(svid, {"token_endpoint_auth_method": "spiffe_jwt"})
    assert r.status_code == 201, r.text
    assert r.json()["spiffe_id"] == sid
    assert r.json()["tls_client_certificate_bound_access_tokens"] is False
    t = await with_assertion(server, svid_jwt(server, keys.example, sub=sid))
    assert t.status_code == 200, t.text


# -- wildcard clients -----------------------------------------------------------


@pytest.fixture(scope="module")
async def batch_clients(server: Running) -> tuple[Client, Client]:
    broad = await operator(server).add(f"{TD}/ns/batch/*", method="spiffe_jwt")
    narrow = await operator(server).add(f"{TD}/ns/batch/team-a/*", method="spiffe_jwt")
    return broad.client, narrow.client


@pytest.mark.parametrize(
    "sub,client_id",
    [
        (f"{TD}/ns/batch/job-1", f"{TD}/ns/batch/*"),
        (f"{TD}/ns/batch/x/y/z", f"{TD}/ns/batch/*"),
        (f"{TD}/ns/batch/team-a/job-2", f"{TD}/ns/batch/team-a/*"),
        (f"{TD}/ns/batch/team-ab", f"{TD}/ns/batch/*"),
    ],
    ids=["one-segment", "many-segments", "most-specific", "segment-boundary"],
)
async def test_wildcard_client(
    server: Running,
    keys: Keys,
    batch_clients: tuple[Client, Client],
    sub: str,
    client_id: str,
) -> None:
    r = await with_assertion(server, svid_jwt(server, keys.example, sub=sub))
    assert r.status_code == 200, r.text
    claims = claims_of(r)
    assert (claims["client_id"], claims["sub"]) == (client_id, sub)
    for sent in (sub, client_id):
        again = await with_assertion(
            server, svid_jwt(server, keys.example, sub=sub), client_id=sent
        )
        assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    "sub,form",
    [
        (f"{TD}/ns/batchjob", {}),
        (f"{TD}/ns/batch", {}),
        (f"{TD}/ns/batch/job-1", {"client_id": f"{TD}/ns/batch/team-a/*"}),
        (f"{TD}/ns/batch/job-1", {"client_id": REPORTER}),
    ],
    ids=["prefix-not-segment", "prefix-itself", "other-pattern", "other-client"],
)
async def test_wildcard_refusals(
    server: Running,
    keys: Keys,
    batch_clients: tuple[Client, Client],
    sub: str,
    form: dict[str, str],
) -> None:
    r = await with_assertion(server, svid_jwt(server, keys.example, sub=sub), **form)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text


async def test_wildcard_lookups_are_cached(
    server: Running, keys: Keys, batch_clients: tuple[Client, Client]
) -> None:
    """No query per request: the pattern list is cached until a client changes."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM clients" in statement:
            statements.append(statement)

    engine = server.services.db.engine.sync_engine
    sub = f"{TD}/ns/batch/cached"
    assertion = svid_jwt(server, keys.example, sub=sub)
    assert (await with_assertion(server, assertion)).status_code == 200
    event.listen(engine, "before_cursor_execute", record)
    try:
        for _ in range(5):
            assert (await with_assertion(server, assertion)).status_code == 200
        assert statements == []
        # A new, more specific pattern is seen at once (change notification).
        added = await operator(server).add(
            f"{TD}/ns/batch/cached/*", method="spiffe_jwt"
        )
        deeper = svid_jwt(server, keys.example, sub=f"{sub}/deeper")
        r = await with_assertion(server, deeper)
        assert claims_of(r)["client_id"] == added.client.client_id
    finally:
        event.remove(engine, "before_cursor_execute", record)


# -- refusals -----------------------------------------------------------------


async def test_registered_for_another_method(server: Running, keys: Keys) -> None:
    sid = f"{TD}/ns/prod/sa/x509-only"
    await operator(server).add(sid, method="tls_client_auth")
    r = await with_assertion(server, svid_jwt(server, keys.example, sub=sid))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text
    assert r.json()["error_description"] == (
        "client is registered for another authentication method"
    )


async def test_spiffe_jwt_client_cannot_use_a_certificate_alone(
    server: Running,
) -> None:
    svid = server.pki.example.issue("reporter-cert-only", [REPORTER])
    r = await server.token(svid, client_id=REPORTER)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text


def bad_assertions(server: Running, keys: Keys) -> dict[str, str]:
    issuer = server.issuer
    now = int(server.clock.time())
    base = {"sub": REPORTER, "aud": [issuer], "exp": now + 120}
    return {
        "alg-none": unsigned({"kid": "ex1", "typ": "JWT"}, base),
        "hs256-with-public-key": hmac_with_public_key(
            {"kid": "ex1", "typ": "JWT"}, base, keys.example.public_key()
        ),
        "alg-not-fitting-key": svid_jwt(
            server, ec.generate_private_key(ec.SECP384R1()), alg="ES384"
        ),
        "rs256-with-ec-key": svid_jwt(server, keys.example_rsa, alg="RS256"),
        "eddsa": svid_jwt(server, keys.example, alg="ES256", headers={"alg": "EdDSA"}),
        "header-jku": svid_jwt(
            server, keys.example, headers={"jku": "https://127.0.0.1:9/keys"}
        ),
        "header-jwk": svid_jwt(
            server, keys.example, headers={"jwk": jwk_of(keys.example.public_key())}
        ),
        "header-x5c": svid_jwt(server, keys.example, headers={"x5c": ["AAAA"]}),
        "header-x5u": svid_jwt(
            server, keys.example, headers={"x5u": "https://127.0.0.1:9/cert"}
        ),
        "no-kid": svid_jwt(server, keys.example, kid=None),
        "unknown-kid": svid_jwt(server, keys.example, kid="nope"),
        "sub-in-other-trust-domain": svid_jwt(server, keys.example, sub=OTHER_TD),
        "key-of-other-trust-domain": svid_jwt(server, keys.other, kid="ex1"),
        "json-serialization": json_serialization(svid_jwt(server, keys.example)),
        "aud-wrong": svid_jwt(server, keys.example, aud=["https://elsewhere.example"]),
        "aud-extra": svid_jwt(
            server, keys.example, aud=[issuer, "https://api.example.org"]
        ),
        "aud-token-endpoint": svid_jwt(server, keys.example, aud=[issuer + "/token"]),
        "aud-missing": svid_jwt(server, keys.example, aud=ABSENT),
        "expired": svid_jwt(server, keys.example, lifetime=-60),
        "too-long-lived": svid_jwt(server, keys.example, lifetime=3600),
        "no-exp": svid_jwt(server, keys.example, exp=ABSENT),
        "not-yet-valid": svid_jwt(server, keys.example, nbf=now + 300),
        "typ-at-jwt": svid_jwt(server, keys.example, typ="at+jwt"),
        "sub-not-spiffe": svid_jwt(server, keys.example, sub="https://reporter"),
        "sub-root-id": svid_jwt(server, keys.example, sub=TD),
        "garbage": "not.a.jwt",
    }


# case -> the reason swim-as logs (the public answer is the same for all).
BAD = {
    "alg-none": "alg",
    "hs256-with-public-key": "alg",
    "alg-not-fitting-key": "alg_mismatch",
    "rs256-with-ec-key": "alg_mismatch",
    "eddsa": "alg",
    "header-jku": "header",
    "header-jwk": "header",
    "header-x5c": "header",
    "header-x5u": "header",
    "no-kid": "kid",
    "unknown-kid": "unknown_kid",
    "sub-in-other-trust-domain": "unknown_kid",
    "key-of-other-trust-domain": "signature",
    "json-serialization": "json_serialization",
    "aud-wrong": "audience",
    "aud-extra": "audience",
    "aud-token-endpoint": "audience",
    "aud-missing": "audience",
    "expired": "expired",
    "too-long-lived": "lifetime",
    "no-exp": "exp",
    "not-yet-valid": "not_yet_valid",
    "typ-at-jwt": "typ",
    "sub-not-spiffe": "invalid_spiffe_id",
    "sub-root-id": "root_id",
    "garbage": "malformed",
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_jwt_svid(
    server: Running, keys: Keys, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    assertion = bad_assertions(server, keys)[case]
    with caplog.at_level(logging.INFO, logger="swim_as"):
        r = await with_assertion(server, assertion)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text
    assert r.headers["cache-control"] == "no-store"
    assert "WWW-Authenticate" not in r.headers
    refusals = [m for m in caplog.messages if m.startswith("token refused")]
    assert len(refusals) == 1 and f"(reason {BAD[case]})" in refusals[0], refusals
    # The assertion itself never reaches the log.
    for part in assertion.split("."):
        assert len(part) < 20 or part not in caplog.text


async def test_unknown_kid_reloads_at_most_once_per_interval(
    server: Running, keys: Keys
) -> None:
    refresher = server.services.jwt_refresher
    server.clock.advance(31)  # a fresh interval for this test
    before = refresher.reloads["example.org"]
    for _ in range(5):
        r = await with_assertion(server, svid_jwt(server, keys.example, kid="new-kid"))
        assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert refresher.reloads["example.org"] == before + 1
    server.clock.advance(31)
    r = await with_assertion(server, svid_jwt(server, keys.example, kid="new-kid"))
    assert r.status_code == 400
    assert refresher.reloads["example.org"] == before + 2


async def test_rotated_key_is_picked_up(server: Running, keys: Keys) -> None:
    """The trust domain adds a key; a JWT-SVID signed with it then works."""
    path = keys.jwt_files["example.org"]
    document = json.loads(path.read_text())
    document["keys"].append(
        jwk_of(keys.rotated.public_key(), kid="ex2", use="jwt-svid")
    )
    document["spiffe_sequence"] = 2
    path.write_text(json.dumps(document))
    server.clock.advance(31)
    assertion = svid_jwt(server, keys.rotated, kid="ex2")
    for _ in range(30):
        r = await with_assertion(server, assertion)
        if r.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "form,error",
    [
        ({"authorization": "Basic eDp5"}, "invalid_request"),
        ({"client_secret": "s3cret"}, "invalid_request"),
        ({"client_assertion_type": "urn:example:other"}, "invalid_client"),
    ],
    ids=["plus-basic-header", "plus-client-secret", "unknown-assertion-type"],
)
async def test_two_credentials_or_unknown_type(
    server: Running, keys: Keys, form: dict[str, str], error: str
) -> None:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_SPIFFE,
        "client_assertion": svid_jwt(server, keys.example),
    }
    headers = {}
    if "authorization" in form:
        headers["authorization"] = form.pop("authorization")
    data.update(form)
    async with server.client() as c:
        r = await c.post(f"{server.issuer}/token", data=data, headers=headers)
    assert (r.status_code, r.json()["error"]) == (400, error), r.text


async def test_discovery_lists_spiffe_jwt(server: Running) -> None:
    async with server.client() as c:
        doc = (
            await c.get(f"{server.issuer}/.well-known/oauth-authorization-server")
        ).json()
    assert "spiffe_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert "client_secret_basic" not in doc["token_endpoint_auth_methods_supported"]
    assert {"ES256", "RS256", "PS256"} <= set(
        doc["token_endpoint_auth_signing_alg_values_supported"]
    )
    assert "none" not in doc["token_endpoint_auth_signing_alg_values_supported"]
