"""The policy file, reloaded when it changes (D8).

The file is polled like the bundle files (a new inode, size or
modification time is a change). At start-up a bad file is fatal: swim-as
refuses to serve a policy it cannot honour. Later, a bad file keeps the
last good policy in force, logs an ERROR with every problem, and writes a
``policy.rejected`` audit record; a good one writes ``policy.loaded``.

Audit records are written once per change of content, not once per
replica: each record carries the file's SHA-256, and a replica writes
``policy.loaded`` (or ``policy.rejected``) only when the newest policy
record in the database is not already that event for that content. On
PostgreSQL the check and the insert run under a transaction-scoped
advisory lock, so twenty replicas starting (or noticing the same change)
at once leave one record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from swim_as.clock import Clock
from swim_as.observability.audit import record_audit
from swim_as.policy.rules import Policy, PolicyError, load_policy_file
from swim_as.storage.db import Database
from swim_as.storage.models import AuditRow

log = logging.getLogger("swim_as.policy")

POLICY_EVENTS = ("policy.loaded", "policy.rejected")
# pg_advisory_xact_lock key serialising policy audit records ("SWIM" + 1).
POLICY_LOCK_KEY = 0x5357494D0001
ACTOR = "swim-as"


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class PolicyFile:
    """The configured policy file and the policy in force."""

    def __init__(self, path: Path, db: Database, clock: Clock) -> None:
        self.path = path
        self._db = db
        self._clock = clock
        self._policy: Policy | None = None
        self._seen: tuple[int, int, int] | None = None
        self.error: str | None = None

    @property
    def current(self) -> Policy:
        """The policy in force (the last good one)."""
        if self._policy is None:
            raise RuntimeError("the policy file has not been loaded")
        return self._policy

    def load_initial(self) -> Policy:
        """Load at start-up.

        Raises:
            PolicyError: the file is bad; swim-as must not start.
        """
        seen = _signature(self.path)
        self._policy = load_policy_file(self.path)
        self._seen = seen
        log.info(
            "policy in force",
            extra={
                "event": "policy.loaded",
                "file": str(self.path),
                "rules": len(self._policy.rules),
                "sha256": self._policy.sha256,
            },
        )
        return self._policy

    def changed(self) -> bool:
        return _signature(self.path) != self._seen

    async def reload(self) -> bool:
        """Load the file again; True when a new policy is in force."""
        seen = _signature(self.path)
        try:
            policy = load_policy_file(self.path)
        except PolicyError as err:
            self._seen = seen  # do not re-read the same bad file every tick
            self.error = "; ".join(err.errors)
            log.error(
                "policy file refused; the last good policy stays in force",
                extra={
                    "event": "policy.rejected",
                    "file": str(self.path),
                    "errors": err.errors,
                    "kept_sha256": self._policy.sha256 if self._policy else None,
                },
            )
            await self.record(
                "policy.rejected",
                _digest(self.path),
                {
                    "errors": err.errors,
                    "kept_sha256": self._policy.sha256 if self._policy else None,
                },
            )
            return False
        self._seen = seen
        self._policy = policy
        self.error = None
        log.info(
            "policy loaded",
            extra={
                "event": "policy.loaded",
                "file": str(self.path),
                "rules": len(policy.rules),
                "sha256": policy.sha256,
            },
        )
        await self.record_loaded()
        return True

    async def record_loaded(self) -> bool:
        """Audit the policy in force (once per content, see the module doc)."""
        policy = self.current
        return await self.record(
            "policy.loaded",
            policy.sha256,
            {"rules": [r.name for r in policy.rules]},
        )

    async def record(self, event: str, digest: str, detail: Mapping[str, Any]) -> bool:
        """Write a policy audit record unless the newest one already says it."""
        try:
            async with self._db.transaction() as tx:
                if self._db.is_postgres:
                    await tx.session.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": POLICY_LOCK_KEY},
                    )
                last = await tx.session.scalar(
                    select(AuditRow)
                    .where(AuditRow.event.in_(POLICY_EVENTS))
                    .order_by(AuditRow.id.desc())
                    .limit(1)
                )
                if (
                    last is not None
                    and last.event == event
                    and (last.detail or {}).get("sha256") == digest
                ):
                    return False
                record_audit(
                    tx,
                    event,
                    actor=ACTOR,
                    detail={"file": str(self.path), "sha256": digest, **detail},
                    at=self._clock.now(),
                )
            return True
        except (DBAPIError, OSError) as err:
            # The policy itself is in force either way; only the record is
            # missing, and the log line above says what happened.
            log.warning(
                "policy audit record not written",
                extra={"event": "audit.write_failed", "reason": repr(err)},
            )
            return False

    async def watch(self, stop: asyncio.Event, interval: float) -> None:
        """Background task: reload when the file changes."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if not stop.is_set() and self.changed():
                await self.reload()


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"
