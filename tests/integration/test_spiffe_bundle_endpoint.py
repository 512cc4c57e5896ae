"""SPIFFE bundle endpoints, https_web and https_spiffe (SPIFFE Federation §4-§5).

A real HTTPS server on 127.0.0.1 plays the endpoint: a Web PKI certificate
for ``https_web``, an X.509-SVID for ``https_spiffe``. Every bad answer in
issue 5's list leaves the previous bundle in force, is logged and audited,
and makes the trust domain unready only once its maximum age has passed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from swim_as.clock import FixedClock
from swim_as.spiffe.ids import SpiffeId, TrustDomain
from swim_as.trust.endpoint import BundleEndpointSource, EndpointConfig
from swim_as.trust.store import TrustStore
from swim_as.trust.updates import BundleUpdates
from tests.support import harness
from tests.support.bundle_server import BundleServer, bundle_bytes, bundle_server
from tests.support.harness import Running, running_server
from tests.support.pki import Authority, Svid
from tests.support.postgres import create_database
from tests.support.trust import RecordingAudit as Audit
from tests.support.trust import admin, audit_rows, readyz, token_status

OTHER = TrustDomain("other.org")
ENDPOINT_ID = "spiffe://other.org/spire/server"
MAX_AGE = 600


class Rig:
    """A trust store with one endpoint source, a fixed clock, an audit list."""

    def __init__(self, config: EndpointConfig, bootstrap: Path | None = None) -> None:
        self.clock = FixedClock(time.time())
        self.store = TrustStore(self.clock)
        self.store.add_domain(OTHER, source="bundle_endpoint", max_age=MAX_AGE)
        self.audit = Audit()
        self.updates = BundleUpdates(self.store, self.audit, self.clock, actor="t")
        self.source = BundleEndpointSource(
            OTHER, config, self.updates, self.clock, bootstrap_file=bootstrap
        )

    @property
    def authorities(self) -> tuple[Any, ...]:
        bundle = self.store.x509_bundle(OTHER)
        return () if bundle is None else bundle.authorities

    def events(self) -> list[str]:
        return [e for e, _ in self.audit.records]


@pytest.fixture
async def web(pki: harness.TestPki) -> AsyncIterator[BundleServer]:
    async with bundle_server(pki.server) as server:
        server.serve(bundle_bytes(pki.other, sequence=5, refresh_hint=60))
        yield server


def web_config(server: BundleServer, pki: harness.TestPki, **kw: Any) -> EndpointConfig:
    options: dict[str, Any] = {"ca_file": pki.web.bundle_path, "timeout": 2.0}
    options.update(kw)
    return EndpointConfig(server.url, "https_web", **options)


async def test_https_web_fetch(web: BundleServer, pki: harness.TestPki) -> None:
    rig = Rig(web_config(web, pki))
    assert await rig.source.refresh()
    assert rig.authorities == (pki.other.root,)
    state = rig.store.state(OTHER)
    assert state is not None and state.x509 is not None
    assert (state.x509.sequence, state.x509.refresh_hint) == (5, 60)
    assert rig.source.interval() == 60
    assert rig.events() == ["bundle.updated"]

    assert await rig.source.refresh()  # unchanged: only confirmed
    assert rig.events() == ["bundle.updated"]
    assert web.requests == 2


def _huge() -> bytes:
    return b'{"keys": [], "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'


BAD_ANSWERS: dict[str, tuple[dict[str, Any], str, str]] = {
    "times-out": ({"delay": 3.0}, "timeout", "no complete answer within 0.5 s"),
    "http-500": ({"status": 500}, "http_status", "HTTP 500"),
    "huge-body": ({"body": _huge()}, "too_large", "more than 65536"),
    "huge-body-no-length": (
        {"body": _huge(), "declare_length": False},
        "too_large",
        "more than 65536",
    ),
    "redirect-to-http": (
        {"status": 302, "headers": {"Location": "http://127.0.0.1:1/bundle"}},
        "redirect",
        "must be an https URL",
    ),
    "permanent-redirect": (
        {"status": 301, "headers": {"Location": "/moved"}},
        "http_status",
        "HTTP 301",
    ),
    "not-json": ({"body": b"-----BEGIN CERTIFICATE-----"}, "format", "not a SPIFFE"),
    "json-does-not-parse": ({"body": b'{"keys": ['}, "json", "not valid JSON"),
}


@pytest.mark.parametrize("variant", list(BAD_ANSWERS), ids=list(BAD_ANSWERS))
async def test_bad_answer_keeps_the_last_good_bundle(
    web: BundleServer,
    pki: harness.TestPki,
    variant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    timeout = 0.5 if variant == "times-out" else 2.0
    rig = Rig(web_config(web, pki, timeout=timeout, max_bytes=65536))
    assert await rig.source.refresh()

    answer, reason, fragment = BAD_ANSWERS[variant]
    for name, value in answer.items():
        setattr(web, name, value)
    caplog.clear()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="swim_as.trust"):
        assert not await rig.source.refresh()
    assert time.monotonic() - started < 2.5

    assert rig.authorities == (pki.other.root,)
    [logged] = [
        r for r in caplog.records if getattr(r, "event", "") == "bundle.refused"
    ]
    assert getattr(logged, "reason") == reason
    assert fragment in logged.getMessage()
    event, detail = rig.audit.records[-1]
    assert (event, detail["reason"]) == ("bundle.refused", reason)
    assert rig.source.next_delay() == 5.0  # retried sooner than the hint

    # Used until the maximum age, then refused.
    rig.clock.advance(MAX_AGE)
    assert rig.updates.check_ages() == []
    assert rig.authorities == (pki.other.root,)
    rig.clock.advance(1)
    assert rig.authorities == ()
    assert rig.updates.check_ages() == [OTHER]
    assert rig.events()[-1] == "bundle.expired"


async def test_lower_sequence_is_refused(
    web: BundleServer, pki: harness.TestPki, tmp_path: Path
) -> None:
    rig = Rig(web_config(web, pki))
    assert await rig.source.refresh()
    stale = Authority(tmp_path / "stale", "stale", "other.org")
    web.serve(bundle_bytes(stale, sequence=4))
    assert not await rig.source.refresh()
    assert rig.authorities == (pki.other.root,)
    assert rig.audit.records[-1][1]["reason"] == "sequence"
    assert rig.source.failures == 1


async def test_temporary_redirect_to_https_is_followed(
    web: BundleServer, pki: harness.TestPki
) -> None:
    rig = Rig(web_config(web, pki))
    web.script = [(307, b"", {"Location": "/elsewhere"})]
    assert await rig.source.refresh()
    assert web.requests == 2
    assert rig.authorities == (pki.other.root,)


async def test_redirect_loop_is_refused(
    web: BundleServer, pki: harness.TestPki
) -> None:
    rig = Rig(web_config(web, pki))
    web.status, web.headers = 302, {"Location": "/again"}
    assert not await rig.source.refresh()
    assert rig.audit.records[-1][1]["reason"] == "redirect"
    assert web.requests == 4


async def test_web_certificate_from_another_ca_is_refused(
    web: BundleServer, pki: harness.TestPki, tmp_path: Path
) -> None:
    stranger = Authority(tmp_path / "stranger", "stranger", None)
    web.use_certificate(stranger.issue("srv", ips=["127.0.0.1"]))
    rig = Rig(web_config(web, pki))
    assert not await rig.source.refresh()
    assert rig.audit.records[-1][1]["reason"] == "transport"
    assert "CERTIFICATE_VERIFY_FAILED" in rig.audit.records[-1][1]["error"]


def test_refresh_interval_follows_the_hint_within_bounds(
    pki: harness.TestPki,
) -> None:
    rig = Rig(EndpointConfig("https://127.0.0.1:1/", "https_web"))
    bundle = json.dumps({"keys": []})
    for hint, expected in ((None, 150.0), (1, 5.0), (60, 60.0), (10**7, 150.0)):
        doc = json.loads(bundle)
        if hint is not None:
            doc["spiffe_refresh_hint"] = hint
        from swim_as.spiffe.bundle import parse_bundle

        x509_bundle, _ = parse_bundle(json.dumps(doc).encode(), OTHER)
        rig.store.set_bundles(OTHER, x509_bundle=x509_bundle)
        # A quarter of the 600 s maximum age caps every interval.
        assert rig.source.interval() == expected, hint
    rig.source.failures = 1
    assert rig.source.next_delay() == 5.0
    rig.source.failures = 3
    assert rig.source.next_delay() == 20.0
    rig.source.failures = 10
    assert rig.source.next_delay() == 150.0


# -- https_spiffe ---------------------------------------------------------------


@pytest.fixture
def other_ca(tmp_path: Path) -> Authority:
    """A fresh CA for other.org, so tests can rotate it freely."""
    return Authority(tmp_path / "other-ca", "other-rot", "other.org")


@pytest.fixture
async def spiffe_endpoint(other_ca: Authority) -> AsyncIterator[BundleServer]:
    svid = other_ca.issue("bundle-endpoint", [ENDPOINT_ID])
    async with bundle_server(svid) as server:
        server.serve(bundle_bytes(other_ca, sequence=1))
        yield server


def spiffe_config(server: BundleServer) -> EndpointConfig:
    return EndpointConfig(
        server.url, "https_spiffe", spiffe_id=SpiffeId.parse(ENDPOINT_ID), timeout=2
    )


async def test_https_spiffe_bootstraps_then_follows_the_fetched_bundle(
    spiffe_endpoint: BundleServer, other_ca: Authority, tmp_path: Path
) -> None:
    rig = Rig(spiffe_config(spiffe_endpoint), bootstrap=other_ca.bundle_path)
    rig.source.load_initial()
    assert rig.authorities == (other_ca.root,)

    # The trust domain rotates its CA: the bundle holds both, then the
    # endpoint serves with an SVID from the new CA only.
    successor = Authority(tmp_path / "successor", "successor", "other.org")
    spiffe_endpoint.serve(bundle_bytes(other_ca, successor, sequence=2))
    assert await rig.source.refresh()
    spiffe_endpoint.use_certificate(successor.issue("endpoint-2", [ENDPOINT_ID]))
    spiffe_endpoint.serve(bundle_bytes(successor, sequence=3))
    assert await rig.source.refresh()  # verified with the fetched bundle
    assert rig.authorities == (successor.root,)

    # The old CA is gone: an endpoint SVID from it no longer authenticates.
    spiffe_endpoint.use_certificate(other_ca.issue("endpoint-old", [ENDPOINT_ID]))
    assert not await rig.source.refresh()
    assert rig.audit.records[-1][1]["reason"] == "transport"
    assert rig.authorities == (successor.root,)


@pytest.mark.parametrize(
    "presented,reason,fragment",
    [
        (
            "spiffe://other.org/not-the-server",
            "spiffe_id",
            "presented spiffe://other.org/not-the-server, expected " + ENDPOINT_ID,
        ),
        ("web", "transport", "CERTIFICATE_VERIFY_FAILED"),
        ("other-trust-domain", "transport", "CERTIFICATE_VERIFY_FAILED"),
    ],
    ids=["wrong-spiffe-id", "web-certificate", "svid-of-another-trust-domain"],
)
async def test_https_spiffe_wrong_identity_is_refused(
    spiffe_endpoint: BundleServer,
    other_ca: Authority,
    pki: harness.TestPki,
    presented: str,
    reason: str,
    fragment: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(spiffe_config(spiffe_endpoint), bootstrap=other_ca.bundle_path)
    rig.source.load_initial()
    assert await rig.source.refresh()
    spiffe_endpoint.serve(bundle_bytes(other_ca, sequence=9))
    svid: Svid
    if presented == "web":
        svid = pki.server
    elif presented == "other-trust-domain":
        svid = pki.example.issue("imposter", ["spiffe://example.org/spire/server"])
    else:
        svid = other_ca.issue("wrong-id", [presented])
    spiffe_endpoint.use_certificate(svid)

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="swim_as.trust"):
        assert not await rig.source.refresh()
    detail = rig.audit.records[-1][1]
    assert (rig.audit.records[-1][0], detail["reason"]) == ("bundle.refused", reason)
    assert fragment in detail["error"]
    assert any(getattr(r, "event", "") == "bundle.refused" for r in caplog.records)
    state = rig.store.state(OTHER)
    assert state is not None and state.x509 is not None
    assert state.x509.sequence == 1  # the answer was never read


# -- end to end: a failing endpoint under a running server --------------------


WORKER = "spiffe://other.org/ns/x/sa/federated"


@pytest.fixture
async def federated(
    postgres_server: str,
    pki: harness.TestPki,
    tmp_path: Path,
    web: BundleServer,
) -> AsyncIterator[Running]:
    url = await create_database(postgres_server)
    domains = [
        {"name": "example.org", "bundle_file": pki.example.bundle_path},
        {
            "name": "other.org",
            "bundle_endpoint_url": web.url,
            "bundle_endpoint_ca_file": pki.web.bundle_path,
            "bundle_endpoint_timeout_seconds": 2,
            "max_bundle_age_seconds": MAX_AGE,
        },
    ]
    async with running_server(pki, url, tmp_path, trust_domains=domains) as running:
        await admin(running).add(WORKER, method="tls_client_auth")
        yield running


async def test_failing_endpoint_is_used_up_to_its_maximum_age(
    federated: Running, web: BundleServer, pki: harness.TestPki
) -> None:
    server = federated
    svid = pki.other.issue("federated", [WORKER])
    [endpoint] = server.services.trust_sources.endpoints
    assert await token_status(server, svid, WORKER) == "200"

    web.status = 500
    assert not await endpoint.refresh()
    assert await token_status(server, svid, WORKER) == "200"
    ready = await readyz(server)
    assert ready.status_code == 200, ready.text
    report = ready.json()["trust_domains"]["other.org"]
    assert report["source"] == "bundle_endpoint"
    assert report["error"].startswith("HTTP 500")
    assert report["failures"] == 1
    refused = (await audit_rows(server.services, "bundle.refused"))[-1].detail
    assert (refused["trust_domain"], refused["reason"]) == ("other.org", "http_status")

    server.clock.advance(MAX_AGE + 1)
    assert await token_status(server, svid, WORKER) == "invalid_client"
    ready = await readyz(server)
    assert ready.status_code == 503
    assert any(
        p.startswith("trust domain other.org:") for p in ready.json()["problems"]
    )
    assert ready.json()["trust_domains"]["example.org"]["ok"] is True

    web.status = 200  # the endpoint is back
    assert await endpoint.refresh()
    assert await token_status(server, svid, WORKER) == "200"
    assert (await readyz(server)).status_code == 200
