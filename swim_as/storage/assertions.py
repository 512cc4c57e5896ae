"""Used ``private_key_jwt`` assertions, shared by every replica (D12).

RFC 7523 §3 item 7 lets the server refuse a ``jti`` it has seen; swim-as
requires it and refuses the second use everywhere at once. This is the one
database write on a token path: an in-memory set would let a replayed
assertion through on any other replica, and a check-then-insert would let
two replicas accept it concurrently. The insert itself decides: the primary
key conflicts on a live ``jti``, and a row whose assertion has expired (not
purged yet) is taken over.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from swim_as.storage.db import Database
from swim_as.storage.models import UsedAssertionRow


def jti_hash(client_id: str, jti: str) -> str:
    """SHA-256 hex of ``client_id``, NUL, ``jti``: one space per client."""
    return hashlib.sha256(f"{client_id}\0{jti}".encode()).hexdigest()


class SqlAssertionLog:
    """Remembers accepted assertions until they expire."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def first_use(
        self, client_id: str, jti: str, expires_at: datetime, now: datetime
    ) -> bool:
        """Record the assertion; False when it was already used and lives."""
        insert = pg_insert if self._db.is_postgres else sqlite_insert
        table = UsedAssertionRow.__table__
        statement = insert(UsedAssertionRow).values(
            jti_hash=jti_hash(client_id, jti),
            client_id=client_id,
            expires_at=expires_at,
        )
        statement = statement.on_conflict_do_update(
            index_elements=[UsedAssertionRow.jti_hash],
            set_={
                "client_id": statement.excluded.client_id,
                "expires_at": statement.excluded.expires_at,
            },
            where=table.c.expires_at <= now,
        )
        async with self._db.transaction() as tx:
            result = await tx.session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def purge(self, now: datetime) -> int:
        """Delete the rows of expired assertions; return how many."""
        async with self._db.transaction() as tx:
            result = await tx.session.execute(
                delete(UsedAssertionRow).where(UsedAssertionRow.expires_at <= now)
            )
        return int(result.rowcount)  # type: ignore[attr-defined]
