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
import logging
import os
import socket
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import insert

from swim_as.clock import Clock
from swim_as.storage.db import Database, Transaction
from swim_as.storage.models import AuditRow

log = logging.getLogger("swim_as.audit")


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
    _pending: list[dict[str, Any]] = field(default_factory=list)

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
            {
                "at": self.clock.now(),
                "event": event,
                "actor": actor,
                "client_id": client_id,
                "detail": dict(detail or {}),
            }
        )

    async def flush(self) -> int:
        """Write what is queued; return how many records were written."""
        written = 0
        while self._pending:
            chunk, self._pending = (
                self._pending[: self.batch],
                self._pending[self.batch :],
            )
            try:
                async with self.db.transaction() as tx:
                    await tx.session.execute(insert(AuditRow), chunk)
            except Exception as err:
                # Put them back (oldest first) and try again next time.
                self._pending[:0] = chunk
                log.warning(
                    "audit batch not written; will retry",
                    extra={"event": "audit.flush_failed", "reason": repr(err)},
                )
                return written
            written += len(chunk)
        return written

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Background task: flush every ``interval`` seconds and at stop."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            await self.flush()
