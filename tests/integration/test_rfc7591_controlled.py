"""Controlled registration (RFC 7591 §3, §2.3): initial access tokens and
software statements, over real mTLS on PostgreSQL.

A platform controller registers other workloads and wildcard patterns
with an operator's initial access token, or with a software statement
from an issuer the operator configured. Every bad token and statement
gets its exact status and error.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from swim_as.storage.models import ClientRow, InitialAccessTokenRow
from tests.support import harness
from tests.support.harness import Running, running_server
from tests.support.lifecycle import (
    InProcessCli,
    audit_events,
    cli_config,
    info_logs,  # noqa: F401 (fixture)
    json_lines,
    run_cli,
)
from tests.support.postgres import create_database

TD = "spiffe://example.org"

# Every log call runs, as in production (INFO).
pytestmark = pytest.mark.usefixtures("info_logs")
CONTROLLER = f"{TD}/ns/platform/sa/controller"
STATEMENT_ISSUER = "https://controller.example.org"
LIMITED_ISSUER = "https://limited.example.org"


class Signer:
    """A statement issuer's key pair; the public half goes in a JWKS file."""

    def __init__(self, folder: Path, name: str, kid: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = kid
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        self.jwks_file = folder / f"{name}.jwks.json"
        self.jwks_file.write_text(
            json.dumps({"keys": [{**public, "kid": kid, "use": "sig"}]})
        )

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.key, algorithm="ES256", headers={"kid": self.kid, **header}
        )


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Signer]:
    folder = tmp_path_factory.mktemp("statement-issuers")
    return {
        "controller": Signer(folder, "controller", "ctl-1"),
        "limited": Signer(folder, "limited", "lim-1"),
        "stranger": Signer(folder, "stranger", "ctl-1"),
    }


@pytest.fixture(scope="module")
async def server(
    postgres_server: str,
    pki: harness.TestPki,
    tmp_path_factory: pytest.TempPathFactory,
    signers: dict[str, Signer],
) -> AsyncIterator[Running]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("controlled-server")
    async with running_server(
        pki,
        url,
        folder,
        software_statement_issuers=[
            {
                "issuer": STATEMENT_ISSUER,
                "jwks_file": signers["controller"].jwks_file,
            },
            {
                "issuer": LIMITED_ISSUER,
                "jwks_file": signers["limited"].jwks_file,
                "spiffe_id_patterns": [f"{TD}/ns/limited/*"],
            },
        ],
    ) as running:
        yield running


async def make_iat(
    server: Running,
    patterns: list[str],
    scopes: tuple[str, ...] = (),
    expires_in: timedelta = timedelta(hours=1),
) -> tuple[str, str]:
    token, record = await server.services.lifecycle.iats.create(
        patterns=patterns,
        scopes=scopes,
        expires_in=expires_in,
        actor="operator:test",
    )
    return token, record.id


async def register(
    server: Running,
    body: dict[str, Any],
    *,
    iat: str | None = None,
    svid: Any = None,
) -> Any:
    headers = {"authorization": f"Bearer {iat}"} if iat else {}
    async with server.client(svid) as c:
        return await c.post(f"{server.issuer}/register", json=body, headers=headers)


def wildcard_body(pattern: str, **extra: Any) -> dict[str, Any]:
    return {"token_endpoint_auth_method": "spiffe_jwt", "spiffe_id": pattern, **extra}


# -- initial access tokens ---------------------------------------------------------


async def test_controller_registers_a_wildcard_client(server: Running) -> None:
    pattern = f"{TD}/ns/batch/*"
    token, iat_id = await make_iat(server, [f"{TD}/ns/batch/*"], ("batch.run",))
    r = await register(
        server, wildcard_body(pattern, client_name="batch jobs"), iat=token
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["client_id"] == pattern
    assert body["spiffe_id"] == pattern
    assert body["token_endpoint_auth_method"] == "spiffe_jwt"
    assert body["registration_client_uri"] == (
        f"{server.issuer}/register/{quote(pattern, safe='')}"
    )
    client = await server.services.clients.get(pattern)
    assert client is not None and client.granted_scopes == frozenset({"batch.run"})
    assert client.created_by == f"iat:{iat_id}"
    # The returned registration access token manages it (RFC 7592).
    async with server.client() as c:
        read = await c.get(
            body["registration_client_uri"],
            headers={"authorization": f"Bearer {body['registration_access_token']}"},
        )
    assert read.status_code == 200, read.text
    assert read.json()["client_id"] == pattern
    events = await audit_events(server, client_id=pattern)
    assert [e.event for e in events] == ["client.registered", "iat.used"]
    assert events[0].actor == f"iat:{iat_id}"
    assert events[0].detail["via"] == "initial_access_token"
    assert events[1].detail == {"iat": iat_id, "created": True}
    async with server.services.db.reading() as session:
        row = await session.get(InitialAccessTokenRow, iat_id)
    assert row is not None and row.uses == 1 and row.last_used_at is not None
    assert row.token_hash != token and token not in json.dumps(row.patterns)


async def test_controller_registers_another_workload(server: Running) -> None:
    sid = f"{TD}/ns/batch/sa/worker"
    token, _ = await make_iat(server, [f"{TD}/ns/batch/*"], ("batch.run", "batch.read"))
    controller = server.pki.example.issue("controller-1", [CONTROLLER])
    r = await register(
        server,
        {
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_san_uri": sid,
            "scope": "batch.read",
        },
        iat=token,
        svid=controller,
    )
    assert r.status_code == 201, r.text
    assert r.json()["client_id"] == sid
    assert r.json()["token_endpoint_auth_method"] == "tls_client_auth"
    # The scope an IAT grants, narrowed by the registered scope.
    worker = server.pki.example.issue("batch-worker", [sid])
    t = await server.token(worker, client_id=sid)
    assert t.status_code == 200 and t.json()["scope"] == "batch.read"
    events = await audit_events(server, client_id=sid, prefix="client.registered")
    assert events[0].detail["caller"] == CONTROLLER


async def test_repeating_a_registration_returns_the_same_client(
    server: Running,
) -> None:
    sid = f"{TD}/ns/batch/sa/twice"
    token, iat_id = await make_iat(server, [f"{TD}/ns/batch/*"])
    first = await register(
        server,
        {
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_san_uri": sid,
        },
        iat=token,
    )
    again = await register(
        server,
        {
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_san_uri": sid,
        },
        iat=token,
    )
    assert (first.status_code, again.status_code) == (201, 200)
    uses = await audit_events(server, client_id=sid, prefix="iat.used")
    assert [u.detail["created"] for u in uses] == [True, False]


async def test_the_iat_cli_creates_lists_and_revokes(
    server: Running,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = cli_config(server, tmp_path)
    cli = InProcessCli(config, capsys, monkeypatch)
    created = await run_cli(
        config,
        "iat",
        "create",
        "--pattern",
        f"{TD}/ns/cli/*",
        "--scope",
        "cli.one cli.two",
        "--expires-in",
        "2h",
        "--description",
        "from the CLI",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert made["token"].startswith("swimiat_") and made["state"] == "active"
    assert made["scopes"] == ["cli.one", "cli.two"]
    assert made["token"] not in created.stderr
    r = await register(server, wildcard_body(f"{TD}/ns/cli/sub/*"), iat=made["token"])
    assert r.status_code == 201, r.text
    listed = await cli("iat", "list", "--json")
    entry = next(e for e in json_lines(listed.stdout) if e["id"] == made["id"])
    assert (entry["uses"], entry["created_by"]) == (
        1,
        f"operator:{pwd.getpwuid(os.geteuid()).pw_name}",
    )
    assert "token" not in entry
    revoked = await cli("iat", "revoke", made["id"])
    assert revoked.returncode == 0 and f"revoked: {made['id']}" in revoked.stdout
    again = await register(
        server, wildcard_body(f"{TD}/ns/cli/other/*"), iat=made["token"]
    )
    assert (again.status_code, again.json()["error"]) == (401, "invalid_token")
    assert 'error="invalid_token"' in again.headers["www-authenticate"]
    missing = await cli("iat", "revoke", "iat-000000000000")
    assert missing.returncode == 2 and "no such initial access token" in missing.stderr
    bad = await cli("iat", "create", "--pattern", "spiffe://example.org")
    assert bad.returncode == 2 and "names a trust domain" in bad.stderr


async def test_expired_token(server: Running) -> None:
    token, iat_id = await make_iat(
        server, [f"{TD}/ns/batch/*"], expires_in=timedelta(seconds=60)
    )
    server.clock.advance(61)
    try:
        r = await register(server, wildcard_body(f"{TD}/ns/batch/late/*"), iat=token)
    finally:
        server.clock.advance(-61)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")
    assert r.json()["error_description"] == "the initial access token has expired"
    refused = await audit_events(server, prefix="iat.refused")
    assert any(e.detail == {"iat": iat_id, "reason": "token expired"} for e in refused)


async def test_revoked_token(server: Running) -> None:
    token, iat_id = await make_iat(server, [f"{TD}/ns/batch/*"])
    await server.services.lifecycle.iats.revoke(iat_id, actor="operator:test")
    r = await register(server, wildcard_body(f"{TD}/ns/batch/revoked/*"), iat=token)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")
    assert r.json()["error_description"] == "the initial access token was revoked"
    events = [
        e.event
        for e in await audit_events(server, prefix="iat.")
        if e.detail.get("iat") == iat_id or e.actor == f"iat:{iat_id}"
    ]
    assert events == ["iat.created", "iat.revoked", "iat.refused"]


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer swimiat_unknown-token-0123456789"},
        {"authorization": "Bearer"},
        {"authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["unknown", "empty", "not-bearer"],
)
async def test_bad_token(server: Running, headers: dict[str, str]) -> None:
    async with server.client() as c:
        r = await c.post(
            f"{server.issuer}/register",
            json=wildcard_body(f"{TD}/ns/batch/x/*"),
            headers=headers,
        )
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")
    assert r.headers["www-authenticate"].startswith('Bearer realm="swim-as", error=')


@pytest.mark.parametrize(
    "body",
    [
        wildcard_body(f"{TD}/ns/elsewhere/*"),
        wildcard_body(f"{TD}/ns/*"),
        wildcard_body(f"{TD}/ns/batchy/*"),
        {
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_san_uri": f"{TD}/ns/elsewhere/sa/x",
        },
        {
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_san_uri": "spiffe://other.org/ns/batch/sa/x",
        },
    ],
    ids=[
        "other-namespace",
        "wider-wildcard",
        "not-a-segment-boundary",
        "exact-outside",
        "other-trust-domain",
    ],
)
async def test_outside_the_tokens_patterns(
    server: Running, body: dict[str, Any]
) -> None:
    token, iat_id = await make_iat(server, [f"{TD}/ns/batch/*"])
    r = await register(server, body, iat=token)
    assert (r.status_code, r.json()["error"]) == (403, "insufficient_scope"), r.text
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    refused = await audit_events(server, prefix="iat.refused")
    assert any(e.detail.get("iat") == iat_id for e in refused)


async def test_scope_outside_the_tokens_scopes(server: Running) -> None:
    token, _ = await make_iat(server, [f"{TD}/ns/batch/*"], ("batch.run",))
    r = await register(
        server,
        wildcard_body(f"{TD}/ns/batch/greedy/*", scope="batch.run admin"),
        iat=token,
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client_metadata")


async def test_a_wildcard_needs_the_jwt_method(server: Running) -> None:
    token, _ = await make_iat(server, [f"{TD}/ns/batch/*"])
    r = await register(
        server,
        {
            "token_endpoint_auth_method": "spiffe_x509",
            "spiffe_id": f"{TD}/ns/batch/x509/*",
        },
        iat=token,
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client_metadata")


async def test_a_wildcard_without_token_or_statement(server: Running) -> None:
    svid = server.pki.example.issue("wild-self", [f"{TD}/ns/batch/sa/self"])
    r = await register(server, wildcard_body(f"{TD}/ns/batch/*"), svid=svid)
    assert (r.status_code, r.json()["error"]) == (403, "access_denied")
    anonymous = await register(server, wildcard_body(f"{TD}/ns/batch/*"))
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="swim-as"'


async def test_someone_elses_id_without_token(server: Running) -> None:
    svid = server.pki.example.issue("not-controller", [f"{TD}/ns/batch/sa/nobody"])
    r = await register(
        server,
        {
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_san_uri": f"{TD}/ns/batch/sa/victim",
        },
        svid=svid,
    )
    assert (r.status_code, r.json()["error"]) == (403, "access_denied")


# -- software statements ----------------------------------------------------------


def statement_claims(**claims: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": STATEMENT_ISSUER, "iat": now, "exp": now + 300, **claims}


@pytest.mark.parametrize(
    "pinned",
    [
        {"client_name": "no identity"},
        {"tls_client_auth_san_uri": f"{TD}/ns/stmt/sa/pinned"},
        {"token_endpoint_auth_method": "tls_client_auth"},
    ],
    ids=["nothing", "identity-only", "method-only"],
)
async def test_statement_must_pin_identity_and_method(
    server: Running, signers: dict[str, Signer], pinned: dict[str, str]
) -> None:
    """A statement is a bearer credential: one that pins no SPIFFE ID and
    method could be replayed to register any ID its issuer may cover."""
    statement = signers["controller"].sign(statement_claims(**pinned))
    r = await register(
        server,
        {
            "software_statement": statement,
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_san_uri": f"{TD}/ns/stmt/sa/chosen-by-the-sender",
        },
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_software_statement")


async def test_statement_registers_and_overrides_the_body(
    server: Running, signers: dict[str, Signer]
) -> None:
    sid = f"{TD}/ns/stmt/sa/app"
    statement = signers["controller"].sign(
        statement_claims(
            tls_client_auth_san_uri=sid,
            token_endpoint_auth_method="tls_client_auth",
            client_name="from the statement",
            software_id="stmt-app",
        )
    )
    r = await register(
        server,
        {
            "software_statement": statement,
            "client_name": "from the body",
            "tls_client_auth_san_uri": f"{TD}/ns/stmt/sa/body-says-other",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["client_id"] == sid
    assert body["client_name"] == "from the statement"
    assert body["software_id"] == "stmt-app"
    # RFC 7591 §3.2.1: the statement is returned as it was sent.
    assert body["software_statement"] == statement
    assert "iss" not in body and "exp" not in body
    events = await audit_events(server, client_id=sid)
    assert events[0].actor == f"software_statement:{STATEMENT_ISSUER}"
    # An update may repeat the statement, not swap it (RFC 7592 §2.2).
    update = {
        k: v
        for k, v in body.items()
        if k
        not in (
            "registration_access_token",
            "registration_client_uri",
            "client_id_issued_at",
        )
    }
    headers = {"authorization": f"Bearer {body['registration_access_token']}"}
    async with server.client() as c:
        kept = await c.put(
            body["registration_client_uri"],
            json={**update, "client_name": "renamed"},
            headers=headers,
        )
        assert kept.status_code == 200, kept.text
        # The statement's value still wins over the body's.
        assert kept.json()["client_name"] == "from the statement"
        assert kept.json()["software_statement"] == statement
        other = signers["controller"].sign(
            statement_claims(tls_client_auth_san_uri=sid)
        )
        swapped = await c.put(
            body["registration_client_uri"],
            json={**update, "software_statement": other},
            headers=headers,
        )
        assert (swapped.status_code, swapped.json()["error"]) == (
            400,
            "invalid_software_statement",
        )


async def test_statement_registers_a_wildcard(
    server: Running, signers: dict[str, Signer]
) -> None:
    statement = signers["limited"].sign(
        {
            **statement_claims(iss=LIMITED_ISSUER),
            **wildcard_body(f"{TD}/ns/limited/jobs/*"),
        }
    )
    r = await register(server, {"software_statement": statement})
    assert r.status_code == 201, r.text
    assert r.json()["client_id"] == f"{TD}/ns/limited/jobs/*"


def _none_statement() -> str:
    header = jwt.utils.base64url_encode(
        json.dumps({"alg": "none", "typ": "JWT"}).encode()
    )
    payload = jwt.utils.base64url_encode(
        json.dumps(
            statement_claims(tls_client_auth_san_uri=f"{TD}/ns/stmt/sa/none")
        ).encode()
    )
    return f"{header.decode()}.{payload.decode()}."


@pytest.mark.parametrize(
    "make,error",
    [
        (lambda s: _none_statement(), "invalid_software_statement"),
        (
            lambda s: s["stranger"].sign(
                statement_claims(tls_client_auth_san_uri=f"{TD}/ns/stmt/sa/forged")
            ),
            "invalid_software_statement",
        ),
        (
            lambda s: s["controller"].sign(
                statement_claims(
                    tls_client_auth_san_uri=f"{TD}/ns/stmt/sa/stale",
                    exp=int(time.time()) - 120,
                )
            ),
            "invalid_software_statement",
        ),
        (
            lambda s: s["controller"].sign(
                statement_claims(
                    tls_client_auth_san_uri=f"{TD}/ns/stmt/sa/early",
                    nbf=int(time.time()) + 600,
                )
            ),
            "invalid_software_statement",
        ),
        (
            lambda s: s["controller"].sign(
                statement_claims(
                    tls_client_auth_san_uri=f"{TD}/ns/stmt/sa/aud",
                    aud="https://other-as.example",
                )
            ),
            "invalid_software_statement",
        ),
        (
            lambda s: jwt.encode(
                statement_claims(tls_client_auth_san_uri=f"{TD}/ns/stmt/sa/hmac"),
                "a-shared-secret-that-is-long-enough-for-hs256",
                algorithm="HS256",
                headers={"kid": "ctl-1"},
            ),
            "invalid_software_statement",
        ),
        (lambda s: "not.a.jwt", "invalid_software_statement"),
        (lambda s: 42, "invalid_software_statement"),
        (
            lambda s: s["stranger"].sign(
                statement_claims(
                    iss="https://stranger.example",
                    tls_client_auth_san_uri=f"{TD}/ns/stmt/sa/x",
                )
            ),
            "unapproved_software_statement",
        ),
        (
            lambda s: s["limited"].sign(
                statement_claims(
                    iss=LIMITED_ISSUER,
                    token_endpoint_auth_method="tls_client_auth",
                    tls_client_auth_san_uri=f"{TD}/ns/stmt/sa/outside",
                )
            ),
            "unapproved_software_statement",
        ),
    ],
    ids=[
        "alg-none",
        "wrong-signature",
        "expired",
        "not-yet-valid",
        "other-audience",
        "hmac",
        "garbage",
        "not-a-string",
        "unknown-issuer",
        "issuer-outside-its-patterns",
    ],
)
async def test_bad_statement(
    server: Running, signers: dict[str, Signer], make: Any, error: str
) -> None:
    r = await register(server, {"software_statement": make(signers)})
    assert (r.status_code, r.json()["error"]) == (400, error), r.text
    async with server.services.db.reading() as session:
        rows = (
            await session.scalars(
                select(ClientRow.client_id).where(
                    ClientRow.client_id.like(f"{TD}/ns/stmt/sa/%")
                )
            )
        ).all()
    assert not set(rows) - {f"{TD}/ns/stmt/sa/app"}
