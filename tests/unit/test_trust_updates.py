"""The trust store and the bundle gate: ordering, freshness, expiry, caching.

SPIFFE Trust Domain and Bundle §4.1.1 (sequence), §4.1.3 (an empty bundle
refuses everything), §5 (bundle maps); D3 (maximum age). No I/O: a fixed
clock, certificates made here, audit records collected in a list.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from swim_as.clock import FixedClock
from swim_as.spiffe.bundle import X509Bundle, parse_bundle, parse_jwt_bundle
from swim_as.spiffe.errors import BundleError, X509SvidError
from swim_as.spiffe.ids import TrustDomain
from swim_as.trust.store import TrustStore
from swim_as.trust.updates import BundleUpdates
from tests.support.bundle_server import bundle_bytes, bundle_document
from tests.support.pki import Authority
from tests.support.trust import RecordingAudit as Audit

TD = TrustDomain("example.org")


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Authority]:
    folder = tmp_path_factory.mktemp("cas")
    return (
        Authority(folder / "one", "one", "example.org"),
        Authority(folder / "two", "two", "example.org"),
    )


@pytest.fixture
def gate() -> tuple[TrustStore, BundleUpdates, Audit, FixedClock]:
    clock = FixedClock(time.time())
    store = TrustStore(clock)
    store.add_domain(TD, source="bundle_endpoint", origin="test", max_age=600)
    audit = Audit()
    return store, BundleUpdates(store, audit, clock, actor="test"), audit, clock


def x509(data: bytes) -> X509Bundle:
    return parse_bundle(data, TD)[0]


def test_sequence_orders_bundles(gate: Any, cas: Any) -> None:
    store, updates, audit, _ = gate
    one, two = cas
    assert updates.apply(TD, x509=x509(bundle_bytes(one, sequence=5)), origin="t")
    refused = updates.apply(TD, x509=x509(bundle_bytes(two, sequence=4)), origin="t")

    assert not refused
    assert store.x509_bundle(TD) is not None
    assert store.x509_bundle(TD).authorities == (one.root,)  # type: ignore[union-attr]
    assert audit.events() == ["bundle.updated", "bundle.refused"]
    detail = audit.records[1][1]
    assert detail["reason"] == "sequence"
    assert "spiffe_sequence 4 is lower than 5" in detail["error"]
    assert store.state(TD).failures == 1  # type: ignore[union-attr]

    assert updates.apply(TD, x509=x509(bundle_bytes(two, sequence=6)), origin="t")
    assert store.x509_bundle(TD).authorities == (two.root,)  # type: ignore[union-attr]
    updated = audit.records[2][1]
    assert (updated["old_sequence"], updated["new_sequence"]) == (5, 6)
    assert updated["old_authorities"] != updated["new_authorities"]
    assert len(updated["new_authorities"][0]) == 64  # SHA-256, hex


def test_same_bundle_only_confirms_freshness(gate: Any, cas: Any) -> None:
    store, updates, audit, clock = gate
    data = bundle_bytes(cas[0], sequence=1)
    updates.apply(TD, x509=x509(data), origin="t")
    generation = store.state(TD).generation
    clock.advance(500)
    assert not updates.apply(TD, x509=x509(data), origin="t")
    clock.advance(500)  # 1000 s after the first load, 500 after the second
    assert store.state(TD).generation == generation
    assert store.x509_bundle(TD) is not None
    assert audit.events() == ["bundle.updated"]


def test_repeated_failure_is_audited_once(gate: Any, cas: Any) -> None:
    store, updates, audit, _ = gate
    updates.apply(TD, x509=x509(bundle_bytes(cas[0])), origin="t")
    for _ in range(3):
        updates.refuse(TD, "http_status", "HTTP 500 from x", origin="t")
    updates.refuse(TD, "timeout", "no answer", origin="t")
    assert audit.events() == ["bundle.updated", "bundle.refused", "bundle.refused"]
    assert store.state(TD).failures == 4
    assert store.state(TD).error == "no answer"
    updates.apply(TD, x509=x509(bundle_bytes(cas[0])), origin="t")  # recovers
    updates.refuse(TD, "timeout", "no answer", origin="t")
    assert audit.events()[-1] == "bundle.refused"
    assert len(audit.records) == 4


def test_maximum_age_refuses_then_a_bundle_restores(
    gate: Any, cas: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store, updates, audit, clock = gate
    updates.apply(TD, x509=x509(bundle_bytes(cas[0])), origin="t")
    updates.refuse(TD, "http_status", "HTTP 500", origin="t")
    clock.advance(600)
    assert store.x509_bundle(TD) is not None  # exactly at the maximum age
    clock.advance(1)
    # Refused at once by the clock, before the background check runs.
    assert store.x509_bundle(TD) is None
    assert store.jwt_bundle(TD) is None
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="swim_as.trust"):
        assert updates.check_ages() == [TD]
    assert updates.check_ages() == []
    assert store.state(TD).expired
    assert "maximum age (600 s" in store.state(TD).error
    assert "last error: HTTP 500" in store.state(TD).error
    assert [r.event for r in caplog.records] == ["bundle.expired"]  # type: ignore[attr-defined]
    assert audit.events()[-1] == "bundle.expired"

    # The same bundle again (the endpoint is back) restores trust.
    assert updates.apply(TD, x509=x509(bundle_bytes(cas[0])), origin="t")
    assert store.x509_bundle(TD) is not None
    assert audit.records[-1][1]["restored"] is True


def test_empty_bundle_refuses_everything(gate: Any, cas: Any) -> None:
    store, updates, _, clock = gate
    one = cas[0]
    leaf = one.issue("w", ["spiffe://example.org/w"])
    updates.apply(TD, x509=x509(bundle_bytes(one)), origin="t")
    store.verify_x509_svid(leaf.cert, (), (b"w",))
    updates.apply(TD, x509=x509(json.dumps({"keys": []}).encode()), origin="t")
    with pytest.raises(X509SvidError) as refused:
        store.verify_x509_svid(leaf.cert, (), (b"w",))
    assert refused.value.reason == "no_bundle"


def test_cached_verification_dropped_when_bundle_changes(gate: Any, cas: Any) -> None:
    store, updates, _, _ = gate
    one, two = cas
    leaf = one.issue("cached", ["spiffe://example.org/cached"])
    updates.apply(TD, x509=x509(bundle_bytes(one, sequence=1)), origin="t")
    first = store.verify_x509_svid(leaf.cert, (), (b"cached",))
    assert store.verify_x509_svid(leaf.cert, (), (b"cached",)) is first  # cached

    updates.apply(TD, x509=x509(bundle_bytes(two, sequence=2)), origin="t")
    with pytest.raises(X509SvidError):
        store.verify_x509_svid(leaf.cert, (), (b"cached",))

    updates.apply(TD, x509=x509(bundle_bytes(one, two, sequence=3)), origin="t")
    again = store.verify_x509_svid(leaf.cert, (), (b"cached",))
    assert again is not first  # verified anew under the new generation


def test_cached_verification_refused_past_maximum_age(gate: Any, cas: Any) -> None:
    store, updates, _, clock = gate
    leaf = cas[0].issue("aged", ["spiffe://example.org/aged"])
    updates.apply(TD, x509=x509(bundle_bytes(cas[0])), origin="t")
    store.verify_x509_svid(leaf.cert, (), (b"aged",))
    clock.advance(601)
    with pytest.raises(X509SvidError):
        store.verify_x509_svid(leaf.cert, (), (b"aged",))


def test_handshake_keeps_authorities_of_an_expired_trust_domain(
    gate: Any, cas: Any
) -> None:
    store, updates, _, clock = gate
    updates.apply(TD, x509=x509(bundle_bytes(cas[0])), origin="t")
    clock.advance(601)
    updates.check_ages()
    # So that its workloads get invalid_client with a reason, not a TLS alert.
    assert store.x509_authorities() == [cas[0].root]
    assert store.last_known_x509_bundle(TD) is not None


# -- SPIFFE bundle maps (§5) -----------------------------------------------------


def _map(**bundles: Any) -> dict[str, Any]:
    return {"trust_domains": bundles}


def test_bundle_map_entry_of_its_trust_domain_only(cas: Any) -> None:
    one, two = cas
    document = _map(
        **{
            "example.org": bundle_document([one.root], sequence=3, refresh_hint=60),
            "other.org": bundle_document([two.root]),
        }
    )
    bundle, jwt_bundle = parse_bundle(json.dumps(document).encode(), TD)
    assert bundle.authorities == (one.root,)
    assert bundle.sequence == 3
    assert bundle.refresh_hint is None  # §5.1.1: hints in a map are not used
    assert parse_jwt_bundle(json.dumps(document).encode(), TD).keys == {}


@pytest.mark.parametrize(
    "text,reason,fragment",
    [
        (
            '{"trust_domains": {"example.org": {"keys": []}, '
            '"example.org": {"keys": []}}}',
            "duplicate",
            "'example.org' appears twice",
        ),
        ('{"trust_domains": {"other.org": {"keys": []}}}', "not_in_map", "no bundle"),
        ('{"trust_domains": []}', "json", "must be an object"),
        ('{"trust_domains": {}, "keys": []}', "json", "neither a bundle"),
    ],
    ids=["trust-domain-twice", "not-in-map", "not-an-object", "both"],
)
def test_bad_bundle_map(text: str, reason: str, fragment: str) -> None:
    with pytest.raises(BundleError) as refused:
        parse_bundle(text.encode(), TD)
    assert refused.value.reason == reason
    assert fragment in str(refused.value)


def test_pem_round_trip(tmp_path: Path, cas: Any) -> None:
    pem = cas[0].root.public_bytes(serialization.Encoding.PEM)
    assert x509(pem).authorities == (cas[0].root,)
