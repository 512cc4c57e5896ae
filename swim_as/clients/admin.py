"""Operator actions on clients (``swim-as clients …``), straight on the database.

Every change is audited in its own transaction, with the operator as actor.
Scopes come from here (or, later, from policy), never from a workload's own
registration (D13).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from swim_as.clients.metadata import KEY_METHODS, SECRET_METHODS, validate_metadata
from swim_as.clients.model import Client
from swim_as.clients.registration import Registration, RegistrationService
from swim_as.clock import Clock
from swim_as.errors import InvalidClientMetadata
from swim_as.observability.audit import record_audit
from swim_as.storage.clients import SqlClientRepository, to_client
from swim_as.storage.db import Database

log = logging.getLogger("swim_as.admin")


class ClientNotFound(LookupError):
    """No client has this id."""


class ClientAdmin:
    """The operator's commands."""

    def __init__(
        self,
        db: Database,
        repository: SqlClientRepository,
        registration: RegistrationService,
        clock: Clock,
        *,
        enabled_methods: frozenset[str],
        actor: str,
    ) -> None:
        self._db = db
        self._repository = repository
        self._registration = registration
        self._clock = clock
        self._enabled_methods = enabled_methods
        self._actor = actor

    async def add(
        self,
        spiffe_id: str,
        *,
        method: str,
        scopes: Sequence[str] = (),
        client_name: str | None = None,
    ) -> Registration:
        """Register a SPIFFE client (or add scopes to an existing one).

        Raises:
            InvalidClientMetadata: the SPIFFE ID or method is not acceptable.
        """
        body: dict[str, object] = {"token_endpoint_auth_method": method}
        if method == "tls_client_auth":
            body["tls_client_auth_san_uri"] = spiffe_id
        else:
            body["spiffe_id"] = spiffe_id
        if client_name:
            body["client_name"] = client_name
        validated = validate_metadata(
            body, enabled_methods=self._enabled_methods, caller_spiffe_id=None
        )
        registration = await self._registration.create_or_get(
            client_id=spiffe_id,
            validated=validated,
            actor=self._actor,
            granted_scopes=tuple(scopes),
            event="client.added",
        )
        if not registration.created and scopes:
            client = await self.grant(spiffe_id, scopes)
            return Registration(client, False, registration.registration_access_token)
        return registration

    async def add_other(
        self,
        body: Mapping[str, Any],
        *,
        scopes: Sequence[str] = (),
    ) -> Registration:
        """Register a key-based or secret client with an opaque client_id (D1).

        ``body`` is RFC 7591 metadata (``token_endpoint_auth_method`` and
        ``jwks`` or ``jwks_uri``, ``client_name`` …). A secret client's
        secret is in the returned registration, once.

        Raises:
            InvalidClientMetadata: the metadata breaks a rule, or names a
                SPIFFE method (use :meth:`add`).
        """
        method = body.get("token_endpoint_auth_method")
        if method not in KEY_METHODS | SECRET_METHODS:
            raise InvalidClientMetadata(
                "token_endpoint_auth_method must be a key or secret method here",
                detail=f"add_other with method {method!r}",
            )
        return await self._registration.register_other(
            body, actor=self._actor, granted_scopes=tuple(scopes), event="client.added"
        )

    async def grant(self, client_id: str, scopes: Sequence[str]) -> Client:
        """Add scopes to what the client was granted."""
        return await self._change_scopes(client_id, add=scopes, remove=())

    async def revoke(self, client_id: str, scopes: Sequence[str]) -> Client:
        """Take scopes away."""
        return await self._change_scopes(client_id, add=(), remove=scopes)

    async def _change_scopes(
        self, client_id: str, *, add: Sequence[str], remove: Sequence[str]
    ) -> Client:
        for scope in (*add, *remove):
            if not scope or any(c in scope for c in ' "\\') or not scope.isprintable():
                raise InvalidClientMetadata(f"not a valid scope: {scope!r}")
        now = self._clock.now()
        async with self._db.transaction() as tx:
            row = await self._repository.get_row(tx, client_id)
            if row is None:
                raise ClientNotFound(client_id)
            before = sorted(row.granted_scopes or ())
            after = sorted((set(before) | set(add)) - set(remove))
            if after == before:
                # Nothing changes: no write, no audit record, and the idle
                # clock (updated_at) keeps running.
                return to_client(row)
            row.granted_scopes = after
            row.updated_at = now
            record_audit(
                tx,
                "client.scopes_changed",
                actor=self._actor,
                client_id=client_id,
                detail={"before": before, "after": after},
                at=now,
            )
            tx.announce("client", client_id)
            client = to_client(row)
        return client

    async def set_disabled(self, client_id: str, disabled: bool) -> Client:
        now = self._clock.now()
        async with self._db.transaction() as tx:
            row = await self._repository.get_row(tx, client_id)
            if row is None:
                raise ClientNotFound(client_id)
            row.disabled = disabled
            row.disabled_at = now if disabled else None
            row.disabled_reason = "operator" if disabled else None
            row.updated_at = now
            record_audit(
                tx,
                "client.disabled" if disabled else "client.enabled",
                actor=self._actor,
                client_id=client_id,
                at=now,
            )
            tx.announce("client", client_id)
            client = to_client(row)
        return client

    async def delete(self, client_id: str) -> None:
        now = self._clock.now()
        async with self._db.transaction() as tx:
            row = await self._repository.get_row(tx, client_id)
            if row is None:
                raise ClientNotFound(client_id)
            await self._repository.delete(tx, client_id, at=now)
            record_audit(
                tx,
                "client.deleted",
                actor=self._actor,
                client_id=client_id,
                detail={"metadata": dict(row.client_metadata)},
                at=now,
            )
            tx.announce("client", client_id)
