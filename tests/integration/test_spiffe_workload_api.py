"""Bundles and swim-as's own SVID from the SPIFFE Workload API (D3).

A fake agent (tests/support/workload_api.py) serves the Workload API's
``FetchX509SVID`` and ``FetchJWTBundles`` streams over gRPC on a unix
socket, with py-spiffe's own protobuf messages; swim-as talks to it through
py-spiffe's client, as it would to SPIRE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from swim_as.app import build_services, create_app
from swim_as.clock import FixedClock
from swim_as.process import MIN_VERSION
from swim_as.server import serving
from swim_as.settings import Settings
from swim_as.spiffe.ids import TrustDomain
from swim_as.storage.migrate import upgrade
from swim_as.tls import TlsContextManager
from swim_as.trust.sources import TrustSources, build_trust_sources
from swim_as.trust.store import TrustStore
from tests.support import harness
from tests.support.harness import free_port, make_settings
from tests.support.pki import Authority, Svid
from tests.support.trust import RecordingAudit as Audit
from tests.support.workload_api import FakeWorkloadApi, svid_message

EXAMPLE, OTHER = TrustDomain("example.org"), TrustDomain("other.org")
SELF_ID = "spiffe://example.org/ns/auth/sa/swim-as"


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def agent() -> Any:
    fake = FakeWorkloadApi().start()
    yield fake
    fake.close()


def ec_jwk(kid: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    entry = dict(jwt.get_algorithm_by_name("ES256").to_jwk(key, as_dict=True))
    entry.update(kid=kid, use="jwt-svid")
    return entry


def publish(
    agent: FakeWorkloadApi, pki: harness.TestPki, me: Svid, **extra: Any
) -> None:
    federated = {"other.org": [pki.other.root], **extra.get("federated", {})}
    agent.set_x509([svid_message(SELF_ID, me, [pki.example.root])], federated)


class Rig:
    def __init__(
        self, sources: TrustSources, store: TrustStore, audit: Audit, clock: FixedClock
    ) -> None:
        self.sources, self.store, self.audit, self.clock = sources, store, audit, clock


@pytest.fixture
async def rig(
    agent: FakeWorkloadApi, pki: harness.TestPki, tmp_path: Path
) -> AsyncIterator[Rig]:
    settings = Settings(
        issuer="https://as.example",
        tokens={"default_audience": "https://api.example"},
        workload_api={"socket": agent.socket, "timeout_seconds": 5},
        trust_domains=[
            {"name": "example.org", "workload_api": True, "max_bundle_age_seconds": 60},
            {"name": "other.org", "workload_api": True, "max_bundle_age_seconds": 60},
        ],
    )
    clock = FixedClock(time.time())
    store, audit = TrustStore(clock), Audit()
    sources = build_trust_sources(settings, store, audit, clock)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(work) for _, work in sources.tasks(stop)]
    try:
        yield Rig(sources, store, audit, clock)
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=5)


def authorities(store: TrustStore, td: TrustDomain) -> tuple[Any, ...]:
    bundle = store.x509_bundle(td)
    return () if bundle is None else bundle.authorities


async def test_bundles_and_federated_bundles_each_in_their_trust_domain(
    rig: Rig, agent: FakeWorkloadApi, pki: harness.TestPki, tmp_path: Path
) -> None:
    stranger = Authority(tmp_path / "stranger", "stranger", "unknown.org")
    me = pki.example.issue("swim-as-self", [SELF_ID])
    publish(agent, pki, me, federated={"unknown.org": [stranger.root]})
    agent.set_jwt({"example.org": [ec_jwk("k1")], "unknown.org": [ec_jwk("u1")]})

    await rig.sources.first_refresh()

    assert authorities(rig.store, EXAMPLE) == (pki.example.root,)
    assert authorities(rig.store, OTHER) == (pki.other.root,)
    assert rig.store.state(TrustDomain("unknown.org")) is None
    example_jwt = rig.store.jwt_bundle(EXAMPLE)
    assert example_jwt is not None and set(example_jwt.keys) == {"k1"}
    other_jwt = rig.store.jwt_bundle(OTHER)
    assert other_jwt is None or not other_jwt.keys
    assert agent.refused_without_header == 0
    updated = [d for e, d in rig.audit.records if e == "bundle.updated"]
    assert {d["trust_domain"] for d in updated} == {"example.org", "other.org"}
    assert all(d["source"] == "workload_api" for d in updated)


async def test_pushed_bundle_replaces_the_previous_one(
    rig: Rig, agent: FakeWorkloadApi, pki: harness.TestPki, tmp_path: Path
) -> None:
    me = pki.example.issue("swim-as-self", [SELF_ID])
    publish(agent, pki, me)
    agent.set_jwt({"example.org": [ec_jwk("k1")]})
    await rig.sources.first_refresh()
    generation = rig.store.state(OTHER).generation  # type: ignore[union-attr]

    successor = Authority(tmp_path / "succ", "succ", "other.org")
    publish(agent, pki, me, federated={"other.org": [successor.root]})
    await eventually(lambda: authorities(rig.store, OTHER) == (successor.root,))
    assert rig.store.state(OTHER).generation == generation + 1  # type: ignore[union-attr]
    agent.set_jwt({"example.org": [ec_jwk("k2")]})
    await eventually(
        lambda: set(rig.store.jwt_bundle(EXAMPLE).keys) == {"k2"}  # type: ignore[union-attr]
    )


async def test_bad_or_missing_bundle_keeps_the_last_good_one(
    rig: Rig,
    agent: FakeWorkloadApi,
    pki: harness.TestPki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    me = pki.example.issue("swim-as-self", [SELF_ID])
    publish(agent, pki, me)
    agent.set_jwt({})
    await rig.sources.first_refresh()

    leaf = pki.other.issue("not-a-ca", ["spiffe://other.org/w"])
    caplog.clear()
    publish(agent, pki, me, federated={"other.org": [leaf.cert]})
    await eventually(lambda: any(e == "bundle.refused" for e, _ in rig.audit.records))
    refused = [d for e, d in rig.audit.records if e == "bundle.refused"][-1]
    assert (refused["trust_domain"], refused["reason"]) == ("other.org", "not_ca")
    assert authorities(rig.store, OTHER) == (pki.other.root,)
    assert authorities(rig.store, EXAMPLE) == (pki.example.root,)

    agent.set_x509([svid_message(SELF_ID, me, [pki.example.root])], {})
    await eventually(
        lambda: (
            [d for e, d in rig.audit.records if e == "bundle.refused"][-1]["reason"]
            == "missing"
        )
    )
    assert authorities(rig.store, OTHER) == (pki.other.root,)
    assert any(getattr(r, "event", "") == "bundle.refused" for r in caplog.records)

    # Still missing: no confirmation, so the maximum age runs out.
    rig.clock.advance(61)
    rig.sources.tick()
    assert authorities(rig.store, OTHER) == ()
    assert authorities(rig.store, EXAMPLE) == (pki.example.root,)


async def test_agent_restart_is_reported_and_recovered(
    rig: Rig,
    agent: FakeWorkloadApi,
    pki: harness.TestPki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    me = pki.example.issue("swim-as-self", [SELF_ID])
    publish(agent, pki, me)
    agent.set_jwt({})
    await rig.sources.first_refresh()
    opened = dict(agent.opened)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="swim_as.trust"):
        agent.fail_streams()
        await eventually(lambda: agent.opened["x509"] > opened["x509"])
        await eventually(lambda: rig.sources.watchers[agent.socket].healthy)
    refused = [d for e, d in rig.audit.records if e == "bundle.refused"]
    assert refused and refused[-1]["reason"] == "workload_api"
    assert "UNAVAILABLE" in refused[-1]["error"]
    assert any(
        getattr(r, "event", "") == "workload_api.stream_failed" for r in caplog.records
    )
    # Healthy again: the bundles are confirmed and do not age out.
    rig.clock.advance(50)
    rig.sources.tick()
    rig.clock.advance(50)
    assert authorities(rig.store, OTHER) == (pki.other.root,)


async def test_agent_gone_ages_the_bundles_out(
    rig: Rig, agent: FakeWorkloadApi, pki: harness.TestPki
) -> None:
    me = pki.example.issue("swim-as-self", [SELF_ID])
    publish(agent, pki, me)
    agent.set_jwt({})
    await rig.sources.first_refresh()
    agent.stop()
    await eventually(lambda: not rig.sources.watchers[agent.socket].healthy)
    rig.clock.advance(30)
    rig.sources.tick()  # not confirmed: the streams are down
    assert authorities(rig.store, OTHER) == (pki.other.root,)
    rig.clock.advance(31)
    assert rig.sources.updates.check_ages() == [EXAMPLE, OTHER]
    assert [e for e, _ in rig.audit.records][-1] == "bundle.expired"


# -- swim-as's own certificate from the Workload API ----------------------------


async def server_certificate(port: int, context: ssl.SSLContext) -> tuple[bytes, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return der, (reader, writer)


async def test_serving_certificate_from_the_workload_api(
    agent: FakeWorkloadApi,
    pki: harness.TestPki,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    first = pki.example.issue("self-1", [SELF_ID])
    publish(agent, pki, first)
    agent.set_jwt({})
    port = free_port()
    base = make_settings(pki, sqlite_url, tmp_path, port=port)
    data = base.model_dump()
    data["tls"] = {"source": "workload_api"}
    data["workload_api"] = {"socket": agent.socket, "timeout_seconds": 5}
    settings = Settings(**data)
    await asyncio.to_thread(upgrade, settings.database.url)
    services = build_services(settings)
    assert services.serving_cert is not None
    cert_file, key_file = await asyncio.to_thread(services.serving_cert.initial_files)
    assert oct(cert_file.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    tls = TlsContextManager(cert_file, key_file, (), min_version=MIN_VERSION["1.2"])
    app = create_app(settings, tls=tls, services=services)

    client = ssl.create_default_context(cafile=str(pki.example.bundle_path))
    client.check_hostname = False  # an SVID names a workload, not a host
    async with serving(app, tls, port=port):
        der, kept = await server_certificate(port, client)
        assert der == first.cert.public_bytes(serialization.Encoding.DER)

        second = pki.example.issue("self-2", [SELF_ID])
        publish(agent, pki, second)
        expected = second.cert.public_bytes(serialization.Encoding.DER)
        deadline = time.monotonic() + 10
        while True:
            der, fresh = await server_certificate(port, client)
            fresh[1].close()
            if der == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert der == expected

        # The connection opened before the rotation still works.
        reader, writer = kept
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()

        async with httpx.AsyncClient(verify=client) as http:
            ready = await http.get(f"https://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200, ready.text
        assert not first_files_left(cert_file)
    assert not cert_file.parent.exists()  # the private folder is removed


def first_files_left(cert_file: Path) -> bool:
    return cert_file.exists()


def test_jwt_keys_of_every_supported_type_and_unsupported_ones_skipped() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle as PyJwtBundle
    from spiffe.bundle.jwt_bundle.jwt_bundle_set import JwtBundleSet
    from spiffe.spiffe_id.spiffe_id import TrustDomain as PyTrustDomain

    from swim_as.trust.workload import jwt_bundles

    keys = {
        "ec": ec.generate_private_key(ec.SECP384R1()).public_key(),
        "rsa": rsa.generate_private_key(65537, 2048).public_key(),
        "ed25519": ed25519.Ed25519PrivateKey.generate().public_key(),
        "ed448": ed448.Ed448PrivateKey.generate().public_key(),
    }
    bundle_set = JwtBundleSet.of(
        [
            PyJwtBundle(PyTrustDomain("example.org"), keys),  # type: ignore[arg-type]
            PyJwtBundle(PyTrustDomain("elsewhere.org"), {"x": keys["ec"]}),
        ]
    )
    found = jwt_bundles(bundle_set, frozenset({EXAMPLE}))
    assert set(found) == {EXAMPLE}
    bundle = found[EXAMPLE]
    assert not isinstance(bundle, Exception)
    assert set(bundle.keys) == {"ec", "rsa", "ed25519"}
    assert bundle.keys["ec"].algorithms == {"ES384"}
    assert bundle.skipped == (
        "keys[2] (kid 'ed448'): OKP curve 'Ed448' is not supported",
    )
