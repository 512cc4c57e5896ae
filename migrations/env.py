"""Alembic environment: runs the history on PostgreSQL and on SQLite (D11).

The database URL comes, in this order, from the caller (`swim-as migrate`
puts it in the config's attributes), from ``-x config=FILE`` (a swim-as TOML
file), or from ``SWIM_AS_DATABASE__URL``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from swim_as.storage.models import Base

config = context.config


def database_url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    toml = context.get_x_argument(as_dictionary=True).get("config")
    if toml:
        from swim_as.settings import load_settings

        return load_settings(Path(toml)).database.url
    url = os.environ.get("SWIM_AS_DATABASE__URL")
    if url:
        return url
    raise SystemExit(
        "no database URL: use `swim-as migrate --config FILE`, "
        "`alembic -x config=FILE upgrade head` or SWIM_AS_DATABASE__URL"
    )


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    engine = create_async_engine(database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_with)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=database_url(), target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_online())
