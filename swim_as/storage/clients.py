"""Client rows in SQL: the repository behind the client services."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from swim_as.clients.model import Client
from swim_as.storage.db import Database, Transaction
from swim_as.storage.models import ClientRow, ClientTombstoneRow


def storable(text: str) -> bool:
    """Whether both databases can hold ``text``: no NUL (PostgreSQL refuses
    it in text) and no lone surrogate (not UTF-8). No such client can
    exist, so a lookup for one finds nothing instead of failing."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def to_client(row: ClientRow) -> Client:
    return Client(
        client_id=row.client_id,
        auth_method=row.auth_method,
        spiffe_id=row.spiffe_id,
        metadata=dict(row.client_metadata),
        granted_scopes=frozenset(row.granted_scopes or ()),
        disabled=row.disabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        created_by=row.created_by,
        secret_hash=row.client_secret_hash,
    )


class SqlClientRepository:
    """Reads and writes clients; writes run inside a caller's transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, client_id: str) -> Client | None:
        if not storable(client_id):
            return None
        async with self._db.reading() as session:
            row = await session.get(ClientRow, client_id)
            return to_client(row) if row is not None else None

    async def get_stored(self, client_id: str) -> ClientRow | None:
        """The row itself (with the token hash), detached, for checks."""
        if not storable(client_id):
            return None
        async with self._db.reading() as session:
            return await session.get(ClientRow, client_id)

    async def get_row(self, tx: Transaction, client_id: str) -> ClientRow | None:
        if not storable(client_id):
            return None
        return await tx.session.get(ClientRow, client_id, with_for_update=True)

    async def wildcard_clients(self) -> list[Client]:
        """Clients whose ``spiffe_id`` ends in ``/*``."""
        async with self._db.reading() as session:
            rows = await session.scalars(
                select(ClientRow).where(ClientRow.spiffe_id.like("%/*"))
            )
            return [to_client(r) for r in rows.all()]

    async def with_method(self, method: str) -> list[Client]:
        """Every client registered for ``method``."""
        async with self._db.reading() as session:
            rows = await session.scalars(
                select(ClientRow).where(ClientRow.auth_method == method)
            )
            return [to_client(r) for r in rows.all()]

    async def list(
        self, *, prefix: str | None = None, limit: int = 1000
    ) -> Sequence[Client]:
        async with self._db.reading() as session:
            query = select(ClientRow).order_by(ClientRow.client_id).limit(limit)
            if prefix:
                query = query.where(
                    ClientRow.client_id.startswith(prefix, autoescape=True)
                )
            rows = await session.scalars(query)
            return [to_client(r) for r in rows.all()]

    async def insert_if_absent(self, tx: Transaction, values: dict[str, Any]) -> bool:
        """Insert a client unless its ``client_id`` exists; True if inserted.

        The database decides (``ON CONFLICT DO NOTHING``), so two racing
        registrations of one SPIFFE ID create exactly one row.
        """
        insert = pg_insert if self._db.is_postgres else sqlite_insert
        statement = (
            insert(ClientRow)
            .values(**values)
            .on_conflict_do_nothing(index_elements=[ClientRow.client_id])
        )
        result = await tx.session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def update_fields(
        self, tx: Transaction, client_id: str, **values: Any
    ) -> bool:
        result = await tx.session.execute(
            update(ClientRow).where(ClientRow.client_id == client_id).values(**values)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete(
        self, tx: Transaction, client_id: str, *, at: datetime | None = None
    ) -> bool:
        """Delete a client and leave its tombstone (RFC 7592 §2.3).

        The tombstone says when: tokens of this ``client_id`` issued until
        then belong to the deleted client (see :meth:`deleted_at`).
        """
        result = await tx.session.execute(
            delete(ClientRow).where(ClientRow.client_id == client_id)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return False
        when = at or datetime.now(UTC)
        tombstone = await tx.session.get(ClientTombstoneRow, client_id)
        if tombstone is None:
            tx.session.add(ClientTombstoneRow(client_id=client_id, deleted_at=when))
        else:
            tombstone.deleted_at = max(tombstone.deleted_at, when)
        return True

    async def deleted_at(self, client_id: str) -> datetime | None:
        """When a client with this id was last deleted, if ever."""
        async with self._db.reading() as session:
            row = await session.get(ClientTombstoneRow, client_id)
            return row.deleted_at if row is not None else None

    async def touch_many(self, tx: Transaction, seen: dict[str, datetime]) -> None:
        """Record when clients last obtained a token: one batched statement.

        A row is only moved forward, so replicas flushing out of order never
        set an older time.
        """
        if not seen:
            return
        # Core statement: executemany, not the ORM's bulk update by key.
        table = cast(Table, ClientRow.__table__)
        statement = (
            update(table)
            .where(table.c.client_id == bindparam("cid"))
            .where(
                or_(
                    table.c.last_seen_at.is_(None),
                    table.c.last_seen_at < bindparam("seen"),
                )
            )
            .values(last_seen_at=bindparam("seen"))
        )
        connection = await tx.session.connection()
        await connection.execute(
            statement, [{"cid": cid, "seen": at} for cid, at in seen.items()]
        )
