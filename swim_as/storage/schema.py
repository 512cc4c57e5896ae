"""Is the database schema the one this swim-as expects?"""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from swim_as.storage.migrate import alembic_config


async def schema_revision(url: str) -> str | None:
    """The revision the database is at (None: never migrated)."""

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(current)
    finally:
        await engine.dispose()


async def schema_problem(url: str) -> str | None:
    """None when the schema is at the newest revision, else what to do."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    try:
        revision = await schema_revision(url)
    except Exception as err:  # the message names the database problem
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:300]
        return f"cannot open the database: {reason}"
    if revision is None:
        return "the database has no swim-as schema yet: run `swim-as migrate` first"
    if revision != head:
        return (
            f"the database schema is at revision {revision}, this swim-as needs "
            f"{head}: run `swim-as migrate` first"
        )
    return None
