"""Every configured bundle source of one process, built and run together (D3).

Each ``[[trust_domains]]`` entry has exactly one source: files
(:mod:`swim_as.trust.files`), a SPIFFE bundle endpoint
(:mod:`swim_as.trust.endpoint`) or the Workload API
(:mod:`swim_as.trust.workload`). Trust domains sharing a Workload API
socket share one connection, also with swim-as's own certificate when
``tls.source = "workload_api"``.

Start-up: bundle files and bootstrap bundles must load (a bad one stops
swim-as); each bundle endpoint is fetched once and the Workload API is
given ``workload_api.timeout_seconds`` to answer, but neither blocks
start-up when it fails: the trust domain then has its bootstrap bundle or
none, and ``/readyz`` says so until a bundle arrives.

Afterwards one task per endpoint fetches at the bundle's refresh hint, one
task per Workload API socket follows its streams, and one task every
second polls the files, confirms healthy Workload API bundles and expires
trust domains past their maximum age.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from swim_as.clock import Clock
from swim_as.observability.audit import AuditSink
from swim_as.settings import Settings
from swim_as.spiffe.ids import SpiffeId, TrustDomain
from swim_as.trust.endpoint import BundleEndpointSource, EndpointConfig
from swim_as.trust.files import FileBundleSource
from swim_as.trust.store import TrustStore
from swim_as.trust.updates import BundleUpdates
from swim_as.trust.workload import (
    WorkloadApiBundleSource,
    WorkloadApiWatcher,
    WorkloadClient,
    default_client,
)

log = logging.getLogger("swim_as.trust")

# How often bundle files are checked and bundle ages compared with their
# maximum.
POLL_SECONDS = 1.0


@dataclass
class TrustSources:
    """The bundle sources of this process and the gate they report to."""

    updates: BundleUpdates
    files: list[FileBundleSource] = field(default_factory=list)
    endpoints: list[BundleEndpointSource] = field(default_factory=list)
    workload: list[WorkloadApiBundleSource] = field(default_factory=list)
    watchers: dict[str, WorkloadApiWatcher] = field(default_factory=dict)
    first_answer_timeout: float = 10.0

    def load_initial(self) -> None:
        """Load bundle files and bootstrap bundles.

        Raises:
            BundleError: one of them is missing or invalid.
        """
        for file_source in self.files:
            file_source.load_initial()
        for endpoint in self.endpoints:
            endpoint.load_initial()

    def tasks(self, stop: asyncio.Event) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The background work, as (name, coroutine) pairs."""
        work: list[tuple[str, Coroutine[Any, Any, None]]] = [
            (f"swim-as-workload-api:{socket}", watcher.run(stop))
            for socket, watcher in self.watchers.items()
        ]
        work += [
            (f"swim-as-bundle-endpoint:{e.trust_domain.name}", e.run(stop))
            for e in self.endpoints
        ]
        work.append(("swim-as-bundles", self.follow(stop)))
        return work

    def reloaders(self) -> dict[TrustDomain, Callable[[], Awaitable[bool]]]:
        """Per trust domain, a way to re-read its bundle now (for an unknown
        JWT-SVID ``kid``); True when a new bundle went in. The Workload API
        pushes changes itself and needs none."""
        reloaders: dict[TrustDomain, Callable[[], Awaitable[bool]]] = {}
        for file_source in self.files:

            async def poll(source: FileBundleSource = file_source) -> bool:
                return source.poll()

            reloaders[file_source.trust_domain] = poll
        for endpoint in self.endpoints:
            reloaders[endpoint.trust_domain] = endpoint.refresh
        return reloaders

    async def first_refresh(self) -> None:
        """Fetch every endpoint once; give the Workload API time to answer."""
        waits: list[Coroutine[Any, Any, Any]] = [e.refresh() for e in self.endpoints]
        waits += [
            s.watcher.wait_first(self.first_answer_timeout) for s in self.workload
        ]
        if waits:
            await asyncio.gather(*waits)
        self.tick()

    def tick(self) -> None:
        """Poll the files, confirm healthy streams, expire old bundles."""
        for file_source in self.files:
            file_source.poll()
        for workload in self.workload:
            workload.tick()
        self.updates.check_ages()

    async def follow(self, stop: asyncio.Event) -> None:
        """Background task: :meth:`tick` every second."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=POLL_SECONDS)
            if stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # keep following; say what broke
                log.exception(
                    "bundle check failed", extra={"event": "bundle.check_failed"}
                )


def build_trust_sources(
    settings: Settings,
    store: TrustStore,
    audit: AuditSink | None,
    clock: Clock,
    *,
    client_factory: Callable[[str], WorkloadClient] = default_client,
) -> TrustSources:
    """Register every configured trust domain in ``store`` with its source."""
    updates = BundleUpdates(store, audit, clock)
    sources = TrustSources(
        updates, first_answer_timeout=settings.workload_api.timeout_seconds
    )
    workload_domains: dict[str, set[TrustDomain]] = {}

    for domain in settings.trust_domains:
        td = TrustDomain.parse(domain.name)
        source = domain.source
        if source == "bundle_endpoint":
            assert domain.bundle_endpoint_url is not None
            origin = domain.bundle_endpoint_url
        elif source == "workload_api":
            origin = domain.workload_api_socket or settings.workload_api.socket or ""
        else:
            origin = ", ".join(
                str(p) for p in (domain.bundle_file, domain.jwt_bundle_file) if p
            )
        store.add_domain(
            td, source=source, origin=origin, max_age=domain.max_bundle_age_seconds
        )
        if source == "file":
            sources.files.append(
                FileBundleSource(
                    td, domain.bundle_file, domain.jwt_bundle_file, updates
                )
            )
        elif source == "bundle_endpoint":
            config = EndpointConfig(
                url=origin,
                profile=domain.bundle_endpoint_profile,
                spiffe_id=(
                    SpiffeId.parse(domain.bundle_endpoint_spiffe_id)
                    if domain.bundle_endpoint_spiffe_id
                    else None
                ),
                ca_file=domain.bundle_endpoint_ca_file,
                timeout=domain.bundle_endpoint_timeout_seconds,
                max_bytes=domain.bundle_endpoint_max_bytes,
            )
            sources.endpoints.append(
                BundleEndpointSource(
                    td, config, updates, clock, bootstrap_file=domain.bundle_file
                )
            )
        else:
            workload_domains.setdefault(origin, set()).add(td)

    for socket, domains in workload_domains.items():
        watcher = sources.watchers.setdefault(
            socket, WorkloadApiWatcher(socket, client_factory=client_factory)
        )
        sources.workload.append(
            WorkloadApiBundleSource(watcher, frozenset(domains), updates)
        )
    tls_socket = settings.workload_api.socket
    if settings.tls.source == "workload_api" and tls_socket is not None:
        sources.watchers.setdefault(
            tls_socket,
            WorkloadApiWatcher(tls_socket, jwt=False, client_factory=client_factory),
        )
    return sources
