"""Dynamic client registration (RFC 7591 §3) and its management (RFC 7592).

A workload registers itself by presenting its X.509-SVID over mTLS; the
SPIFFE ID it registers must be its own (D1, D13). Registration is idempotent
on the ``client_id``: the database's unique key decides races, so a burst of
registrations for one SPIFFE ID creates one row and every caller gets that
client back.

Every registration carries a registration access token (RFC 7592 §1.2): high
entropy, stored only as a SHA-256 hash. Repeating a registration with the
same SVID returns the same client, unchanged and without a token: the token
issued first stays valid, and the holder of the SVID can always manage its
registration with the SVID itself (RFC 7592 over mTLS), so a lost token
needs no recovery path.

Clients without a SPIFFE identity (``private_key_jwt``,
``self_signed_tls_client_auth``, and the client secret methods) cannot
prove who they are at registration, so they are never self-registered:
:meth:`RegistrationService.register_other` creates them, with an opaque
``client_id`` (D1), for an authorised actor (the operator's CLI today).
Over HTTP such a registration is refused until registration by initial
access token exists. A client secret is generated here, returned once, and
stored only as a slow hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from swim_as.clientauth.client_secret import hash_secret, new_secret
from swim_as.clients.metadata import (
    KEY_METHODS,
    SECRET_METHODS,
    SPIFFE_METHODS,
    ValidatedMetadata,
    validate_metadata,
)
from swim_as.clients.model import Client
from swim_as.clients.statements import stored_statement_metadata
from swim_as.clock import Clock
from swim_as.errors import (
    AccessDenied,
    InvalidClientMetadata,
    InvalidRequest,
    InvalidSoftwareStatement,
    InvalidToken,
)
from swim_as.observability.audit import record_audit
from swim_as.storage.clients import SqlClientRepository, to_client
from swim_as.storage.db import Database, Transaction

log = logging.getLogger("swim_as.registration")

# Members the server sets; a client cannot choose them (RFC 7591 §3.2.1).
SERVER_MEMBERS = frozenset(
    {
        "client_id",
        "client_secret",
        "client_id_issued_at",
        "client_secret_expires_at",
        "registration_access_token",
        "registration_client_uri",
    }
)


def hash_token(token: str) -> str:
    """SHA-256 hex of a high-entropy token (no salt needed at 256 bits)."""
    return hashlib.sha256(token.encode()).hexdigest()


# A jwks_uri check: the URL rules at once (raises InvalidClientMetadata),
# and the full check with DNS (awaited).
UriCheck = Callable[[str], None]
DestinationCheck = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Registration:
    """A client as registered, with its management handles.

    ``client_secret`` is set only in the response that created a secret
    client: it is never stored and never shown again.
    """

    client: Client
    created: bool
    registration_access_token: str | None
    client_secret: str | None = None


class RegistrationService:
    """Creates, reads, replaces and deletes client registrations."""

    def __init__(
        self,
        db: Database,
        repository: SqlClientRepository,
        clock: Clock,
        *,
        issuer: str,
        enabled_methods: frozenset[str],
        self_registration: bool,
        check_jwks_uri: UriCheck | None = None,
        check_destination: DestinationCheck | None = None,
    ) -> None:
        self._db = db
        self._repository = repository
        self._clock = clock
        self._issuer = issuer
        self._enabled_methods = enabled_methods
        self._self_registration = self_registration
        self._check_jwks_uri = check_jwks_uri
        self._check_destination = check_destination

    def client_uri(self, client_id: str) -> str:
        """RFC 7592 §2: the client configuration endpoint of a client."""
        return f"{self._issuer}/register/{quote(client_id, safe='')}"

    def validate(
        self,
        body: Mapping[str, Any],
        caller_spiffe_id: str | None,
        *,
        also_methods: frozenset[str] = frozenset(),
    ) -> ValidatedMetadata:
        """RFC 7591 §2 rules; ``also_methods`` widens the enabled methods
        (a client keeps the method it registered, a controller may register
        JWT-SVID clients)."""
        return validate_metadata(
            body,
            enabled_methods=self._enabled_methods | also_methods,
            caller_spiffe_id=caller_spiffe_id,
            check_jwks_uri=self._check_jwks_uri,
        )

    async def check_destinations(self, validated: ValidatedMetadata) -> None:
        """The DNS half of the jwks_uri check (D13), before anything is stored.

        Raises:
            InvalidClientMetadata: the jwks_uri resolves to a refused address.
        """
        uri = validated.metadata.get("jwks_uri")
        if uri is not None and self._check_destination is not None:
            await self._check_destination(uri)

    def refuse_unauthorised(self, body: Mapping[str, Any]) -> None:
        """Refuse, over HTTP, registrations that need a registration authority.

        A key-based or secret client has no SVID to prove who it is, so
        nothing ties the registration to its caller, and an initial access
        token's SPIFFE ID patterns cannot say which such clients a
        controller may create. They are created by :meth:`register_other`
        on behalf of an operator (``swim-as clients add-key-client``).

        A method that is not enabled is left to :meth:`validate`, which
        calls it unsupported.

        Raises:
            AccessDenied: the requested method is an enabled key or secret
                method.
        """
        method = body.get("token_endpoint_auth_method")
        needs_authority = (KEY_METHODS | SECRET_METHODS) & self._enabled_methods
        if isinstance(method, str) and method in needs_authority:
            raise AccessDenied(
                f"{method} clients are registered by an operator "
                "(swim-as clients add-key-client), not over HTTP",
                detail=f"POST /register asked for {method}",
            )

    async def register_self(
        self, body: Mapping[str, Any], caller_spiffe_id: str
    ) -> Registration:
        """A workload registers its own SPIFFE ID (RFC 7591 §3.1, D1).

        Raises:
            InvalidClientMetadata: the metadata breaks a rule.
            AccessDenied: the SPIFFE ID is not the caller's own, or
                self-registration is off.
        """
        self.refuse_unauthorised(body)
        validated = self.validate(body, caller_spiffe_id)
        if not self._self_registration:
            raise AccessDenied(
                "self-registration is disabled",
                detail=f"{caller_spiffe_id} tried to self-register",
            )
        if validated.spiffe_id != caller_spiffe_id:
            raise AccessDenied(
                "a workload may register only its own SPIFFE ID",
                detail=(
                    f"caller {caller_spiffe_id!r} asked to register "
                    f"{validated.spiffe_id!r}"
                ),
            )
        return await self.create_or_get(
            client_id=caller_spiffe_id, validated=validated, actor=caller_spiffe_id
        )

    async def register_other(
        self,
        body: Mapping[str, Any],
        *,
        actor: str,
        granted_scopes: tuple[str, ...] = (),
        event: str = "client.registered",
    ) -> Registration:
        """Register a client for an authorised ``actor`` (RFC 7591 §3.1).

        The caller has decided that ``actor`` may register this client (an
        operator, later an initial access token). SPIFFE clients get their
        SPIFFE ID as ``client_id`` and are idempotent as in
        :meth:`register_self`; key-based and secret clients get a new opaque
        ``client_id`` each time (D1), and secret clients a new secret.

        Raises:
            InvalidClientMetadata: the metadata breaks a rule.
        """
        validated = self.validate(body, None)
        await self.check_destinations(validated)
        if validated.auth_method in SPIFFE_METHODS:
            assert validated.spiffe_id is not None
            return await self.create_or_get(
                client_id=validated.spiffe_id,
                validated=validated,
                actor=actor,
                granted_scopes=granted_scopes,
                event=event,
            )
        secret = secret_hash = None
        if validated.auth_method in SECRET_METHODS:
            secret = new_secret()
            secret_hash = await asyncio.to_thread(hash_secret, secret)
        registration = await self.create_or_get(
            client_id=secrets.token_urlsafe(16),
            validated=validated,
            actor=actor,
            granted_scopes=granted_scopes,
            event=event,
            secret_hash=secret_hash,
        )
        # 128 random bits: a collision with an existing client is not a
        # case to handle, but it must never hand out someone else's client.
        assert registration.created
        return Registration(
            registration.client, True, registration.registration_access_token, secret
        )

    async def create_or_get(
        self,
        *,
        client_id: str,
        validated: ValidatedMetadata,
        actor: str,
        granted_scopes: tuple[str, ...] = (),
        event: str = "client.registered",
        secret_hash: str | None = None,
        audit_detail: Mapping[str, Any] | None = None,
        also: Callable[[Transaction, bool], Awaitable[None]] | None = None,
    ) -> Registration:
        """Insert the client unless it exists; either way, return it.

        Only a newly created client comes with a registration access token.
        ``audit_detail`` is added to the creation's audit record; ``also``
        runs inside the same transaction (told whether the client was
        created), so what it writes commits or vanishes with the client.
        """
        token = secrets.token_urlsafe(32)
        now = self._clock.now()
        async with self._db.transaction() as tx:
            created = await self._repository.insert_if_absent(
                tx,
                {
                    "client_id": client_id,
                    "spiffe_id": validated.spiffe_id,
                    "auth_method": validated.auth_method,
                    "client_metadata": validated.metadata,
                    "granted_scopes": sorted(set(granted_scopes)),
                    "disabled": False,
                    "created_at": now,
                    "updated_at": now,
                    "created_by": actor,
                    "registration_token_hash": hash_token(token),
                    "client_secret_hash": secret_hash,
                },
            )
            if created:
                record_audit(
                    tx,
                    event,
                    actor=actor,
                    client_id=client_id,
                    detail={
                        "metadata": _auditable(validated.metadata),
                        "granted_scopes": sorted(set(granted_scopes)),
                        **(audit_detail or {}),
                    },
                    at=now,
                )
                tx.announce("client", client_id)
            if also is not None:
                await also(tx, created)
            row = await self._repository.get_row(tx, client_id)
        assert row is not None  # inserted or already there, in this transaction
        client = to_client(row)
        if created:
            log.info(
                "client registered",
                extra={
                    "event": event,
                    "client_id": client_id,
                    "actor": actor,
                    "auth_method": client.auth_method,
                },
            )
        else:
            log.info(
                "registration repeated; existing client returned",
                extra={
                    "event": "client.registration_repeated",
                    "client_id": client_id,
                    "actor": actor,
                },
            )
        return Registration(client, created, token if created else None)

    def response(self, registration: Registration) -> dict[str, Any]:
        """The client information response (RFC 7591 §3.2.1, RFC 7592 §3)."""
        client = registration.client
        body: dict[str, Any] = {
            "client_id": client.client_id,
            "client_id_issued_at": int(client.created_at.timestamp()),
            **client.metadata,
            "registration_client_uri": self.client_uri(client.client_id),
        }
        if registration.registration_access_token is not None:
            body["registration_access_token"] = registration.registration_access_token
        if registration.client_secret is not None:
            # RFC 7591 §3.2.1: 0 means the secret does not expire.
            body["client_secret"] = registration.client_secret
            body["client_secret_expires_at"] = 0
        return body


@dataclass(frozen=True, slots=True)
class Manager:
    """Who manages a registration: a token holder or the workload's SVID."""

    registration_access_token: str | None = None
    spiffe_id: str | None = None

    @property
    def name(self) -> str:
        return self.spiffe_id or "registration-access-token"


class ManagementService:
    """RFC 7592: read, replace and delete a registration."""

    def __init__(self, registration: RegistrationService) -> None:
        self._reg = registration
        self._db = registration._db
        self._repository = registration._repository
        self._clock = registration._clock

    async def authorise(self, client_id: str, manager: Manager) -> Client:
        """RFC 7592 §2: the token (or the client's own SVID) must fit."""
        client_row = await self._repository.get_stored(client_id)
        if manager.registration_access_token is not None:
            if client_row is None or not token_matches(
                client_row.registration_token_hash, manager.registration_access_token
            ):
                # §2: an unknown client and a wrong token look the same.
                raise InvalidToken(
                    detail=f"registration access token does not fit {client_id!r}"
                )
        elif manager.spiffe_id is not None:
            if client_row is None or manager.spiffe_id != client_row.spiffe_id:
                raise InvalidToken(
                    "the client certificate does not own this registration",
                    detail=f"SVID {manager.spiffe_id!r} managing {client_id!r}",
                )
        else:
            raise InvalidToken(missing=True, detail="no registration access token")
        if client_row.disabled:
            # An operator's decision holds: the workload may not undo it by
            # deleting and re-creating, or by rewriting, its registration.
            raise AccessDenied(
                "client is disabled by an operator",
                detail=f"{manager.name} tried to manage disabled {client_id!r}",
            )
        return to_client(client_row)

    async def read(self, client_id: str, manager: Manager) -> dict[str, Any]:
        client = await self.authorise(client_id, manager)
        return self._reg.response(Registration(client, False, None))

    async def replace(
        self, client_id: str, body: Mapping[str, Any], manager: Manager
    ) -> dict[str, Any]:
        """RFC 7592 §2.2: the body replaces every client-set member."""
        client = await self.authorise(client_id, manager)
        for member in (
            "registration_access_token",
            "registration_client_uri",
            "client_secret_expires_at",
            "client_id_issued_at",
        ):
            if member in body:
                raise InvalidRequest(
                    f"{member} must not be sent in an update",
                    detail=f"PUT for {client_id!r} carried {member}",
                )
        sent_id = body.get("client_id")
        if sent_id is None:
            raise InvalidRequest("client_id is required in an update")
        if sent_id != client_id:
            raise InvalidRequest(
                "client_id does not match the registration",
                detail=f"PUT for {client_id!r} carried client_id {sent_id!r}",
            )
        if "client_secret" in body:
            # §2.2: a sent secret must equal the issued one; none is issued.
            raise InvalidRequest(
                "client_secret must not be sent: this client has none",
                detail=f"PUT for {client_id!r} carried client_secret",
            )
        fields = {
            k: v
            for k, v in body.items()
            if k not in ("client_id", "software_statement")
        }
        statement = _kept_statement(client, body.get("software_statement"))
        if statement is not None:
            # RFC 7591 §2.3: the statement's values keep precedence.
            fields.update(stored_statement_metadata(statement))
        # The method the client registered stays valid for it.
        validated = self._reg.validate(
            fields, client.spiffe_id, also_methods=frozenset({client.auth_method})
        )
        if statement is not None:
            validated = replace(
                validated,
                metadata={**validated.metadata, "software_statement": statement},
            )
        if validated.spiffe_id != client.spiffe_id:
            raise InvalidClientMetadata(
                "the client's identity cannot change",
                detail=f"{client.spiffe_id!r} -> {validated.spiffe_id!r}",
            )
        if (validated.auth_method in SECRET_METHODS) != (
            client.auth_method in SECRET_METHODS
        ):
            raise InvalidClientMetadata(
                "token_endpoint_auth_method cannot change to or from a secret",
                detail=f"{client.auth_method} -> {validated.auth_method}",
            )
        await self._reg.check_destinations(validated)
        now = self._clock.now()
        async with self._db.transaction() as tx:
            updated = await self._repository.update_fields(
                tx,
                client_id,
                auth_method=validated.auth_method,
                client_metadata=validated.metadata,
                updated_at=now,
            )
            if not updated:
                raise InvalidToken(detail=f"{client_id!r} vanished during the update")
            record_audit(
                tx,
                "client.updated",
                actor=manager.name,
                client_id=client_id,
                detail={
                    "before": _auditable(client.metadata),
                    "after": _auditable(validated.metadata),
                },
                at=now,
            )
            row = await self._repository.get_row(tx, client_id)
            tx.announce("client", client_id)
        assert row is not None
        log.info(
            "client updated",
            extra={
                "event": "client.updated",
                "client_id": client_id,
                "actor": manager.name,
            },
        )
        return self._reg.response(Registration(to_client(row), False, None))

    async def delete(self, client_id: str, manager: Manager) -> None:
        """RFC 7592 §2.3: the client and its registration token are gone."""
        client = await self.authorise(client_id, manager)
        now = self._clock.now()
        async with self._db.transaction() as tx:
            await self._repository.delete(tx, client_id, at=now)
            record_audit(
                tx,
                "client.deleted",
                actor=manager.name,
                client_id=client_id,
                detail={"metadata": _auditable(client.metadata)},
                at=now,
            )
            tx.announce("client", client_id)
        log.info(
            "client deleted",
            extra={
                "event": "client.deleted",
                "client_id": client_id,
                "actor": manager.name,
            },
        )


def _kept_statement(client: Client, sent: object) -> str | None:
    """The software statement an update keeps (RFC 7592 §2.2, RFC 7591 §2.3).

    The statement was verified at registration; an update may repeat it
    (it was returned, so the full replacement carries it) or drop it, but
    not swap in another, which would bypass its verification.

    Raises:
        InvalidSoftwareStatement: a different statement was sent.
    """
    if sent is None:
        return None
    if sent != client.metadata.get("software_statement"):
        raise InvalidSoftwareStatement(
            "a software statement cannot be replaced in an update",
            detail=f"PUT for {client.client_id!r} carried another statement",
        )
    assert isinstance(sent, str)
    return sent


def _auditable(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata for an audit record: a software statement by its digest."""
    statement = metadata.get("software_statement")
    if not isinstance(statement, str):
        return dict(metadata)
    digest = hashlib.sha256(statement.encode()).hexdigest()
    return {**metadata, "software_statement": f"sha256:{digest}"}


def token_matches(stored_hash: str | None, presented: str) -> bool:
    """Constant-time comparison of a presented token with a stored hash."""
    if stored_hash is None:
        return False
    return hmac.compare_digest(stored_hash, hash_token(presented))


__all__ = [
    "InvalidClientMetadata",
    "Manager",
    "ManagementService",
    "Registration",
    "RegistrationService",
    "hash_token",
    "token_matches",
]
