"""SQLAlchemy models: clients, signing keys, used assertions, audit (D11).

One schema for PostgreSQL (asyncpg) and SQLite (aiosqlite). Identifiers such as
SPIFFE IDs are stored byte-exact in ``Text`` columns: both databases compare
them by bytes for equality, and nothing here lowercases or trims them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on both databases (SQLite returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# BIGINT on PostgreSQL; plain INTEGER on SQLite so that it is the rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ClientRow(Base):
    """An OAuth client: a registered workload (RFC 7591 §2 metadata)."""

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(Text, primary_key=True)
    # The SPIFFE ID (or "/*" pattern) this client authenticates as, if any.
    spiffe_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    auth_method: Mapped[str] = mapped_column(String(64))
    # Registered metadata as granted (RFC 7591 §3.2.1), without client_id.
    client_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    # Scopes and audiences an operator granted (D13); never from the client.
    granted_scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(Text)
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # SHA-256 of the RFC 7592 registration access token; never the token.
    registration_token_hash: Mapped[str | None] = mapped_column(
        String(64), nullable=True
    )
    # scrypt hash of a client secret (client_secret_* methods only); never
    # the secret itself.
    client_secret_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Why the client is disabled: "operator" or "expired" (the idle job);
    # only clients the job disabled are deleted by it later.
    disabled_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)

    __table_args__ = (Index("ix_clients_spiffe_id", "spiffe_id"),)


class ClientTombstoneRow(Base):
    """When a client was last deleted (RFC 7592 §2.3).

    Access tokens are self-contained JWTs; a token of this ``client_id``
    whose ``iat`` is not after ``deleted_at`` belongs to the deleted client
    and must be reported inactive by introspection. A client re-created
    with the same id keeps the tombstone, so old tokens stay dead.
    """

    __tablename__ = "client_tombstones"

    client_id: Mapped[str] = mapped_column(Text, primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(UtcDateTime)


class InitialAccessTokenRow(Base):
    """An initial access token (RFC 7591 §3): stored only as its hash."""

    __tablename__ = "initial_access_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # SPIFFE IDs and "/*" patterns it may register.
    patterns: Mapped[list[str]] = mapped_column(JSON)
    # Scopes a client registered with it is granted (operator intent, D13).
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class SigningKeyRow(Base):
    """A token signing key (D7). The private part is sealed under the KEK."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    # next → active → retiring → retired
    state: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # When a "next" key may start signing (published at least this long).
    activate_after: Mapped[datetime] = mapped_column(UtcDateTime)
    activated_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # A retiring key stays in the JWKS until every token it signed expired.
    publish_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class UsedAssertionRow(Base):
    """A ``private_key_jwt`` assertion already accepted (RFC 7523 §3 item 7).

    The primary key makes a second use fail on every replica at once; rows
    are purged once the assertion has expired.
    """

    __tablename__ = "used_assertions"

    # SHA-256 hex of client_id, a NUL byte and the jti.
    jti_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_used_assertions_expires_at", "expires_at"),)


class AuditRow(Base):
    """An append-only audit record."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    event: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_client_id", "client_id"),
        Index("ix_audit_events_event", "event"),
        Index("ix_audit_events_actor", "actor"),
    )
