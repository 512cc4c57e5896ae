"""The keyring: which key signs now, which keys the JWKS publishes (D7).

A key moves next → active → retiring → retired. Which key signs is a pure
function of the stored rows and the clock: the newest key whose
``activate_after`` has passed. Every replica that has read the same rows
therefore switches at the same instant, whoever wrote the rows; PostgreSQL
notifications (and polling as a fallback) bound how stale the rows can be.

State changes in the database (promoting, retiring, creating the next key)
are done by :class:`KeyRotator`, on one replica at a time: under a
PostgreSQL transaction-level advisory lock (a replica that does not get it
skips the tick; the one that holds it does the work), or SQLite's write lock
on a single node. The work is idempotent, so a replica that ticks after
another finds nothing left to do.

How fast replicas agree (D7, D11): a change commits with a ``keys``
notification that every replica's listener turns into a reload at once;
:func:`follow_keys` also re-reads the keys every
``settings.KEY_RELOAD_SECONDS`` (5 s) whether or not a notification came.
A scheduled rotation publishes the next key ``publish_lead_seconds`` before
its ``activate_after``, and every replica that has read it switches at that
instant by its own clock; ``rotate --now`` reaches every replica within the
reload bound plus one second (the JWKS document's in-memory cache).

A key-encryption key (KEK) that does not open the stored keys: at the first
load :meth:`Keyring.load` raises, and swim-as does not start; later, the
keys already loaded stay in force, and a log line, an audit record
(``keys.load_failed``) and ``/readyz`` say why. A rotator whose KEK does not
open the keys in force creates no keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import select, text

from swim_as.clock import Clock
from swim_as.keys.crypto import (
    KeyDecryptionError,
    PrivateKey,
    new_key,
    seal,
    unseal,
)
from swim_as.observability.audit import AuditSink, record_audit, replica_actor
from swim_as.storage.db import Database, Transaction
from swim_as.storage.models import SigningKeyRow

log = logging.getLogger("swim_as.keys")

NEXT, ACTIVE, RETIRING, RETIRED = "next", "active", "retiring", "retired"
PUBLISHED_STATES = (NEXT, ACTIVE, RETIRING)

# Any 64-bit number works; this one is "swim-as keys" in ASCII, truncated.
_ROTATION_LOCK = 0x7377696D2D6B6579


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Signer:
    """A loaded signing key with its precomputed JWS header (RFC 9068 §2.1)."""

    kid: str
    alg: str
    private_key: PrivateKey
    header_b64: bytes
    algorithm: Any

    @classmethod
    def create(cls, kid: str, alg: str, private_key: PrivateKey) -> Signer:
        header = json.dumps(
            {"alg": alg, "kid": kid, "typ": "at+jwt"}, separators=(",", ":")
        ).encode()
        return cls(
            kid, alg, private_key, _b64(header).encode(), jwt.get_algorithm_by_name(alg)
        )

    def sign(self, payload: bytes) -> str:
        """A compact JWS (RFC 7515 §7.1) over ``payload`` (JSON bytes)."""
        signing_input = self.header_b64 + b"." + _b64(payload).encode()
        signature = self.algorithm.sign(signing_input, self.private_key)
        return (signing_input + b"." + _b64(signature).encode()).decode()


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One stored key as this replica knows it."""

    kid: str
    alg: str
    state: str
    jwk: dict[str, Any]
    activate_after: datetime
    publish_until: datetime | None
    signer: Signer


class Keyring:
    """The keys of this replica: the signer now, and the published JWKS."""

    def __init__(
        self, db: Database, kek: bytes, clock: Clock, *, audit: AuditSink | None = None
    ) -> None:
        self._db = db
        self._kek = kek
        self._clock = clock
        self._audit = audit
        self._entries: tuple[KeyEntry, ...] = ()
        self._jwks_cache: tuple[float, bytes] | None = None
        self.loaded_at: float | None = None
        self.last_error: str | None = None

    async def load(self) -> None:
        """Read every unretired key; keep the previous set if that fails.

        Raises:
            KeyDecryptionError: at first load only, when the KEK is wrong.
        """
        async with self._db.reading() as session:
            rows = (
                await session.scalars(
                    select(SigningKeyRow).where(
                        SigningKeyRow.state.in_(PUBLISHED_STATES)
                    )
                )
            ).all()
        entries = []
        try:
            for row in rows:
                key = unseal(self._kek, row.kid, row.sealed_private_key)
                entries.append(
                    KeyEntry(
                        row.kid,
                        row.alg,
                        row.state,
                        dict(row.public_jwk),
                        row.activate_after,
                        row.publish_until,
                        Signer.create(row.kid, row.alg, key),
                    )
                )
        except KeyDecryptionError as err:
            if not self._entries:
                self.last_error = str(err)
                raise
            if self.last_error != str(err) and self._audit is not None:
                self._audit.add(
                    "keys.load_failed",
                    actor=replica_actor(),
                    detail={
                        "reason": "kek",
                        "message": str(err),
                        "kept": [e.kid for e in self._entries],
                    },
                )
            self.last_error = str(err)
            log.error(
                "signing keys not reloaded, the previous keys stay in force: %s",
                err,
                extra={
                    "event": "keys.load_failed",
                    "reason": "kek",
                    "kept": [e.kid for e in self._entries],
                },
            )
            return
        self._entries = tuple(sorted(entries, key=lambda e: e.activate_after))
        self._jwks_cache = None
        self.loaded_at = self._clock.time()
        self.last_error = None

    def invalidate(self) -> None:
        """Forget the cached JWKS; the next :meth:`load` reads the rows."""
        self._jwks_cache = None

    def signer(self) -> Signer:
        """The key that signs at this instant: the newest one already due."""
        now = self._clock.now()
        current: KeyEntry | None = None
        for entry in self._entries:  # sorted by activate_after
            if entry.state in (NEXT, ACTIVE) and entry.activate_after <= now:
                current = entry
        if current is None:
            raise LookupError("no signing key is active")
        return current.signer

    def has_signer(self) -> bool:
        try:
            self.signer()
        except LookupError:
            return False
        return True

    def jwks(self) -> bytes:
        """The JWKS document (RFC 7517 §5), public members only."""
        now = self._clock.time()
        if self._jwks_cache is not None and self._jwks_cache[0] > now:
            return self._jwks_cache[1]
        at = self._clock.now()
        keys = [
            e.jwk
            for e in self._entries
            if e.publish_until is None or e.publish_until > at
        ]
        body = json.dumps({"keys": keys}, separators=(",", ":")).encode()
        # Publication changes only when a retiring key's time runs out.
        self._jwks_cache = (now + 1.0, body)
        return body

    def entries(self) -> tuple[KeyEntry, ...]:
        return self._entries


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """The timing rules of D7."""

    algorithm: str
    publish_lead: timedelta
    retain: timedelta
    rotate_every: timedelta | None


class KeyRotator:
    """Creates, promotes and retires keys in the database (one replica)."""

    def __init__(
        self, db: Database, kek: bytes, clock: Clock, policy: RotationPolicy
    ) -> None:
        self._db = db
        self._kek = kek
        self._clock = clock
        self._policy = policy

    async def ensure_initial_key(self) -> str | None:
        """Create an active key if none exists; return its kid if created."""
        async with self._db.transaction() as tx:
            await self._lock(tx)
            rows = await self._rows(tx)
            if any(r.state in (ACTIVE, NEXT) for r in rows):
                return None
            kid = self._add(tx, ACTIVE, self._clock.now(), actor="swim-as")
        log.info(
            "created the first signing key", extra={"event": "key.created", "kid": kid}
        )
        return kid

    async def rotate(self, *, actor: str, immediately: bool = False) -> str:
        """Add a next key, published ``publish_lead`` before it signs.

        With ``immediately`` the key signs at once (for a compromised key);
        tokens signed by the old key keep verifying until they expire.
        """
        async with self._db.transaction() as tx:
            await self._lock(tx)
            rows = await self._rows(tx)
            self._check_kek(rows)
            now = self._clock.now()
            pending = [r for r in rows if r.state == NEXT]
            if pending and not immediately:
                return pending[0].kid
            at = now if immediately else now + self._policy.publish_lead
            kid = self._add(tx, NEXT, at, actor=actor)
            if immediately:
                # The new key signs now; every key that signed or was about
                # to (a next key already published) stays published until
                # its tokens have expired.
                await tx.session.flush()
                await self._promote_due(tx, await self._rows(tx), now, newest=kid)
            record_audit(
                tx,
                "key.rotated",
                actor=actor,
                detail={"kid": kid, "immediately": immediately},
                at=now,
            )
        log.info(
            "rotation scheduled",
            extra={"event": "key.rotated", "kid": kid, "immediately": immediately},
        )
        return kid

    async def tick(self) -> bool:
        """Do whatever rotation work is due; True if something changed."""
        async with self._db.transaction() as tx:
            if not await self._lock(tx, wait=False):
                return False
            rows = await self._rows(tx)
            try:
                self._check_kek(rows)
            except KeyDecryptionError as err:
                log.error(
                    "no rotation work on this replica: %s",
                    err,
                    extra={"event": "keys.rotation_skipped", "reason": "kek"},
                )
                return False
            now = self._clock.now()
            changed = await self._promote_due(tx, rows, now)
            for row in rows:
                if (
                    row.state == RETIRING
                    and row.publish_until
                    and row.publish_until <= now
                ):
                    row.state = RETIRED
                    row.retired_at = row.retired_at or now
                    changed = True
                    record_audit(
                        tx, "key.retired", actor="swim-as", detail={"kid": row.kid}
                    )
            every = self._policy.rotate_every
            active = [r for r in rows if r.state == ACTIVE]
            if (
                every is not None
                and active
                and not any(r.state == NEXT for r in rows)
                and (active[-1].activated_at or active[-1].created_at)
                + every
                - self._policy.publish_lead
                <= now
            ):
                self._add(tx, NEXT, now + self._policy.publish_lead, actor="schedule")
                changed = True
            if changed:
                tx.announce("keys", "*")
        return changed

    async def _promote_due(
        self,
        tx: Transaction,
        rows: list[SigningKeyRow],
        now: datetime,
        *,
        newest: str | None = None,
    ) -> bool:
        """Make the newest due key active; every other signing key retiring.

        A retiring key stays published for ``retain`` (the longest token
        lifetime plus leeway) counted from now, when it stops signing.
        """
        due = [r for r in rows if r.state == NEXT and r.activate_after <= now]
        if not due:
            return False
        chosen = max(due, key=lambda r: (r.kid == newest, r.activate_after))
        for row in rows:
            if row.state in (ACTIVE, NEXT) and row is not chosen:
                row.state = RETIRING
                row.retired_at = now
                row.publish_until = now + self._policy.retain
                record_audit(
                    tx,
                    "key.retiring",
                    actor="swim-as",
                    detail={
                        "kid": row.kid,
                        "publish_until": row.publish_until.isoformat(),
                    },
                )
        chosen.state = ACTIVE
        chosen.activated_at = now
        record_audit(tx, "key.activated", actor="swim-as", detail={"kid": chosen.kid})
        tx.announce("keys", "*")
        return True

    def _check_kek(self, rows: list[SigningKeyRow]) -> None:
        """Refuse rotation work when this KEK does not open the keys in force.

        Raises:
            KeyDecryptionError: it does not.
        """
        for row in rows:
            if row.state in PUBLISHED_STATES:
                unseal(self._kek, row.kid, row.sealed_private_key)
                return

    def _add(
        self, tx: Transaction, state: str, activate_after: datetime, *, actor: str
    ) -> str:
        key = new_key(self._policy.algorithm)
        now = self._clock.now()
        tx.session.add(
            SigningKeyRow(
                kid=key.kid,
                alg=key.alg,
                state=state,
                public_jwk=key.jwk,
                sealed_private_key=seal(self._kek, key.kid, key.private_key),
                created_at=now,
                activate_after=activate_after,
                activated_at=now if state == ACTIVE else None,
            )
        )
        record_audit(
            tx,
            "key.created",
            actor=actor,
            detail={
                "kid": key.kid,
                "alg": key.alg,
                "state": state,
                "activate_after": activate_after.isoformat(),
            },
        )
        tx.announce("keys", key.kid)
        return key.kid

    async def _rows(self, tx: Transaction) -> list[SigningKeyRow]:
        result = await tx.session.scalars(
            select(SigningKeyRow)
            .where(SigningKeyRow.state != RETIRED)
            .order_by(SigningKeyRow.activate_after)
        )
        return list(result.all())

    async def _lock(self, tx: Transaction, *, wait: bool = True) -> bool:
        """Serialise rotation across replicas (PostgreSQL advisory lock)."""
        if not self._db.is_postgres:
            # SQLite: a write lock taken now, held to the end of the transaction.
            await tx.session.execute(
                text("UPDATE signing_keys SET state = state WHERE 0")
            )
            return True
        function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
        result = await tx.session.execute(
            text(f"SELECT {function}(:key)"), {"key": _ROTATION_LOCK}
        )
        return wait or bool(result.scalar())


async def follow_keys(
    keyring: Keyring,
    rotator: KeyRotator | None,
    *,
    poll_seconds: float,
    stop: asyncio.Event,
    wake: asyncio.Event | None = None,
) -> None:
    """Background task: reload on change, poll as a fallback, run rotation.

    ``wake`` is set by change notifications (and at stop); however many
    arrive while a reload runs, they cause one more reload, not one each.
    """
    wake = wake or stop
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=poll_seconds)
        if stop.is_set():
            return
        if wake is not stop:
            wake.clear()
        try:
            if rotator is not None:
                await rotator.tick()
            await keyring.load()
        except Exception as err:  # keep the previous keys and say why
            log.warning(
                "key refresh failed; previous keys stay in force",
                extra={"event": "keys.refresh_failed", "reason": repr(err)},
            )


async def kek_problem(database_url: str, kek: bytes) -> str | None:
    """Why ``kek`` does not open the stored signing keys, or None (D7).

    Run before serving, so that a wrong key-encryption key stops
    ``swim-as serve`` with one clear sentence instead of failing later.
    """
    db = Database(database_url, pool_size=1)
    try:
        async with db.reading() as session:
            rows = (
                await session.scalars(
                    select(SigningKeyRow).where(
                        SigningKeyRow.state.in_(PUBLISHED_STATES)
                    )
                )
            ).all()
        for row in rows:
            unseal(kek, row.kid, row.sealed_private_key)
    except KeyDecryptionError as err:
        return (
            f"{err}: keys.encryption_key_file (or SWIM_AS_KEYS__ENCRYPTION_KEY) is "
            "not the key-encryption key the signing keys in the database were "
            "stored with"
        )
    finally:
        await db.close()
    return None
