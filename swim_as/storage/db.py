"""Engine, transactions and the change feed (D11).

Writes go through :meth:`Database.transaction`. A transaction can announce
changes (``tx.announce("client", client_id)``): on PostgreSQL the announcement
is a ``pg_notify`` inside the same transaction, so other replicas hear of it
exactly when it commits; in this process, subscribers are called right after
the commit. Hot-path caches subscribe to these announcements and fall back to
a bounded time-to-live when the listener connection is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger("swim_as.storage")

CHANNEL = "swim_as_changes"

Subscriber = Callable[[str, str], None]


@dataclass
class Transaction:
    """One unit of work: a session plus the changes it will announce."""

    session: AsyncSession
    announcements: list[tuple[str, str]] = field(default_factory=list)

    def announce(self, topic: str, key: str) -> None:
        """Tell every replica, once this commits, that ``key`` changed."""
        self.announcements.append((topic, key))


class Database:
    """The engine of one process, its sessions and its change feed."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url: URL = make_url(url)
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        options: dict[str, Any] = {"echo": echo}
        if self.is_postgres:
            options.update(
                pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
        else:
            options.update(connect_args={"timeout": 30})
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if not self.is_postgres:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._subscribers: list[Subscriber] = []
        self._listener: asyncio.Task[None] | None = None
        self.listening = False

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction that commits on success and rolls back on error."""
        async with self.sessions() as session:
            tx = Transaction(session)
            async with session.begin():
                yield tx
                if self.is_postgres:
                    for topic, key in tx.announcements:
                        await session.execute(
                            text("SELECT pg_notify(:channel, :payload)"),
                            {"channel": CHANNEL, "payload": f"{topic}:{key}"},
                        )
        for topic, key in tx.announcements:
            self._dispatch(topic, key)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only."""
        async with self.sessions() as session:
            yield session

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber(topic, key)`` for every change, local or remote."""
        self._subscribers.append(subscriber)

    def _dispatch(self, topic: str, key: str) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(topic, key)
            except Exception:  # a cache must never break a commit
                log.exception("change subscriber failed", extra={"topic": topic})

    async def start_listening(self) -> None:
        """Follow other replicas' changes (PostgreSQL LISTEN/NOTIFY)."""
        if self.is_postgres and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="swim-as-listen")

    async def _listen(self) -> None:
        import asyncpg  # only PostgreSQL deployments need it

        dsn = self.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        delay = 0.5
        while True:
            connection = None
            try:
                connection = await asyncpg.connect(dsn)
                await connection.add_listener(CHANNEL, self._on_notification)
                self.listening = True
                delay = 0.5
                # Anything may have changed while nobody was listening.
                self._dispatch("*", "")
                log.info("listening for changes", extra={"event": "feed.listening"})
                while not connection.is_closed():
                    await asyncio.sleep(1)
                    await connection.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning(
                    "change feed lost; caches fall back to their time-to-live",
                    extra={"event": "feed.lost", "reason": repr(err)},
                )
            finally:
                self.listening = False
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _on_notification(
        self, connection: Any, pid: int, channel: str, payload: str
    ) -> None:
        topic, _, key = payload.partition(":")
        self._dispatch(topic, key)

    async def ping(self) -> None:
        """Raise if the database cannot answer."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
