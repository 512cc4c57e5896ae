"""Tokens of deleted clients (RFC 7592 §2.3: deletion SHOULD revoke them).

Access tokens are self-contained JWTs that swim-as does not store, so a
deleted client's tokens cannot be looked up and revoked one by one.
Instead every deletion leaves a tombstone, ``(client_id, deleted_at)``,
and a token is dead when its ``client_id`` has a tombstone and its
``iat`` is not after ``deleted_at``. A client re-created with the same id
(a workload registering again, a JIT creation) gets new tokens with a
later ``iat``; its old ones stay dead. ``iat`` has whole seconds, so a
token issued in the very second of the deletion counts as dead, even
when it came from the re-created client: the comparison errs towards
inactive.

Introspection (RFC 7662), when it is served, answers ``active: false``
for such tokens through :class:`DeletedClients`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class TombstoneReader(Protocol):
    async def deleted_at(self, client_id: str) -> datetime | None: ...


def issued_before_deletion(issued_at: int | float, deleted_at: datetime | None) -> bool:
    """Whether a token issued at ``issued_at`` (its ``iat``) is dead."""
    return deleted_at is not None and issued_at <= deleted_at.timestamp()


class DeletedClients:
    """Answers whether a token outlived its client."""

    def __init__(self, reader: TombstoneReader) -> None:
        self._reader = reader

    async def token_is_dead(self, client_id: str, issued_at: int | float) -> bool:
        return issued_before_deletion(
            issued_at, await self._reader.deleted_at(client_id)
        )
