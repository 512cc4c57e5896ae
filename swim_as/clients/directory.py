"""Clients on the hot path: an in-memory cache the database invalidates (D11).

The token endpoint reads clients from here. A client's entry is dropped when
any replica announces a change to it (PostgreSQL ``NOTIFY``) or this process
changes it; as a fallback, entries expire after a short time-to-live, which
bounds how long a replica can act on an old client if notifications are
lost. Unknown clients are cached too, briefly, so a stream of requests for a
client that does not exist does not become a stream of queries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from swim_as.clients.model import Client
from swim_as.clock import Clock
from swim_as.spiffe.errors import SpiffeIdError
from swim_as.spiffe.ids import SpiffeId, SpiffeIdPattern

log = logging.getLogger("swim_as.clients")

# How long an entry is trusted without a notification. With a working
# change feed this only matters if a notification is lost.
POSITIVE_TTL = 30.0
NEGATIVE_TTL = 2.0
# Without a change feed (SQLite, or the listener is reconnecting).
UNWATCHED_TTL = 2.0


class ClientReader(Protocol):
    async def get(self, client_id: str) -> Client | None: ...


class ClientDirectory:
    """Cached client lookups by ``client_id``."""

    def __init__(
        self,
        reader: ClientReader,
        clock: Clock,
        *,
        watched: Callable[[], bool] = lambda: False,
        size: int = 100_000,
    ) -> None:
        self._reader = reader
        self._clock = clock
        self._size = size
        self._watched = watched
        self._entries: OrderedDict[str, tuple[Client | None, float]] = OrderedDict()
        # Bumped by every invalidation: a read that overlapped one may hold
        # what was true before the change, so its answer is not cached.
        self._generation = 0
        self._reading: dict[str, asyncio.Future[Client | None]] = {}
        self._refreshing: set[asyncio.Future[Client | None]] = set()

    async def get(self, client_id: str) -> Client | None:
        """The client, from the cache when it is fresh enough.

        An entry past its time-to-live is still answered from while one
        background read refreshes it (for at most one more time-to-live), so
        the token path does not wait for the database every few seconds; an
        invalidated entry is gone and is always read again.
        """
        now = self._clock.time()
        entry = self._entries.get(client_id)
        if entry is not None:
            client, fresh_until = entry
            if fresh_until > now:
                return client
            if client is not None and now < fresh_until + self._ttl(client):
                self._refresh_later(client_id)
                return client
        return await self._read(client_id)

    async def _read(self, client_id: str) -> Client | None:
        """Read through, one database read per client at a time."""
        pending = self._reading.get(client_id)
        if pending is not None:
            return await asyncio.shield(pending)
        generation = self._generation
        read = asyncio.ensure_future(self._reader.get(client_id))
        self._reading[client_id] = read
        try:
            client = await asyncio.shield(read)
        finally:
            if self._reading.get(client_id) is read:
                del self._reading[client_id]
        if generation == self._generation:
            self._store(client_id, client)
        return client

    def _refresh_later(self, client_id: str) -> None:
        if client_id in self._reading:
            return
        task = asyncio.ensure_future(self._read(client_id))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Future[Client | None]) -> None:
        self._refreshing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Keep serving the entry; the next request tries again.
            log.warning(
                "client refresh failed",
                extra={
                    "event": "clients.refresh_failed",
                    "reason": repr(task.exception()),
                },
            )

    def _ttl(self, client: Client | None) -> float:
        if client is None:
            return NEGATIVE_TTL
        return POSITIVE_TTL if self._watched() else UNWATCHED_TTL

    def _store(self, client_id: str, client: Client | None) -> None:
        self._entries[client_id] = (client, self._clock.time() + self._ttl(client))
        self._entries.move_to_end(client_id)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def invalidate(self, client_id: str | None = None) -> None:
        """Drop one entry, or all of them (``None``)."""
        self._generation += 1
        if client_id is None:
            self._entries.clear()
        else:
            self._entries.pop(client_id, None)

    def on_change(self, topic: str, key: str) -> None:
        """Change-feed subscriber."""
        if topic == "client":
            self.invalidate(key)
        elif topic == "*":
            self.invalidate(None)


class WildcardReader(Protocol):
    async def wildcard_clients(self) -> list[Client]: ...


class WildcardDirectory:
    """Clients whose ``spiffe_id`` ends in ``/*``, cached as one list.

    A JWT-SVID whose ``sub`` has no exact client is matched against this
    list (OAuth SPIFFE client-auth draft §5.1) without a query per request:
    the list is loaded once and dropped on any client change (a change may
    add or remove a pattern), with the same time-to-live fallback as
    :class:`ClientDirectory`.
    """

    def __init__(
        self,
        reader: WildcardReader,
        clock: Clock,
        *,
        watched: Callable[[], bool] = lambda: False,
    ) -> None:
        self._reader = reader
        self._clock = clock
        self._watched = watched
        self._entries: list[tuple[SpiffeIdPattern, Client]] | None = None
        self._expires = 0.0
        self._generation = 0
        self._lock = asyncio.Lock()

    async def best_match(self, spiffe_id: SpiffeId) -> Client | None:
        """The client with the longest pattern matching ``spiffe_id``."""
        entries = await self._current()
        for pattern, client in entries:
            if pattern.matches(spiffe_id):
                return client
        return None

    async def _current(self) -> list[tuple[SpiffeIdPattern, Client]]:
        entries = self._entries
        if entries is not None and self._clock.time() < self._expires:
            return entries
        async with self._lock:
            entries = self._entries
            if entries is not None and self._clock.time() < self._expires:
                return entries
            generation = self._generation
            loaded = _by_specificity(await self._reader.wildcard_clients())
            if generation == self._generation:
                ttl = POSITIVE_TTL if self._watched() else UNWATCHED_TTL
                self._entries, self._expires = loaded, self._clock.time() + ttl
            return loaded

    def invalidate(self) -> None:
        self._generation += 1
        self._entries = None

    def on_change(self, topic: str, key: str) -> None:
        """Change-feed subscriber: any client change drops the list."""
        if topic in ("client", "*"):
            self.invalidate()


def _by_specificity(clients: list[Client]) -> list[tuple[SpiffeIdPattern, Client]]:
    """Parsed patterns, most specific (longest prefix path) first."""
    entries = []
    for client in clients:
        if client.spiffe_id is None:
            continue
        try:
            pattern = SpiffeIdPattern.parse(client.spiffe_id)
        except SpiffeIdError:
            continue  # not valid any more; registration refuses such values
        if pattern.is_wildcard:
            entries.append((pattern, client))
    entries.sort(key=lambda entry: len(entry[0].spiffe_id.path), reverse=True)
    return entries
