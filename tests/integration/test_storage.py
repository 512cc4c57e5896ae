"""Storage on both databases: migrations, byte-exact IDs, races (D11).

Every test here runs twice, on SQLite (aiosqlite) and on PostgreSQL
(asyncpg), against a real database.
"""

from __future__ import annotations

import asyncio
import base64
import os
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from swim_as.clock import SystemClock
from swim_as.keys.crypto import KeyDecryptionError
from swim_as.keys.keyring import Keyring, KeyRotator, RotationPolicy
from swim_as.storage.clients import SqlClientRepository
from swim_as.storage.db import Database
from swim_as.storage.migrate import upgrade
from swim_as.storage.models import AuditRow, ClientRow, SigningKeyRow
from swim_as.storage.schema import schema_problem


@pytest.fixture
async def db(db_url: str):
    await asyncio.to_thread(upgrade, db_url)
    database = Database(db_url)
    yield database
    await database.close()


def client_values(client_id: str) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "client_id": client_id,
        "spiffe_id": client_id,
        "auth_method": "spiffe_x509",
        "client_metadata": {"spiffe_id": client_id},
        "granted_scopes": [],
        "disabled": False,
        "created_at": now,
        "updated_at": now,
        "created_by": "test",
    }


async def test_migrations_are_idempotent(db_url: str) -> None:
    assert "run `swim-as migrate`" in (await schema_problem(db_url) or "")
    await asyncio.to_thread(upgrade, db_url)
    await asyncio.to_thread(upgrade, db_url)
    assert await schema_problem(db_url) is None


async def test_long_spiffe_id_is_byte_exact(db: Database) -> None:
    repo = SqlClientRepository(db)
    base = "spiffe://example.org/"
    long_id = base + "/".join(["segment"] * 400)
    long_id = long_id[: 2048 - 2] + "aZ"
    assert len(long_id.encode()) == 2048
    twin = long_id[:-2] + "az"  # differs only in case
    async with db.transaction() as tx:
        assert await repo.insert_if_absent(tx, client_values(long_id))
        assert await repo.insert_if_absent(tx, client_values(twin))
    stored = await repo.get(long_id)
    assert stored is not None and stored.client_id == long_id
    assert stored.spiffe_id == long_id
    assert (await repo.get(twin)).client_id == twin  # type: ignore[union-attr]
    assert await repo.get(long_id.upper()) is None


async def test_insert_race_creates_one_row(db: Database) -> None:
    repo = SqlClientRepository(db)
    sid = "spiffe://example.org/ns/race/sa/x"

    async def attempt() -> bool:
        async with db.transaction() as tx:
            return await repo.insert_if_absent(tx, client_values(sid))

    outcomes = await asyncio.gather(*(attempt() for _ in range(16)))
    assert outcomes.count(True) == 1
    async with db.reading() as session:
        count = await session.scalar(select(func.count()).select_from(ClientRow))
    assert count == 1


async def test_change_is_announced_after_commit(db: Database) -> None:
    seen: list[tuple[str, str]] = []
    db.subscribe(lambda topic, key: seen.append((topic, key)))
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            tx.announce("client", "rolled-back")
            raise RuntimeError("abort")
    async with db.transaction() as tx:
        tx.announce("client", "committed")
    assert ("client", "rolled-back") not in seen
    assert ("client", "committed") in seen


def policy() -> RotationPolicy:
    return RotationPolicy("ES256", timedelta(seconds=60), timedelta(seconds=360), None)


async def test_first_key_created_once(db: Database) -> None:
    kek = os.urandom(32)
    rotators = [KeyRotator(db, kek, SystemClock(), policy()) for _ in range(4)]
    created = await asyncio.gather(*(r.ensure_initial_key() for r in rotators))
    assert sum(1 for kid in created if kid) == 1
    async with db.reading() as session:
        rows = (await session.scalars(select(SigningKeyRow))).all()
    assert [r.state for r in rows] == ["active"]
    ring = Keyring(db, kek, SystemClock())
    await ring.load()
    assert ring.signer().kid == rows[0].kid
    async with db.reading() as session:
        events = (await session.scalars(select(AuditRow.event))).all()
    assert list(events) == ["key.created"]


async def test_wrong_kek_refuses_to_start(db: Database) -> None:
    await KeyRotator(db, os.urandom(32), SystemClock(), policy()).ensure_initial_key()
    with pytest.raises(KeyDecryptionError):
        await Keyring(db, os.urandom(32), SystemClock()).load()


async def test_private_key_is_sealed(db: Database) -> None:
    kek = os.urandom(32)
    await KeyRotator(db, kek, SystemClock(), policy()).ensure_initial_key()
    async with db.reading() as session:
        row = (await session.scalars(select(SigningKeyRow))).one()
    assert b"PRIVATE" not in row.sealed_private_key
    assert "d" not in row.public_jwk
    assert base64.b64encode(kek) not in row.sealed_private_key


async def test_used_assertions_once_across_racers(db: Database) -> None:
    """RFC 7523 §3: a jti is taken once, also by concurrent requests."""
    from swim_as.storage.assertions import SqlAssertionLog

    log = SqlAssertionLog(db)
    now = datetime.now(UTC)
    later = now + timedelta(seconds=60)
    results = await asyncio.gather(
        *(log.first_use("client-a", "jti-1", later, now) for _ in range(8))
    )
    assert sorted(results) == [False] * 7 + [True]
    # The same jti of another client is another assertion.
    assert await log.first_use("client-b", "jti-1", later, now)
    # Once expired (not yet purged), the row is taken over.
    after = later + timedelta(seconds=1)
    assert await log.first_use(
        "client-a", "jti-1", after + timedelta(seconds=60), after
    )
    assert not await log.first_use(
        "client-a", "jti-1", after + timedelta(seconds=60), after
    )
    assert await log.purge(after + timedelta(days=2)) == 2
