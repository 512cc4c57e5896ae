"""Trust bundles per trust domain, and cached X.509-SVID verification (D3).

The store keeps, for every configured trust domain, its X.509 bundle and JWT
bundle, each tagged with a generation number that changes whenever the
bundle does. A successful SVID verification is cached by the presented chain
until the leaf's ``notAfter`` or the next change of its trust domain's
bundle, whichever comes first; the cache is only a shortcut, never a way
around a bundle change.

A trust domain whose bundle has not been confirmed fresh for longer than its
maximum age is not trusted at all (D3): the lookups below answer "no
bundle" from that instant on, by the injected clock, even before the
background check formally expires it (:meth:`TrustStore.expire`, which logs,
audits and bumps the generation).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from swim_as.clock import Clock
from swim_as.spiffe.bundle import JwtBundle, X509Bundle
from swim_as.spiffe.ids import TrustDomain
from swim_as.spiffe.x509svid import VerifiedX509Svid, verify_x509_svid

log = logging.getLogger("swim_as.trust")

BundleListener = Callable[[TrustDomain], None]


@dataclass
class TrustDomainState:
    """What this replica trusts for one trust domain right now."""

    trust_domain: TrustDomain
    x509: X509Bundle | None = None
    jwt: JwtBundle | None = None
    generation: int = 0
    # When the bundle was last confirmed fresh (loaded or refreshed).
    refreshed_at: float | None = None
    # Why the last refresh failed, if it did.
    error: str | None = None
    # Past the maximum age, the trust domain is refused altogether.
    expired: bool = False
    # Where the bundle comes from ("file", "bundle_endpoint", "workload_api")
    # and which file, URL or socket; for logs and /readyz.
    source: str = "file"
    origin: str | None = None
    # Seconds a bundle stays trusted without a successful refresh (None:
    # for ever).
    max_age: float | None = None
    # Refreshes that failed since the last one that worked.
    failures: int = 0

    def stale(self, now: float) -> bool:
        """Whether the bundle is past its maximum age at ``now`` (D3)."""
        if self.max_age is None or self.refreshed_at is None:
            return False
        return now - self.refreshed_at > self.max_age

    def trusted(self, now: float) -> bool:
        return not self.expired and not self.stale(now)


@dataclass(frozen=True, slots=True)
class _CachedSvid:
    svid: VerifiedX509Svid
    generation: int
    valid_until: float


@dataclass
class TrustStore:
    """Bundles of every configured trust domain, never merged (D3)."""

    clock: Clock
    cache_size: int = 10_000
    _domains: dict[TrustDomain, TrustDomainState] = field(default_factory=dict)
    _cache: OrderedDict[tuple[bytes, ...], _CachedSvid] = field(
        default_factory=OrderedDict
    )
    _listeners: list[BundleListener] = field(default_factory=list)

    def add_domain(
        self,
        trust_domain: TrustDomain,
        *,
        source: str = "file",
        origin: str | None = None,
        max_age: float | None = None,
    ) -> TrustDomainState:
        state = self._domains.setdefault(trust_domain, TrustDomainState(trust_domain))
        state.source, state.origin, state.max_age = source, origin, max_age
        return state

    def domains(self) -> Iterable[TrustDomainState]:
        return self._domains.values()

    def state(self, trust_domain: TrustDomain) -> TrustDomainState | None:
        return self._domains.get(trust_domain)

    def on_change(self, listener: BundleListener) -> None:
        """Call ``listener(trust_domain)`` after every bundle change."""
        self._listeners.append(listener)

    def set_bundles(
        self,
        trust_domain: TrustDomain,
        *,
        x509_bundle: X509Bundle | None = None,
        jwt_bundle: JwtBundle | None = None,
    ) -> None:
        """Install new bundles for a trust domain (a new generation)."""
        state = self._domains[trust_domain]
        if x509_bundle is not None:
            state.x509 = x509_bundle
        if jwt_bundle is not None:
            state.jwt = jwt_bundle
        state.generation += 1
        state.refreshed_at = self.clock.time()
        state.error = None
        state.failures = 0
        state.expired = False
        for listener in self._listeners:
            listener(trust_domain)

    def mark_fresh(self, trust_domain: TrustDomain) -> None:
        """The source confirmed the bundle is unchanged and current.

        An expired trust domain is not revived here: its source installs
        the bundle again with :meth:`set_bundles` (a new generation).
        """
        state = self._domains[trust_domain]
        state.refreshed_at = self.clock.time()
        state.error = None
        state.failures = 0

    def mark_failed(self, trust_domain: TrustDomain, reason: str) -> None:
        """A refresh failed: the last good bundle stays, its age grows."""
        state = self._domains[trust_domain]
        state.error = reason
        state.failures += 1

    def expire(self, trust_domain: TrustDomain, reason: str) -> None:
        """Stop trusting a trust domain whose bundle is too old (D3)."""
        state = self._domains[trust_domain]
        if not state.expired:
            state.expired = True
            state.generation += 1
            state.error = reason
            for listener in self._listeners:
                listener(trust_domain)

    def x509_bundle(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The bundle SVIDs of ``trust_domain`` are verified with, if trusted."""
        state = self._domains.get(trust_domain)
        if state is None or not state.trusted(self.clock.time()):
            return None
        return state.x509

    def jwt_bundle(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The JWT-SVID keys of ``trust_domain``, if trusted."""
        state = self._domains.get(trust_domain)
        if state is None or not state.trusted(self.clock.time()):
            return None
        return state.jwt

    def last_known_x509_bundle(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The newest X.509 bundle held, even past its maximum age.

        Only for authenticating an https_spiffe bundle endpoint (SPIFFE
        Federation §5.2.2: the latest bundle fetched), so that a trust
        domain that expired while its endpoint was down can recover; never
        for verifying a client's SVID.
        """
        state = self._domains.get(trust_domain)
        return None if state is None else state.x509

    def has_jwt_keys(self) -> bool:
        """Whether some trusted (not expired) trust domain has JWT-SVID keys."""
        return any(
            s.jwt is not None and s.jwt.keys and not s.expired
            for s in self._domains.values()
        )

    def x509_authorities(self) -> list[x509.Certificate]:
        """Every X.509 authority of every trust domain: the handshake store.

        The TLS handshake only pre-filters; every chain is verified again
        against its own trust domain's bundle by :meth:`verify_x509_svid`.
        A trust domain past its maximum age keeps its authorities here, so
        that its workloads get an OAuth ``invalid_client`` (with a log line
        saying why) rather than a bare TLS alert; the verification below
        refuses them.
        """
        out: list[x509.Certificate] = []
        for state in self._domains.values():
            if state.x509 is not None:
                out.extend(state.x509.authorities)
        return out

    def verify_x509_svid(
        self,
        leaf: x509.Certificate,
        intermediates: tuple[x509.Certificate, ...],
        cache_key: tuple[bytes, ...],
    ) -> VerifiedX509Svid:
        """Verify an X.509-SVID (SPIFFE X509-SVID §5), with a cache.

        Raises:
            X509SvidError: the chain is not a valid SVID of a configured
                trust domain at this instant.
        """
        now = self.clock.time()
        cached = self._cache.get(cache_key)
        if cached is not None:
            state = self._domains.get(cached.svid.spiffe_id.trust_domain)
            if (
                state is not None
                and state.generation == cached.generation
                and state.trusted(now)
                and now < cached.valid_until
            ):
                return cached.svid
            del self._cache[cache_key]
        at = self.clock.now()
        svid = verify_x509_svid(leaf, intermediates, self.x509_bundle, at)
        state = self._domains[svid.spiffe_id.trust_domain]
        self._cache[cache_key] = _CachedSvid(
            svid, state.generation, _valid_until(svid, at)
        )
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return svid


def _valid_until(svid: VerifiedX509Svid, at: datetime) -> float:
    """The earliest notAfter on the verified path."""
    return min(c.not_valid_after_utc.timestamp() for c in svid.chain)
