"""The audit trail of a client's life, read back with `swim-as audit`.

Every lifecycle change is a record written with the change; token
issuance and authentication failures are counted in memory and written in
batches (``AuditBuffer``). The CLI runs as a child process against the
test database.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import harness
from tests.support.harness import Running, running_server
from tests.support.lifecycle import (
    InProcessCli,
    admin,
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
WORKER = f"{TD}/ns/trail/sa/worker"
JIT = f"{TD}/ns/trail/sa/newcomer"
CONTROLLER = f"{TD}/ns/platform/sa/controller"
POLICY = f"""
[[rule]]
name = "trail"
match = "{TD}/ns/trail/*"
scopes = ["trail.read"]
jit = true
"""


@pytest.fixture(scope="module")
async def server(
    postgres_server: str, pki: harness.TestPki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("trail-server")
    policy = folder / "policy.toml"
    policy.write_text(POLICY)
    async with running_server(pki, url, folder, policy={"file": policy}) as running:
        yield running


async def test_every_step_is_in_the_trail(
    server: Running,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = cli_config(server, tmp_path)
    cli = InProcessCli(config, capsys, monkeypatch)
    audit = server.services.audit

    # An operator makes an initial access token (CLI).
    made = await run_cli(
        config, "iat", "create", "--pattern", f"{TD}/ns/trail/*", "--json"
    )
    assert made.returncode == 0, made.stderr
    iat = json.loads(made.stdout)

    # A controller registers a workload with it.
    controller = server.pki.example.issue("trail-controller", [CONTROLLER])
    async with server.client(controller) as c:
        r = await c.post(
            f"{server.issuer}/register",
            json={
                "token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_san_uri": WORKER,
                "client_name": "worker",
            },
            headers={"authorization": f"Bearer {iat['token']}"},
        )
    assert r.status_code == 201, r.text
    reg = r.json()

    # The workload gets a token; a stranger fails to authenticate as it.
    issued_before = audit.counters["token.issued"]
    failed_before = audit.counters["client_auth.failed"]
    worker = server.pki.example.issue("trail-worker", [WORKER])
    assert (await server.token(worker, client_id=WORKER)).status_code == 200
    impostor = server.pki.example.issue("trail-impostor", [f"{TD}/ns/trail/sa/x"])
    bad = await server.token(impostor, client_id=WORKER)
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_client")
    # Counted at once, in memory; written by the buffer.
    assert audit.counters["token.issued"] == issued_before + 1
    assert audit.counters["client_auth.failed"] == failed_before + 1

    # The workload updates its registration.
    update = {
        "client_id": WORKER,
        "token_endpoint_auth_method": "tls_client_auth",
        "tls_client_auth_san_uri": WORKER,
        "client_name": "worker v2",
    }
    async with server.client() as c:
        put = await c.put(
            reg["registration_client_uri"],
            json=update,
            headers={"authorization": f"Bearer {reg['registration_access_token']}"},
        )
    assert put.status_code == 200, put.text

    # A newcomer arrives just in time; an operator switches it off and on.
    newcomer = server.pki.example.issue("trail-newcomer", [JIT])
    assert (await server.token(newcomer, client_id=JIT)).status_code == 200
    await admin(server, "operator:alice").set_disabled(JIT, True)
    await admin(server, "operator:alice").set_disabled(JIT, False)

    # The token is revoked; the policy file is broken; the worker leaves.
    revoked = await cli("iat", "revoke", iat["id"])
    assert revoked.returncode == 0, revoked.stderr
    policy = server.settings.policy.file
    assert policy is not None
    policy.write_text(POLICY + "[[rule]]\nname = 'oops'\n")
    policy_file = server.services.lifecycle.policy
    assert policy_file is not None
    await policy_file.reload()
    async with server.client() as c:
        gone = await c.delete(
            reg["registration_client_uri"],
            headers={"authorization": f"Bearer {reg['registration_access_token']}"},
        )
    assert gone.status_code == 204
    await audit.flush()

    out = await run_cli(config, "audit", "--json", "--limit", "1000")
    assert out.returncode == 0, out.stderr
    trail = json_lines(out.stdout)
    events = [e["event"] for e in trail]
    for expected in (
        "policy.loaded",
        "iat.created",
        "client.registered",
        "iat.used",
        "token.issued",
        "client_auth.failed",
        "client.updated",
        "client.jit_created",
        "client.disabled",
        "client.enabled",
        "iat.revoked",
        "policy.rejected",
        "client.deleted",
    ):
        assert expected in events, (expected, events)
    assert [e["at"] for e in trail] == sorted(e["at"] for e in trail)
    # Never a token in the trail.
    assert iat["token"] not in out.stdout
    assert reg["registration_access_token"] not in out.stdout

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    # The filters (in this process: the child process above covers the
    # installed command).
    by_worker = await cli("audit", "--client", WORKER, "--json")
    by_event = await cli("audit", "--event", "client_auth.", "--json")
    by_actor = await cli("audit", "--actor", "operator:alice", "--json")
    newest = await cli("audit", "--limit", "2", "--json")
    from_later = await cli("audit", "--since", later)
    until_an_hour_ago = await cli("audit", "--until", "1h")
    recent = await cli("audit", "--since", "1h", "--event", "policy.")
    wrong = await cli("audit", "--since", "yesterday")
    worker_trail = json_lines(by_worker.stdout)
    assert [e["event"] for e in worker_trail] == [
        "client.registered",
        "iat.used",
        "token.issued",
        "client.updated",
        "client.deleted",
    ]
    assert worker_trail[0]["actor"] == f"iat:{iat['id']}"
    assert worker_trail[0]["detail"]["caller"] == CONTROLLER
    assert worker_trail[3]["detail"]["after"]["client_name"] == "worker v2"
    failures = json_lines(by_event.stdout)
    # Nobody proved who failed: the claimed client_id is detail, not actor.
    assert failures[-1]["actor"] == "unauthenticated"
    assert failures[-1]["detail"]["claimed_client_id"] == WORKER
    assert "!= SVID" in failures[-1]["detail"]["reason"]
    assert [(e["event"], e["client_id"]) for e in json_lines(by_actor.stdout)] == [
        ("client.disabled", JIT),
        ("client.enabled", JIT),
    ]
    assert [e["event"] for e in json_lines(newest.stdout)] == events[-2:]
    assert from_later.stdout == "" and until_an_hour_ago.stdout == ""
    assert recent.returncode == 0
    lines = recent.stdout.splitlines()
    assert len(lines) == 2
    assert "policy.loaded" in lines[0] and "policy.rejected" in lines[1]
    assert wrong.returncode == 2 and "not a time" in wrong.stderr


async def test_token_path_events_are_batched(server: Running) -> None:
    """`token.issued` goes through the buffer: queued, then written at once."""
    sid = f"{TD}/ns/trail/sa/batched"
    svid = server.pki.example.issue("trail-batched", [sid])
    audit = server.services.audit
    await audit.flush()
    for _ in range(3):
        assert (await server.token(svid, client_id=sid)).status_code == 200
    written = await audit.flush()
    events = await audit_events(server, client_id=sid, prefix="token.")
    assert len(events) == 3 and written <= 3
    assert {e.detail["scope"][0] for e in events} == {"trail.read"}
