"""Expiry and deprovisioning: last-seen times in batches, the idle-client job.

The job runs against a real server on PostgreSQL with the server's clock
moved forward (``OffsetClock``), and at the service level on both
databases with a fixed clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from swim_as.clients.lifecycle import EXPIRY_LOCK_KEY, ExpiryJob, SeenTracker
from swim_as.clock import FixedClock
from swim_as.storage.clients import SqlClientRepository
from swim_as.storage.db import Database
from swim_as.storage.migrate import upgrade
from swim_as.storage.models import AuditRow, ClientRow
from tests.support import harness
from tests.support.harness import Running, running_server
from tests.support.lifecycle import (
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
IDLE = f"{TD}/ns/expiry/sa/idle"
BUSY = f"{TD}/ns/expiry/sa/busy"
HELD = f"{TD}/ns/expiry/sa/held"
REVIVED = f"{TD}/ns/expiry/sa/revived"


@pytest.fixture(scope="module")
async def server(
    postgres_server: str, pki: harness.TestPki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("expiry-server")
    async with running_server(
        pki,
        url,
        folder,
        lifecycle={
            "disable_after_seconds": 600,
            "delete_after_seconds": 600,
            # The test runs the job itself, and flushes itself.
            "check_every_seconds": 3600,
            "seen_flush_seconds": 60,
        },
    ) as running:
        yield running


async def row(server: Running, client_id: str) -> ClientRow | None:
    async with server.services.db.reading() as session:
        return await session.get(ClientRow, client_id)


async def test_last_seen_is_written_in_batches(server: Running) -> None:
    sid = f"{TD}/ns/expiry/sa/seen"
    svid = server.pki.example.issue("expiry-seen", [sid])
    await admin(server).add(sid, method="tls_client_auth")
    seen = server.services.lifecycle.seen
    for _ in range(5):
        assert (await server.token(svid, client_id=sid)).status_code == 200
    # No write on the token path: the time is only in memory so far.
    stored = await row(server, sid)
    assert stored is not None and stored.last_seen_at is None
    assert seen.pending >= 1
    assert await seen.flush() >= 1
    stored = await row(server, sid)
    assert stored is not None and stored.last_seen_at is not None
    # Within a minute, more requests write nothing more.
    assert (await server.token(svid, client_id=sid)).status_code == 200
    assert seen.pending == 0
    assert await seen.flush() == 0


async def test_idle_clients_are_disabled_then_deleted(
    server: Running, tmp_path: Path
) -> None:
    tokens = server.pki.example
    svids = {
        sid: tokens.issue(sid.rsplit("/", 1)[1], [sid])
        for sid in (IDLE, BUSY, HELD, REVIVED)
    }
    for sid in svids:
        await admin(server).add(sid, method="tls_client_auth")
    await admin(server, "operator:alice").set_disabled(HELD, True)
    job = server.services.lifecycle.expiry

    assert (await server.token(svids[BUSY], client_id=BUSY)).status_code == 200
    first = await job.run_once()
    assert first.disabled == [] and first.deleted == []

    server.clock.advance(700)
    try:
        assert (await server.token(svids[BUSY], client_id=BUSY)).status_code == 200
        second = await job.run_once()
        assert IDLE in second.disabled and REVIVED in second.disabled
        assert BUSY not in second.disabled and HELD not in second.disabled
        refused = await server.token(svids[IDLE], client_id=IDLE)
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_client")
        # An operator brings one back; its idle time starts again.
        await admin(server).set_disabled(REVIVED, False)

        server.clock.advance(700)
        assert (await server.token(svids[BUSY], client_id=BUSY)).status_code == 200
        assert (
            await server.token(svids[REVIVED], client_id=REVIVED)
        ).status_code == 200
        third = await job.run_once()
        assert IDLE in third.deleted
        assert not {BUSY, HELD, REVIVED} & set(third.deleted + third.disabled)
        assert await row(server, IDLE) is None
        assert await server.services.clients.deleted_at(IDLE) is not None
        # What an operator disabled is left to the operator.
        held = await row(server, HELD)
        assert held is not None and held.disabled and held.disabled_reason == "operator"
        assert (await row(server, BUSY)).disabled is False  # type: ignore[union-attr]
    finally:
        server.clock.advance(-1400)

    events = await audit_events(server, client_id=IDLE)
    assert [e.event for e in events] == [
        "client.added",
        "client.expired_disabled",
        "client.expired_deleted",
    ]
    assert events[1].actor == "swim-as:expiry"
    assert events[1].detail["disable_after_seconds"] == 600
    assert events[1].detail["idle_seconds"] >= 700
    assert events[2].detail["delete_after_seconds"] == 600

    # `swim-as audit` shows the same story, filtered, as JSON lines.
    config = cli_config(server, tmp_path)
    out = await run_cli(config, "audit", "--client", IDLE, "--json")
    assert out.returncode == 0, out.stderr
    assert [e["event"] for e in json_lines(out.stdout)] == [e.event for e in events]
    only = await run_cli(
        config,
        "audit",
        "--actor",
        "swim-as:expiry",
        "--event",
        "client.expired_del",
        "--json",
    )
    deleted = {e["client_id"] for e in json_lines(only.stdout)}
    assert IDLE in deleted and not {BUSY, HELD, REVIVED} & deleted


# -- the job and the tracker on both databases --------------------------------------


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await asyncio.to_thread(upgrade, db_url)
    database = Database(db_url)
    yield database
    await database.close()


T0 = datetime(2026, 12, 1, tzinfo=UTC)


async def add_client(
    db: Database, client_id: str, at: datetime, **values: object
) -> None:
    async with db.transaction() as tx:
        await SqlClientRepository(db).insert_if_absent(
            tx,
            {
                "client_id": client_id,
                "spiffe_id": client_id,
                "auth_method": "spiffe_x509",
                "client_metadata": {"spiffe_id": client_id},
                "granted_scopes": [],
                "disabled": False,
                "created_at": at,
                "updated_at": at,
                "created_by": "test",
                **values,
            },
        )


async def test_job_on_both_databases(db: Database) -> None:
    clock = FixedClock(T0.timestamp())
    repo = SqlClientRepository(db)
    await add_client(db, "spiffe://x/old", T0 - timedelta(days=2))
    await add_client(db, "spiffe://x/new", T0)
    await add_client(
        db,
        "spiffe://x/seen",
        T0 - timedelta(days=2),
        last_seen_at=T0 - timedelta(hours=1),
    )
    job = ExpiryJob(db, repo, clock, disable_after=86400, delete_after=3600)
    result = await job.run_once()
    assert result.disabled == ["spiffe://x/old"] and not result.skipped
    clock.advance(3601)
    result = await job.run_once()
    assert result.deleted == ["spiffe://x/old"]
    assert await repo.get("spiffe://x/old") is None
    assert await repo.get("spiffe://x/seen") is not None
    async with db.reading() as session:
        events = (
            await session.scalars(select(AuditRow.event).order_by(AuditRow.id))
        ).all()
    assert list(events) == ["client.expired_disabled", "client.expired_deleted"]


async def test_seen_tracker_only_moves_forward(db: Database) -> None:
    clock = FixedClock(T0.timestamp())
    repo = SqlClientRepository(db)
    await add_client(db, "spiffe://x/a", T0)
    async with db.transaction() as tx:
        await repo.touch_many(tx, {"spiffe://x/a": T0 + timedelta(minutes=5)})
    async with db.transaction() as tx:
        await repo.touch_many(
            tx, {"spiffe://x/a": T0 + timedelta(minutes=1), "spiffe://x/nobody": T0}
        )
    async with db.reading() as session:
        stored = await session.get(ClientRow, "spiffe://x/a")
    assert stored is not None and stored.last_seen_at == T0 + timedelta(minutes=5)
    tracker = SeenTracker(db, repo, clock)
    assert await tracker.flush() == 0


async def test_one_replica_at_a_time(postgres_server: str) -> None:
    """A replica that finds the job's lock taken skips its round."""
    url = await create_database(postgres_server)
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    other = Database(url)
    try:
        await add_client(db, "spiffe://x/old", T0 - timedelta(days=2))
        job = ExpiryJob(
            db,
            SqlClientRepository(db),
            FixedClock(T0.timestamp()),
            disable_after=3600,
            delete_after=0,
        )
        async with other.transaction() as tx:
            await tx.session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": EXPIRY_LOCK_KEY}
            )
            skipped = await job.run_once()
        assert skipped.skipped and skipped.disabled == []
        done = await job.run_once()
        assert done.disabled == ["spiffe://x/old"]
    finally:
        await db.close()
        await other.close()
