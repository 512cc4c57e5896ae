"""The one gate every bundle change goes through: order, log, audit (D3).

Whatever the source (a file, a SPIFFE bundle endpoint, the Workload API),
a new bundle reaches the :class:`TrustStore` through
:meth:`BundleUpdates.apply`, and a failed refresh through
:meth:`BundleUpdates.refuse`. Here:

- ``spiffe_sequence`` orders bundles (SPIFFE Trust Domain and Bundle
  §4.1.1, SPIFFE Federation §4.2): a bundle whose sequence is lower than the
  one in force is refused; a bundle without a sequence, or replacing one
  without, is taken as it comes.
- A bundle identical to the one in force only confirms it is fresh; a
  different one is installed as a new generation, which drops every cached
  SVID verification of that trust domain.
- Every change is logged and audited as ``bundle.updated`` with the old
  and new sequence and the SHA-256 fingerprints of the X.509 authorities
  (over their DER) and of the JWT keys (kid and SHA-256 over the
  SubjectPublicKeyInfo). Every refusal is logged and audited as
  ``bundle.refused`` with the reason; a source that keeps failing for the
  same reason is logged every time but audited once, until it works again
  or the reason changes. A trust domain past its maximum age is logged
  and audited as ``bundle.expired``.

Audit records go through the :class:`AuditSink` (the process's
``AuditBuffer``), which queues them and writes them from its background
task, never from a request. Every replica, and every worker process of a
replica, follows its sources on its own and writes its own records; the
``actor`` (``swim-as@host:pid``) tells them apart.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization

from swim_as.clock import Clock
from swim_as.observability.audit import AuditSink, replica_actor
from swim_as.spiffe.bundle import JwtBundle, X509Bundle
from swim_as.spiffe.ids import TrustDomain
from swim_as.trust.store import TrustStore

log = logging.getLogger("swim_as.trust")


def x509_fingerprints(bundle: X509Bundle | None) -> list[str]:
    """SHA-256 over the DER of each authority, hex, sorted."""
    if bundle is None:
        return []
    return sorted(
        hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
        for c in bundle.authorities
    )


def jwt_fingerprints(bundle: JwtBundle | None) -> dict[str, str]:
    """kid → SHA-256 over the key's SubjectPublicKeyInfo, hex."""
    if bundle is None:
        return {}
    return {
        kid: hashlib.sha256(
            key.public_key.public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        ).hexdigest()
        for kid, key in sorted(bundle.keys.items())
    }


class BundleUpdates:
    """Applies, refuses and expires bundles; logs and audits each step."""

    def __init__(
        self,
        store: TrustStore,
        audit: AuditSink | None,
        clock: Clock,
        *,
        actor: str | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._actor = actor or replica_actor()
        # The refusal last audited per trust domain; cleared by a success.
        self._audited_refusal: dict[TrustDomain, tuple[str, str]] = {}

    @property
    def store(self) -> TrustStore:
        return self._store

    def apply(
        self,
        trust_domain: TrustDomain,
        *,
        x509: X509Bundle | None = None,
        jwt: JwtBundle | None = None,
        origin: str,
    ) -> bool:
        """Install the bundles a source read; True when something changed.

        ``None`` leaves that kind as it is (a source that delivers X.509
        and JWT bundles separately). A lower ``spiffe_sequence`` than the
        one in force is refused (logged and audited) and False returned.
        """
        state = self._store.state(trust_domain)
        if state is None:
            raise KeyError(f"trust domain {trust_domain} is not configured")
        for new, old, kind in ((x509, state.x509, "X.509"), (jwt, state.jwt, "JWT")):
            if (
                new is not None
                and old is not None
                and new.sequence is not None
                and old.sequence is not None
                and new.sequence < old.sequence
            ):
                self.refuse(
                    trust_domain,
                    "sequence",
                    f"{kind} bundle spiffe_sequence {new.sequence} is lower than "
                    f"{old.sequence}, the one in force",
                    origin=origin,
                )
                return False

        # One document yields both kinds with the same notes: say each once.
        skipped = list(
            dict.fromkeys(n for b in (x509, jwt) if b is not None for n in b.skipped)
        )
        for note in skipped:
            log.warning(
                "bundle entry skipped: %s",
                note,
                extra={
                    "event": "bundle.entry_skipped",
                    "trust_domain": trust_domain.name,
                    "origin": origin,
                    "reason": note,
                },
            )

        old_x509 = x509_fingerprints(state.x509)
        old_jwt = jwt_fingerprints(state.jwt)
        new_x509 = x509_fingerprints(x509) if x509 is not None else old_x509
        new_jwt = jwt_fingerprints(jwt) if jwt is not None else old_jwt
        loaded_before = state.x509 is not None or state.jwt is not None
        same_keys = new_x509 == old_x509 and new_jwt == old_jwt
        same_sequences = all(
            new is None or old is None or new.sequence == old.sequence
            for new, old in ((x509, state.x509), (jwt, state.jwt))
        )
        unchanged = loaded_before and same_keys and same_sequences
        self._audited_refusal.pop(trust_domain, None)
        if unchanged and not state.expired:
            self._store.mark_fresh(trust_domain)
            return False

        old_seq, old_jwt_seq = _sequence(state.x509), _sequence(state.jwt)
        for new, old, kind, same in (
            (x509, state.x509, "X.509", new_x509 == old_x509),
            (jwt, state.jwt, "JWT", new_jwt == old_jwt),
        ):
            if (
                new is not None
                and old is not None
                and new.sequence is not None
                and new.sequence == old.sequence
                and not same
            ):
                log.warning(
                    "%s bundle content changed without a new spiffe_sequence",
                    kind,
                    extra={
                        "event": "bundle.sequence_unchanged",
                        "trust_domain": trust_domain.name,
                        "origin": origin,
                    },
                )
        restored = state.expired
        self._store.set_bundles(trust_domain, x509_bundle=x509, jwt_bundle=jwt)
        detail = {
            "trust_domain": trust_domain.name,
            "source": state.source,
            "origin": origin,
            "old_sequence": old_seq,
            "new_sequence": _sequence(state.x509),
            "old_jwt_sequence": old_jwt_seq,
            "new_jwt_sequence": _sequence(state.jwt),
            "old_authorities": old_x509,
            "new_authorities": new_x509,
            "old_jwt_keys": old_jwt,
            "new_jwt_keys": new_jwt,
            "restored": restored,
            "skipped": skipped,
        }
        log.info(
            "bundle updated: %d X.509 authorities (sequence %s -> %s), "
            "%d JWT keys (sequence %s -> %s)",
            len(new_x509),
            old_seq,
            detail["new_sequence"],
            len(new_jwt),
            old_jwt_seq,
            detail["new_jwt_sequence"],
            extra={"event": "bundle.updated", **detail},
        )
        self._record("bundle.updated", detail)
        return True

    def confirm(self, trust_domain: TrustDomain) -> None:
        """The source says the bundle in force is still current."""
        state = self._store.state(trust_domain)
        if state is None or state.expired:
            return
        if state.x509 is None and state.jwt is None:
            return
        self._audited_refusal.pop(trust_domain, None)
        self._store.mark_fresh(trust_domain)

    def refuse(
        self, trust_domain: TrustDomain, reason: str, message: str, *, origin: str
    ) -> None:
        """A refresh failed or brought bad input: keep the last good bundle.

        ``reason`` is a short stable label (``"http_status"``,
        ``"sequence"``…); ``message`` says what happened.
        """
        self._store.mark_failed(trust_domain, message)
        state = self._store.state(trust_domain)
        age = None
        if state is not None and state.refreshed_at is not None:
            age = round(self._clock.time() - state.refreshed_at, 3)
        detail = {
            "trust_domain": trust_domain.name,
            "source": state.source if state else None,
            "origin": origin,
            "reason": reason,
            "error": message,
            "sequence_in_force": _sequence(state.x509) if state else None,
            "age_seconds": age,
            "max_age_seconds": state.max_age if state else None,
        }
        log.error(
            "bundle refused, the last good bundle stays in force: %s",
            message,
            extra={"event": "bundle.refused", **detail},
        )
        if self._audited_refusal.get(trust_domain) != (reason, message):
            self._audited_refusal[trust_domain] = (reason, message)
            self._record("bundle.refused", detail)

    def check_ages(self) -> list[TrustDomain]:
        """Expire every trust domain past its maximum age; return them."""
        now = self._clock.time()
        expired = []
        for state in list(self._store.domains()):
            if state.expired or not state.stale(now):
                continue
            assert state.refreshed_at is not None
            last = datetime.fromtimestamp(state.refreshed_at, UTC).isoformat()
            reason = (
                f"bundle not refreshed for longer than its maximum age "
                f"({state.max_age:g} s; last refreshed {last})"
                + (f"; last error: {state.error}" if state.error else "")
            )
            detail = {
                "trust_domain": state.trust_domain.name,
                "source": state.source,
                "origin": state.origin,
                "last_refreshed": last,
                "max_age_seconds": state.max_age,
                "last_error": state.error,
            }
            self._store.expire(state.trust_domain, reason)
            log.error(
                "trust domain refused: %s",
                reason,
                extra={"event": "bundle.expired", **detail},
            )
            self._record("bundle.expired", detail)
            expired.append(state.trust_domain)
        return expired

    def _record(self, event: str, detail: dict[str, Any]) -> None:
        if self._audit is not None:
            self._audit.add(event, actor=self._actor, detail=detail)


def _sequence(bundle: X509Bundle | JwtBundle | None) -> int | None:
    return None if bundle is None else bundle.sequence
