"""The policy file changes under a running server (D8).

A good change takes effect within the poll interval and is audited once
(``policy.loaded``); a bad one keeps the last good policy, logs an ERROR
and is audited (``policy.rejected``). Replicas that load the same content
leave one record between them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from swim_as.clock import SystemClock
from swim_as.policy.rules import PolicyError
from swim_as.policy.source import PolicyFile
from swim_as.storage.db import Database
from swim_as.storage.models import AuditRow
from tests.support import harness
from tests.support.harness import Running, running_server
from tests.support.lifecycle import info_logs  # noqa: F401 (fixture)
from tests.support.postgres import create_database

TD = "spiffe://example.org"

# Every log call runs, as in production (INFO).
pytestmark = pytest.mark.usefixtures("info_logs")
SID = f"{TD}/ns/reload/sa/app"


def policy_text(scope: str) -> str:
    return (
        f'[[rule]]\nname = "reload"\nmatch = "{TD}/ns/reload/*"\n'
        f'scopes = ["{scope}"]\njit = true\n'
    )


def replace_file(path: Path, text: str) -> None:
    """As a config manager does: write aside, then rename over."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
async def server(
    postgres_server: str, pki: harness.TestPki, tmp_path: Path
) -> AsyncIterator[Running]:
    url = await create_database(postgres_server)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text("before"))
    async with running_server(
        pki, url, tmp_path / "server", policy={"file": policy}
    ) as running:
        yield running


async def policy_events(server: Running) -> list[AuditRow]:
    async with server.services.db.reading() as session:
        return list(
            (
                await session.scalars(
                    select(AuditRow)
                    .where(AuditRow.event.startswith("policy."))
                    .order_by(AuditRow.id)
                )
            ).all()
        )


async def wait_for_events(server: Running, count: int) -> list[AuditRow]:
    for _ in range(100):  # at most 10 s
        events = await policy_events(server)
        if len(events) >= count:
            return events
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {count} policy records, got {events}")


async def scope_of(server: Running, svid: object) -> object:
    r = await server.token(svid, client_id=SID)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return r.json().get("scope")


async def test_reload_good_bad_good(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    policy = server.settings.policy.file
    assert policy is not None
    svid = server.pki.example.issue("reload-app", [SID])
    assert await scope_of(server, svid) == "before"

    caplog.set_level(logging.INFO, logger="swim_as.policy")
    replace_file(policy, policy_text("before") + "broken = [\n")
    events = await wait_for_events(server, 2)
    assert [e.event for e in events] == ["policy.loaded", "policy.rejected"]
    assert "TOML syntax error" in events[1].detail["errors"][0]
    assert events[1].detail["kept_sha256"] == events[0].detail["sha256"]
    refused = [
        r for r in caplog.records if getattr(r, "event", "") == "policy.rejected"
    ]
    assert refused and refused[0].levelno == logging.ERROR
    # The last good policy is still in force.
    assert await scope_of(server, svid) == "before"

    replace_file(policy, policy_text("after"))
    events = await wait_for_events(server, 3)
    assert [e.event for e in events] == [
        "policy.loaded",
        "policy.rejected",
        "policy.loaded",
    ]
    assert await scope_of(server, svid) == "after"


async def test_a_tie_on_reload_is_refused_naming_both_rules(server: Running) -> None:
    policy = server.settings.policy.file
    assert policy is not None
    replace_file(
        policy,
        policy_text("before")
        + f'[[rule]]\nname = "twin"\nmatch = "{TD}/ns/reload/*"\nscopes = ["x"]\n',
    )
    events = await wait_for_events(server, 2)
    assert events[-1].event == "policy.rejected"
    assert any("'reload'" in e and "'twin'" in e for e in events[-1].detail["errors"])


async def test_replicas_record_a_change_once(server: Running, tmp_path: Path) -> None:
    """Twenty replicas starting on the same file leave no extra records;
    twenty noticing one change leave one."""
    policy = server.settings.policy.file
    assert policy is not None
    url = server.settings.database.url
    replicas = []
    for _ in range(20):
        db = Database(url)
        replica = PolicyFile(policy, db, SystemClock())
        replica.load_initial()
        replicas.append((db, replica))
    try:
        written = await asyncio.gather(*(r.record_loaded() for _, r in replicas))
        assert not any(written)
        replace_file(policy, policy_text("changed"))
        await asyncio.gather(*(r.reload() for _, r in replicas))
        events = await wait_for_events(server, 2)
        await asyncio.sleep(1.5)  # the server's own watcher sees it too
        events = await policy_events(server)
        assert [e.event for e in events] == ["policy.loaded", "policy.loaded"]
    finally:
        for db, _ in replicas:
            await db.close()


def test_a_bad_file_at_start_up_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[[rule]]\nname = "x"\nmatch = "spiffe://example.org/ns//a"\n')
    replica = PolicyFile(
        path, Database(f"sqlite+aiosqlite:///{tmp_path}/x.db"), SystemClock()
    )
    with pytest.raises(PolicyError, match="rule 'x': match"):
        replica.load_initial()
