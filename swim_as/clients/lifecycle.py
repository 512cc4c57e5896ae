"""Expiry and deprovisioning: when clients were last seen, and the idle job.

:class:`SeenTracker` notes in memory which client obtained a token, and a
background task writes those times in one batched statement every
``lifecycle.seen_flush_seconds``: the token path never waits on the
database. A client's time is written at most once a minute per process
(``GRANULARITY``), so ``last_seen_at`` lags by at most a minute plus the
flush interval, and repeated requests cost nothing.

:class:`ExpiryJob` disables clients that neither obtained a token nor were
changed for ``lifecycle.disable_after_seconds``, and deletes those it
disabled once they stayed disabled for ``lifecycle.delete_after_seconds``
(clients an operator disabled are left to the operator). It is safe with
several replicas: on PostgreSQL a round runs only under a
transaction-scoped advisory lock (another replica holding it means this
round is skipped), and rows are taken ``FOR UPDATE SKIP LOCKED`` so an
operator's concurrent change is never overwritten; SQLite serves a single
node. Each change is audited in its own transaction
(``client.expired_disabled``, ``client.expired_deleted``) and announced to
every replica's caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, text

from swim_as.clock import Clock
from swim_as.observability.audit import record_audit
from swim_as.storage.clients import SqlClientRepository
from swim_as.storage.db import Database, Transaction
from swim_as.storage.models import ClientRow

if TYPE_CHECKING:
    from swim_as.clientauth.authenticate import AuthenticatedClient

log = logging.getLogger("swim_as.lifecycle")

GRANULARITY = 60.0
EXPIRED = "expired"
ACTOR = "swim-as:expiry"
# pg_try_advisory_xact_lock key of the idle job ("SWIM" + 2).
EXPIRY_LOCK_KEY = 0x5357494D0002
BATCH = 500
MAX_BATCHES = 20


class SeenTracker:
    """When each client last obtained a token, written in batches."""

    def __init__(
        self,
        db: Database,
        repository: SqlClientRepository,
        clock: Clock,
        *,
        granularity: float = GRANULARITY,
        max_remembered: int = 200_000,
    ) -> None:
        self._db = db
        self._repository = repository
        self._clock = clock
        self._granularity = granularity
        self._max_remembered = max_remembered
        self._pending: dict[str, float] = {}
        self._written: dict[str, float] = {}

    def record(self, caller: AuthenticatedClient) -> None:
        """Hot path: note a token issued (``TokenEndpoint(on_issued=...)``)."""
        client_id = caller.client.client_id
        now = self._clock.time()
        last = self._written.get(client_id)
        if last is not None and now - last < self._granularity:
            return
        self._pending[client_id] = now

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write what is pending; return how many clients were written."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        try:
            async with self._db.transaction() as tx:
                await self._repository.touch_many(
                    tx,
                    {cid: datetime.fromtimestamp(at, UTC) for cid, at in batch.items()},
                )
        except Exception as err:
            # Keep them (newer times win) and try again next time.
            for cid, at in batch.items():
                self._pending[cid] = max(at, self._pending.get(cid, at))
            log.warning(
                "last-seen times not written; will retry",
                extra={"event": "lifecycle.seen_flush_failed", "reason": repr(err)},
            )
            return 0
        if len(self._written) > self._max_remembered:
            self._written.clear()
        self._written.update(batch)
        return len(batch)

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Background task: flush every ``interval`` seconds and at stop."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            await self.flush()


@dataclass
class ExpiryRound:
    """What one run of the job did."""

    disabled: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: bool = False


class ExpiryJob:
    """Disables idle clients and deletes them later (module docstring)."""

    def __init__(
        self,
        db: Database,
        repository: SqlClientRepository,
        clock: Clock,
        *,
        disable_after: int,
        delete_after: int,
        before: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._db = db
        self._repository = repository
        self._clock = clock
        self._disable_after = disable_after
        self._delete_after = delete_after
        self._before = before

    @property
    def enabled(self) -> bool:
        return bool(self._disable_after or self._delete_after)

    async def run_once(self) -> ExpiryRound:
        """One round: disable idle clients, then delete long-disabled ones."""
        if self._before is not None:
            # This replica's unwritten token use counts too.
            await self._before()
        result = ExpiryRound()
        for _ in range(MAX_BATCHES):
            done = await self._batch(result)
            if result.skipped or done:
                break
        for client_id in result.disabled:
            log.info(
                "idle client disabled",
                extra={"event": "client.expired_disabled", "client_id": client_id},
            )
        for client_id in result.deleted:
            log.info(
                "expired client deleted",
                extra={"event": "client.expired_deleted", "client_id": client_id},
            )
        return result

    async def _batch(self, result: ExpiryRound) -> bool:
        """One transaction of at most ``BATCH`` changes; True when finished."""
        now = self._clock.now()
        changed = 0
        async with self._db.transaction() as tx:
            if self._db.is_postgres:
                locked = await tx.session.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:key)"),
                    {"key": EXPIRY_LOCK_KEY},
                )
                if not locked:
                    result.skipped = True
                    return True
            if self._disable_after:
                cutoff = now - timedelta(seconds=self._disable_after)
                rows = await tx.session.scalars(
                    select(ClientRow)
                    .where(
                        ClientRow.disabled.is_(False),
                        ClientRow.updated_at < cutoff,
                        or_(
                            ClientRow.last_seen_at.is_(None),
                            ClientRow.last_seen_at < cutoff,
                        ),
                    )
                    .order_by(ClientRow.client_id)
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
                for row in rows.all():
                    self._disable(tx, row, now)
                    result.disabled.append(row.client_id)
                    changed += 1
            if self._delete_after and changed < BATCH:
                cutoff = now - timedelta(seconds=self._delete_after)
                rows = await tx.session.scalars(
                    select(ClientRow)
                    .where(
                        ClientRow.disabled.is_(True),
                        ClientRow.disabled_reason == EXPIRED,
                        ClientRow.disabled_at < cutoff,
                    )
                    .order_by(ClientRow.client_id)
                    .limit(BATCH - changed)
                    .with_for_update(skip_locked=True)
                )
                for row in rows.all():
                    await self._delete(tx, row, now)
                    result.deleted.append(row.client_id)
                    changed += 1
        return changed < BATCH

    def _disable(self, tx: Transaction, row: ClientRow, now: datetime) -> None:
        idle_since = row.last_seen_at or row.updated_at
        row.disabled = True
        row.disabled_at = now
        row.disabled_reason = EXPIRED
        row.updated_at = now
        record_audit(
            tx,
            "client.expired_disabled",
            actor=ACTOR,
            client_id=row.client_id,
            detail={
                "last_seen_at": row.last_seen_at.isoformat()
                if row.last_seen_at
                else None,
                "idle_seconds": int((now - idle_since).total_seconds()),
                "disable_after_seconds": self._disable_after,
            },
            at=now,
        )
        tx.announce("client", row.client_id)

    async def _delete(self, tx: Transaction, row: ClientRow, now: datetime) -> None:
        client_id, metadata = row.client_id, dict(row.client_metadata)
        disabled_at = row.disabled_at
        await self._repository.delete(tx, client_id, at=now)
        record_audit(
            tx,
            "client.expired_deleted",
            actor=ACTOR,
            client_id=client_id,
            detail={
                "disabled_at": disabled_at.isoformat() if disabled_at else None,
                "delete_after_seconds": self._delete_after,
                "metadata": metadata,
            },
            at=now,
        )
        tx.announce("client", client_id)

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Background task: a round every ``interval`` seconds."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                return
            try:
                await self.run_once()
            except Exception as err:  # the next round tries again
                log.warning(
                    "idle-client job failed; will retry",
                    extra={"event": "lifecycle.expiry_failed", "reason": repr(err)},
                )
