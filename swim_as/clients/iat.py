"""Initial access tokens (RFC 7591 §3): an operator's leave to register.

An operator creates one with ``swim-as iat create``; a platform controller
presents it as ``Authorization: Bearer`` (RFC 6750 §2.1) on
``POST /register`` to register workloads other than itself, including
wildcard ``spiffe_id`` patterns. A token:

* has 256 random bits and is shown once; swim-as stores only its SHA-256
  and never logs it (records name it by its public ``id``);
* expires, and can be revoked;
* is limited to SPIFFE ID patterns: it may register an ID its patterns
  match, or a wildcard inside one of its wildcard patterns;
* may carry scopes: a client registered with it is granted them
  (operator intent, D13), and may not register a ``scope`` outside them.

Missing, unknown, expired and revoked tokens are ``invalid_token`` (401,
RFC 6750 §3.1); a registration outside the token's patterns is
``insufficient_scope`` (403, RFC 6750 §3.1). Every use, and every refusal
of a known token, is audited.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from swim_as.clients.registration import hash_token
from swim_as.clients.statements import covers
from swim_as.clock import Clock
from swim_as.errors import InvalidToken
from swim_as.observability.audit import record_audit
from swim_as.policy.rules import is_scope_token
from swim_as.spiffe.errors import SpiffeIdError
from swim_as.spiffe.ids import SpiffeIdPattern
from swim_as.storage.db import Database, Transaction
from swim_as.storage.models import InitialAccessTokenRow

log = logging.getLogger("swim_as.registration")

TOKEN_PREFIX = "swimiat_"  # noqa: S105 (a prefix that secret scanners can find)
MAX_LIFETIME = timedelta(days=365)


class IatNotFound(LookupError):
    """No initial access token has this id."""


@dataclass(frozen=True, slots=True)
class InitialAccessToken:
    """An initial access token as stored (without its hash)."""

    id: str
    patterns: tuple[SpiffeIdPattern, ...]
    scopes: frozenset[str]
    description: str | None
    created_at: datetime
    created_by: str
    expires_at: datetime
    revoked_at: datetime | None
    uses: int
    last_used_at: datetime | None

    @property
    def actor(self) -> str:
        """How audit records name a registration made with this token."""
        return f"iat:{self.id}"

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "active"

    def allows(self, target: SpiffeIdPattern) -> bool:
        """Whether this token may register ``target`` (ID or pattern)."""
        return any(covers(pattern, target) for pattern in self.patterns)


def _from_row(row: InitialAccessTokenRow) -> InitialAccessToken:
    return InitialAccessToken(
        id=row.id,
        patterns=tuple(SpiffeIdPattern.parse(p) for p in row.patterns),
        scopes=frozenset(row.scopes or ()),
        description=row.description,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        uses=row.uses,
        last_used_at=row.last_used_at,
    )


def parse_patterns(patterns: Sequence[str]) -> list[SpiffeIdPattern]:
    """SPIFFE IDs or ``/*`` patterns an operator gave.

    Raises:
        ValueError: one is malformed or names a trust domain's own ID.
    """
    if not patterns:
        raise ValueError("at least one --pattern is required")
    parsed = []
    for text in patterns:
        try:
            pattern = SpiffeIdPattern.parse(text)
        except SpiffeIdError as err:
            raise ValueError(str(err)) from err
        if not pattern.is_wildcard and pattern.spiffe_id_is_root:
            raise ValueError(
                f"{text!r} names a trust domain, not a workload; "
                f"write '{text}/*' for all of its workloads"
            )
        parsed.append(pattern)
    return parsed


class InitialAccessTokens:
    """Create, list, revoke, verify and spend initial access tokens."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def create(
        self,
        *,
        patterns: Sequence[str],
        scopes: Sequence[str] = (),
        expires_in: timedelta,
        actor: str,
        description: str | None = None,
    ) -> tuple[str, InitialAccessToken]:
        """Make a token; return it (the only time it exists) and its record.

        Raises:
            ValueError: a pattern, scope or lifetime is not acceptable.
        """
        parsed = parse_patterns(patterns)
        bad = [s for s in scopes if not is_scope_token(s)]
        if bad:
            raise ValueError(f"not a scope: {bad[0]!r}")
        if not timedelta(seconds=1) <= expires_in <= MAX_LIFETIME:
            raise ValueError("the lifetime must be between 1 s and 365 days")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock.now()
        row = InitialAccessTokenRow(
            id="iat-" + secrets.token_hex(6),
            token_hash=hash_token(token),
            patterns=[str(p) for p in parsed],
            scopes=sorted(set(scopes)),
            description=description,
            created_at=now,
            created_by=actor,
            expires_at=now + expires_in,
            revoked_at=None,
            uses=0,
            last_used_at=None,
        )
        async with self._db.transaction() as tx:
            tx.session.add(row)
            record_audit(
                tx,
                "iat.created",
                actor=actor,
                detail={
                    "iat": row.id,
                    "patterns": row.patterns,
                    "scopes": row.scopes,
                    "expires_at": row.expires_at.isoformat(),
                    "description": description,
                },
                at=now,
            )
        log.info(
            "initial access token created",
            extra={"event": "iat.created", "iat": row.id, "actor": actor},
        )
        return token, _from_row(row)

    async def list(self) -> list[InitialAccessToken]:
        async with self._db.reading() as session:
            rows = await session.scalars(
                select(InitialAccessTokenRow).order_by(InitialAccessTokenRow.created_at)
            )
            return [_from_row(r) for r in rows.all()]

    async def revoke(self, iat_id: str, *, actor: str) -> InitialAccessToken:
        """Revoke a token (idempotent).

        Raises:
            IatNotFound: no token has this id.
        """
        now = self._clock.now()
        async with self._db.transaction() as tx:
            row = await tx.session.get(
                InitialAccessTokenRow, iat_id, with_for_update=True
            )
            if row is None:
                raise IatNotFound(iat_id)
            if row.revoked_at is None:
                row.revoked_at = now
                record_audit(
                    tx, "iat.revoked", actor=actor, detail={"iat": iat_id}, at=now
                )
            token = _from_row(row)
        log.info(
            "initial access token revoked",
            extra={"event": "iat.revoked", "iat": iat_id, "actor": actor},
        )
        return token

    async def verify(self, presented: str) -> InitialAccessToken:
        """The token's record, if it is known, unexpired and not revoked.

        Raises:
            InvalidToken: otherwise (RFC 6750 §3.1).
        """
        async with self._db.reading() as session:
            row = await session.scalar(
                select(InitialAccessTokenRow).where(
                    InitialAccessTokenRow.token_hash == hash_token(presented)
                )
            )
        if row is None:
            raise InvalidToken(
                "the initial access token is not valid",
                detail="unknown initial access token presented to /register",
            )
        token = _from_row(row)
        state = token.state(self._clock.now())
        if state != "active":
            await self.refused(token, f"token {state}")
            happened = "was revoked" if state == "revoked" else "has expired"
            raise InvalidToken(
                f"the initial access token {happened}",
                detail=f"initial access token {token.id} is {state}",
            )
        return token

    async def refused(
        self, token: InitialAccessToken, reason: str, *, target: str | None = None
    ) -> None:
        """Audit a refused use of a known token (its own transaction)."""
        try:
            async with self._db.transaction() as tx:
                record_audit(
                    tx,
                    "iat.refused",
                    actor=token.actor,
                    client_id=target,
                    detail={"iat": token.id, "reason": reason},
                    at=self._clock.now(),
                )
        except Exception as err:  # the refusal stands; the log says why
            log.warning(
                "audit record of a refused initial access token not written",
                extra={"event": "audit.write_failed", "reason": repr(err)},
            )

    async def spend(
        self,
        tx: Transaction,
        token: InitialAccessToken,
        *,
        client_id: str,
        created: bool,
    ) -> None:
        """Count and audit a use, inside the registration's transaction.

        The row is locked and checked again, so a token revoked while the
        registration ran registers nothing.

        Raises:
            InvalidToken: the token was revoked or expired meanwhile.
        """
        now = self._clock.now()
        row = await tx.session.get(
            InitialAccessTokenRow, token.id, with_for_update=True
        )
        if row is None or _from_row(row).state(now) != "active":
            raise InvalidToken(
                "the initial access token is not valid",
                detail=f"initial access token {token.id} revoked during registration",
            )
        await tx.session.execute(
            update(InitialAccessTokenRow)
            .where(InitialAccessTokenRow.id == token.id)
            .values(uses=InitialAccessTokenRow.uses + 1, last_used_at=now)
        )
        record_audit(
            tx,
            "iat.used",
            actor=token.actor,
            client_id=client_id,
            detail={"iat": token.id, "created": created},
            at=now,
        )
