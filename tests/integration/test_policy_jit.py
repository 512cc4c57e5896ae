"""Policy decisions and just-in-time registration over real mTLS (D8, D13).

A swim-as on PostgreSQL with a policy file: a workload that matches a
``jit`` rule gets its client and a token on its first request (one client
for a burst of 50), a workload outside every rule gets ``invalid_client``,
and scopes and audiences outside its rule get ``invalid_scope`` and
``invalid_target``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from sqlalchemy import func, select

from swim_as.storage.models import AuditRow, ClientRow
from tests.support import harness
from tests.support.harness import Running, running_server
from tests.support.lifecycle import (
    admin,
    audit_events,
    info_logs,  # noqa: F401 (fixture)
)
from tests.support.postgres import create_database

TD = "spiffe://example.org"

# Every log call runs, as in production (INFO).
pytestmark = pytest.mark.usefixtures("info_logs")

POLICY = f"""
[[rule]]
name = "jit-ns"
match = "{TD}/ns/jit/*"
scopes = ["jit.read", "jit.write"]
audiences = ["https://jit.example.org", "https://jit-admin.example.org"]
default_audience = "https://jit.example.org"
max_lifetime_seconds = 120
jit = true

[[rule]]
name = "jit-reader"
match = "{TD}/ns/jit/sa/reader"
scopes = ["jit.read"]
audiences = ["https://jit.example.org"]
default_audience = "https://jit.example.org"
jit = true

[[rule]]
name = "self-registered"
match = "{TD}/ns/reg/*"
scopes = ["reg.read"]
self_register = true

[[rule]]
name = "example-baseline"
match = "{TD}/*"
scopes = ["health"]
"""


@pytest.fixture(scope="module")
async def server(
    postgres_server: str, pki: harness.TestPki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("policy-server")
    policy = folder / "policy.toml"
    policy.write_text(POLICY)
    async with running_server(pki, url, folder, policy={"file": policy}) as running:
        yield running


async def count_clients(server: Running, client_id: str) -> int:
    async with server.services.db.reading() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(ClientRow)
                .where(ClientRow.client_id == client_id)
            )
            or 0
        )


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})  # type: ignore[no-any-return]


async def test_first_request_creates_the_client_and_gets_a_token(
    server: Running,
) -> None:
    sid = f"{TD}/ns/jit/sa/first"
    svid = server.pki.example.issue("jit-first", [sid])
    assert await count_clients(server, sid) == 0
    r = await server.token(svid, client_id=sid)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "jit.read jit.write"
    assert body["expires_in"] == 120
    claims = claims_of(body["access_token"])
    assert claims["aud"] == "https://jit.example.org"
    assert claims["sub"] == sid and claims["cnf"] == {"x5t#S256": svid.x5t}
    client = await server.services.clients.get(sid)
    assert client is not None
    assert client.auth_method == "tls_client_auth"
    assert client.metadata["tls_client_auth_san_uri"] == sid
    assert client.granted_scopes == frozenset() and client.created_by == sid
    events = await audit_events(server, client_id=sid)
    assert [e.event for e in events] == ["client.jit_created", "token.issued"]
    assert events[0].detail["rule"] == "jit-ns"
    # The second request finds the client; nothing more is created.
    again = await server.token(svid, client_id=sid, scope="jit.read")
    assert again.status_code == 200 and again.json()["scope"] == "jit.read"
    assert await count_clients(server, sid) == 1


async def test_fifty_concurrent_first_requests_create_one_client(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    sid = f"{TD}/ns/jit/sa/burst"
    svid = server.pki.example.issue("jit-burst", [sid])
    caplog.set_level(logging.INFO, logger="swim_as.registration")
    results = await asyncio.gather(
        *(server.token(svid, client_id=sid) for _ in range(50))
    )
    # One insert attempt in this process (single flight), none repeated.
    attempts = [
        r
        for r in caplog.records
        if getattr(r, "client_id", None) == sid
        and getattr(r, "event", "").startswith("client.")
    ]
    assert [getattr(r, "event") for r in attempts] == ["client.jit_created"]
    assert [r.status_code for r in results] == [200] * 50, {
        r.text for r in results if r.status_code != 200
    }
    assert await count_clients(server, sid) == 1
    created = await audit_events(server, client_id=sid, prefix="client.")
    assert [e.event for e in created] == ["client.jit_created"]
    issued = await audit_events(server, client_id=sid, prefix="token.issued")
    assert len(issued) == 50


async def test_the_exact_rule_beats_the_prefix(server: Running) -> None:
    sid = f"{TD}/ns/jit/sa/reader"
    svid = server.pki.example.issue("jit-reader", [sid])
    r = await server.token(svid, client_id=sid)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "jit.read"
    assert r.json()["expires_in"] == 300  # this rule sets no lifetime
    refused = await server.token(svid, client_id=sid, scope="jit.write")
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_scope")
    events = await audit_events(server, client_id=sid, prefix="client.jit")
    assert events[0].detail["rule"] == "jit-reader"


@pytest.mark.parametrize(
    "stem,sid",
    [
        ("outside-other-td", "spiffe://other.org/ns/jit/sa/x"),
        ("outside-no-jit", f"{TD}/ns/misc/sa/no-jit"),
        ("outside-reg-no-jit", f"{TD}/ns/reg/sa/no-jit"),
    ],
    ids=["no-rule", "rule-without-jit", "self-register-rule-without-jit"],
)
async def test_without_client_and_jit_the_client_is_unknown(
    server: Running, stem: str, sid: str
) -> None:
    authority = (
        server.pki.other if sid.startswith("spiffe://other") else server.pki.example
    )
    svid = authority.issue(stem, [sid])
    r = await server.token(svid, client_id=sid)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert await count_clients(server, sid) == 0


@pytest.mark.parametrize(
    "form,status,error",
    [
        ({"scope": "jit.admin"}, 400, "invalid_scope"),
        ({"scope": "jit.read health"}, 400, "invalid_scope"),
        ({"resource": "https://api.example.org"}, 400, "invalid_target"),
        ({"resource": "https://elsewhere.example"}, 400, "invalid_target"),
        ({"resource": "https://jit-admin.example.org"}, 200, None),
    ],
    ids=[
        "scope-not-in-rule",
        "scope-of-a-losing-rule",
        "global-default-not-allowed-when-rule-has-default",
        "unknown-resource",
        "allowed-resource",
    ],
)
async def test_scopes_and_audiences_outside_the_rule(
    server: Running, form: dict[str, str], status: int, error: str | None
) -> None:
    sid = f"{TD}/ns/jit/sa/bounded"
    svid = server.pki.example.issue("jit-bounded", [sid])
    r = await server.token(svid, client_id=sid, **form)
    assert r.status_code == status, r.text
    if error is None:
        assert claims_of(r.json()["access_token"])["aud"] == form["resource"]
    else:
        assert r.json()["error"] == error


async def test_operator_grants_add_and_registration_narrows(server: Running) -> None:
    # A registered client under a rule: rule scopes ∪ operator grants.
    sid = f"{TD}/ns/reg/sa/granted"
    svid = server.pki.example.issue("reg-granted", [sid])
    await admin(server).add(sid, method="tls_client_auth", scopes=["ops.extra"])
    r = await server.token(svid, client_id=sid)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "ops.extra reg.read"
    assert claims_of(r.json()["access_token"])["aud"] == "https://api.example.org"
    # A self-registered client that narrowed itself to one scope.
    narrow = f"{TD}/ns/reg/sa/narrow"
    narrow_svid = server.pki.example.issue("reg-narrow", [narrow])
    reg = await server.register(
        narrow_svid, {"scope": "reg.read", "token_endpoint_auth_method": "spiffe_x509"}
    )
    assert reg.status_code == 201, reg.text
    await admin(server).grant(narrow, ["ops.extra"])
    t = await server.token(narrow_svid, client_id=narrow)
    assert t.status_code == 200 and t.json()["scope"] == "reg.read"
    refused = await server.token(narrow_svid, client_id=narrow, scope="ops.extra")
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_scope")


@pytest.mark.parametrize(
    "sid,status,error",
    [
        (f"{TD}/ns/reg/sa/welcome", 201, None),
        (f"{TD}/ns/jit/sa/jit-only", 403, "access_denied"),
        (f"{TD}/ns/misc/sa/baseline-only", 403, "access_denied"),
    ],
    ids=["rule-allows", "jit-rule-without-self-register", "baseline-rule"],
)
async def test_self_registration_follows_the_policy(
    server: Running, sid: str, status: int, error: str | None
) -> None:
    svid = server.pki.example.issue(f"self-{sid.rsplit('/', 1)[1]}", [sid])
    r = await server.register(svid, {})
    assert r.status_code == status, r.text
    if error:
        assert r.json()["error"] == error
        assert await count_clients(server, sid) == 0


async def test_self_registration_outside_every_rule(server: Running) -> None:
    sid = "spiffe://other.org/ns/reg/sa/stranger"
    svid = server.pki.other.issue("stranger", [sid])
    r = await server.register(svid, {})
    assert (r.status_code, r.json()["error"]) == (403, "access_denied")


async def test_a_disabled_client_is_not_recreated(server: Running) -> None:
    sid = f"{TD}/ns/jit/sa/switched-off"
    svid = server.pki.example.issue("jit-off", [sid])
    assert (await server.token(svid, client_id=sid)).status_code == 200
    await admin(server).set_disabled(sid, True)
    r = await server.token(svid, client_id=sid)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert await count_clients(server, sid) == 1
    jit = await audit_events(server, client_id=sid, prefix="client.jit")
    assert len(jit) == 1


async def test_policy_loaded_is_audited_once(server: Running) -> None:
    async with server.services.db.reading() as session:
        loaded = (
            await session.scalars(
                select(AuditRow).where(AuditRow.event == "policy.loaded")
            )
        ).all()
    assert len(loaded) == 1
    assert loaded[0].detail["rules"] == [
        "jit-ns",
        "jit-reader",
        "self-registered",
        "example-baseline",
    ]
    policy = server.services.lifecycle.policy
    assert policy is not None
    assert loaded[0].detail["sha256"] == policy.current.sha256
