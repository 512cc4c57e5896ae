"""Audit records and counters.

Lifecycle changes (a client registered, a key rotated, a bundle changed) are
written by :func:`record_audit` in the same transaction as the change, so a
change and its record commit or vanish together.

High-volume events of the token path (``token.issued``,
``client_auth.failed``) must not slow it down: :class:`AuditBuffer` counts
them in memory at once and writes them in batches from a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from swim_as.clock import Clock
from swim_as.storage.db import Database, Transaction
from swim_as.storage.models import AuditRow

log = logging.getLogger("swim_as.audit")

_NO_DETAIL: Mapping[str, Any] = {}
# Constant statements in each driver's own parameter style (no user input).
_INSERT_SQLITE = (
    "INSERT INTO audit_events (at, event, actor, client_id, detail) "
    "VALUES (?, ?, ?, ?, ?)"
)
_INSERT_POSTGRES = (
    "INSERT INTO audit_events (at, event, actor, client_id, detail) "
    "VALUES ($1, $2, $3, $4, $5)"
)


def _json(detail: Mapping[str, Any]) -> str:
    return json.dumps(detail, separators=(",", ":"), ensure_ascii=False, default=str)


class AuditSink(Protocol):
    """Where background work sends audit records without waiting
    (:meth:`AuditBuffer.add`)."""

    def add(
        self,
        event: str,
        *,
        actor: str,
        client_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None: ...


def replica_actor() -> str:
    """``swim-as@host:pid``: which process of which replica wrote a record."""
    return f"swim-as@{socket.gethostname()}:{os.getpid()}"


def record_audit(
    tx: Transaction,
    event: str,
    *,
    actor: str,
    client_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Add an audit record to ``tx`` (committed with the change itself)."""
    tx.session.add(
        AuditRow(
            at=at or datetime.now(UTC),
            event=event,
            actor=actor,
            client_id=client_id,
            detail=dict(detail or {}),
        )
    )


@dataclass
class AuditBuffer:
    """Counts hot-path events at once; writes them in batches.

    When the queue is full (the database is slow or down), the oldest
    records are dropped and counted as ``audit.dropped``: the token path
    never waits for the audit trail.
    """

    db: Database
    clock: Clock
    max_pending: int = 10_000
    batch: int = 500
    counters: Counter[str] = field(default_factory=Counter)
    # (epoch seconds, event, actor, client_id, detail): cheap to make on the
    # token path; serialised only when written.
    _pending: list[tuple[float, str, str, str | None, Mapping[str, Any]]] = field(
        default_factory=list
    )

    def add(
        self,
        event: str,
        *,
        actor: str,
        client_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Count an event and queue its record (non-blocking)."""
        self.counters[event] += 1
        if len(self._pending) >= self.max_pending:
            del self._pending[: self.batch]
            self.counters["audit.dropped"] += self.batch
        self._pending.append(
            (self.clock.time(), event, actor, client_id, detail or _NO_DETAIL)
        )

    async def flush(self) -> int:
        """Write what is queued; return how many records were written.

        Thousands of records a second arrive while the event loop is busy
        with requests, so a batch is one driver-level ``executemany`` (one
        round trip, no ORM work per row), and the loop gets control back
        between batches.
        """
        written = 0
        while self._pending:
            chunk, self._pending = (
                self._pending[: self.batch],
                self._pending[self.batch :],
            )
            try:
                async with self.db.transaction() as tx:
                    connection = await tx.session.connection()
                    await connection.exec_driver_sql(
                        _INSERT_POSTGRES if self.db.is_postgres else _INSERT_SQLITE,
                        [self._row(record) for record in chunk],
                    )
            except Exception as err:
                # Put them back (oldest first) and try again next time.
                self._pending[:0] = chunk
                log.warning(
                    "audit batch not written; will retry",
                    extra={"event": "audit.flush_failed", "reason": repr(err)},
                )
                return written
            written += len(chunk)
            await asyncio.sleep(0)
        return written

    def _row(
        self, record: tuple[float, str, str, str | None, Mapping[str, Any]]
    ) -> tuple[Any, ...]:
        at, event, actor, client_id, detail = record
        moment = datetime.fromtimestamp(at, UTC)
        if not self.db.is_postgres:
            # The text form SQLAlchemy's SQLite DateTime reads back (UTC).
            moment_text: Any = moment.replace(tzinfo=None).isoformat(
                sep=" ", timespec="microseconds"
            )
            return (moment_text, event, actor, client_id, _json(detail))
        return (moment, event, actor, client_id, _json(detail))

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Background task: flush every ``interval`` seconds and at stop."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            await self.flush()
