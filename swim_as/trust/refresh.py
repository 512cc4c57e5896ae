"""Reloading a trust domain's JWT bundle when a JWT-SVID names an unknown key.

A JWT-SVID signed with a key swim-as has not loaded yet (the trust domain
rotated its keys moments ago) would otherwise fail until the next regular
reload. An unknown ``kid`` therefore asks the trust domain's own,
operator-configured bundle source to reload, at most once per interval per
trust domain, so a stream of tokens with made-up ``kid``s costs one reload
per interval and nothing else. Nothing named in the token (``iss``, a URL,
a header) is ever used to find keys (OAuth SPIFFE client-auth draft §8.1).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

from swim_as.clock import Clock
from swim_as.spiffe.ids import TrustDomain
from swim_as.trust.store import TrustStore

log = logging.getLogger("swim_as.trust")


# Re-reads a trust domain's bundle source; True when a new bundle went in.
Reload = Callable[[], Awaitable[bool]]


class JwtBundleRefresher:
    """Rate-limited reloads of JWT bundle sources, per trust domain."""

    def __init__(
        self,
        store: TrustStore,
        sources: Mapping[TrustDomain, Reload],
        clock: Clock,
        *,
        interval: float,
    ) -> None:
        self._store = store
        self._sources = dict(sources)
        self._clock = clock
        self._interval = interval
        self._last: dict[TrustDomain, float] = {}
        # Reloads triggered per trust domain name, for operators and tests.
        self.reloads: Counter[str] = Counter()

    async def unknown_kid(self, trust_domain: TrustDomain) -> bool:
        """Reload the trust domain's source if allowed; True if keys changed.

        Returns False without touching the source when the trust domain has
        no source here or was reloaded less than an interval ago.
        """
        source = self._sources.get(trust_domain)
        if source is None:
            return False
        now = self._clock.time()
        if now - self._last.get(trust_domain, float("-inf")) < self._interval:
            return False
        self._last[trust_domain] = now
        self.reloads[trust_domain.name] += 1
        log.info(
            "unknown kid: reloading the trust domain's bundle source",
            extra={
                "event": "bundle.reload_on_unknown_kid",
                "trust_domain": trust_domain.name,
            },
        )
        return await source()
