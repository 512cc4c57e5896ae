"""Bundle files under a running swim-as: reload, bad input, maximum age (D3).

SPIFFE Trust Domain and Bundle §4 (bundle format, sequence, unknown
entries skipped), §5 (bundle maps); issue 5's "Bad input" list. Each bad
file: the previous bundle stays in force, a log line and an audit record
say why, and readiness turns red only once the maximum age is passed.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support import harness
from tests.support.bundle_server import (
    bundle_bytes,
    bundle_document,
    write_bytes_atomically,
)
from tests.support.harness import Running, running_server
from tests.support.pki import Authority, Svid
from tests.support.postgres import create_database
from tests.support.trust import admin, audit_rows, readyz, token_status

WORKER = "spiffe://example.org/ns/prod/sa/bundle-worker"
MAX_AGE = 600


@pytest.fixture(scope="module")
async def server(
    postgres_server: str, pki: harness.TestPki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    url = await create_database(postgres_server)
    folder: Path = tmp_path_factory.mktemp("files")
    bundle = folder / "example.bundle"
    bundle.write_bytes(pki.example.bundle_path.read_bytes())
    domains = [
        {"name": "example.org", "bundle_file": bundle, "max_bundle_age_seconds": 600},
        {"name": "other.org", "bundle_file": pki.other.bundle_path},
    ]
    async with running_server(pki, url, folder, trust_domains=domains) as running:
        await admin(running).add(WORKER, method="tls_client_auth")
        yield running


@pytest.fixture(scope="module")
def bundle_file(server: Running) -> Path:
    path = server.settings.trust_domains[0].bundle_file
    assert path is not None
    return path


@pytest.fixture(scope="module")
def worker(server: Running) -> Svid:
    return server.pki.example.issue("bundle-worker", [WORKER])


@pytest.fixture(autouse=True)
def good_bundle(server: Running, bundle_file: Path) -> Any:
    """Every test starts with the test PKI's example.org bundle in force."""
    write_bytes_atomically(bundle_file, server.pki.example.bundle_path.read_bytes())
    server.clock.offset = 0
    server.services.trust_sources.tick()
    yield
    server.clock.offset = 0


async def test_replacing_the_file_swaps_the_trusted_ca(
    server: Running, bundle_file: Path, worker: Svid, tmp_path: Path
) -> None:
    assert await token_status(server, worker, WORKER) == "200"
    fresh = Authority(tmp_path / "next", "example-next", "example.org")
    from_fresh = fresh.issue("from-next", [WORKER])
    assert await token_status(server, from_fresh, WORKER) == "handshake"

    write_bytes_atomically(bundle_file, fresh.bundle_path.read_bytes())
    server.services.trust_sources.tick()

    assert await token_status(server, from_fresh, WORKER) == "200"
    # The removed CA is gone from the handshake and from verification.
    assert await token_status(server, worker, WORKER) == "handshake"
    updated = (await audit_rows(server.services, "bundle.updated"))[-1].detail
    assert updated["trust_domain"] == "example.org"
    assert updated["source"] == "file"
    assert updated["new_authorities"] != updated["old_authorities"]
    assert len(updated["new_authorities"]) == 1


def _pem(authority: Authority) -> bytes:
    return authority.root.public_bytes(serialization.Encoding.PEM)


def _entry(cert: Any) -> dict[str, Any]:
    return bundle_document([cert])["keys"][0]  # type: ignore[no-any-return]


def _x5c(*certs: Any) -> list[str]:
    return [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
        for c in certs
    ]


BAD_FILES: dict[str, tuple[Callable[[harness.TestPki, Svid], bytes], str]] = {
    "truncated-pem": (lambda pki, leaf: _pem(pki.example)[:-40], "pem"),
    "not-pem": (lambda pki, leaf: b"hello, this is not a bundle\n", "format"),
    "non-ca-certificate": (
        lambda pki, leaf: leaf.cert.public_bytes(serialization.Encoding.PEM),
        "not_ca",
    ),
    "json-does-not-parse": (lambda pki, leaf: b'{"keys": [', "json"),
    "map-names-trust-domain-twice": (
        lambda pki, leaf: (
            b'{"trust_domains": {"example.org": {"keys": []}, '
            b'"example.org": {"keys": []}}}'
        ),
        "duplicate",
    ),
    "x509-entry-two-certificates": (
        lambda pki, leaf: json.dumps(
            {
                "keys": [
                    {
                        **_entry(pki.example.root),
                        "x5c": _x5c(pki.example.root, pki.other.root),
                    }
                ]
            }
        ).encode(),
        "x5c",
    ),
    "x509-entry-non-ca": (
        lambda pki, leaf: json.dumps({"keys": [_entry(leaf.cert)]}).encode(),
        "not_ca",
    ),
    "file-removed": (lambda pki, leaf: b"", "unreadable"),
}


@pytest.mark.parametrize("variant", list(BAD_FILES), ids=list(BAD_FILES))
async def test_bad_file_keeps_the_last_good_bundle(
    server: Running,
    bundle_file: Path,
    worker: Svid,
    variant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make, reason = BAD_FILES[variant]
    if variant == "file-removed":
        remove(bundle_file)
    else:
        write_bytes_atomically(bundle_file, make(server.pki, worker))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="swim_as.trust"):
        server.services.trust_sources.tick()
        server.services.trust_sources.tick()  # the same bad file: read once

    refusals = [
        r for r in caplog.records if getattr(r, "event", "") == "bundle.refused"
    ]
    assert len(refusals) == 1
    assert getattr(refusals[0], "reason") == reason
    audited = (await audit_rows(server.services, "bundle.refused"))[-1].detail
    assert (audited["trust_domain"], audited["reason"]) == ("example.org", reason)

    # The previous good bundle stays in force, and the replica stays ready.
    assert await token_status(server, worker, WORKER) == "200"
    ready = await readyz(server)
    assert ready.status_code == 200, ready.text
    assert ready.json()["trust_domains"]["example.org"]["error"] == audited["error"]

    # Past the maximum age the trust domain is refused, and readiness says so.
    server.clock.advance(MAX_AGE + 1)
    assert await token_status(server, worker, WORKER) == "invalid_client"
    ready = await readyz(server)
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False
    assert body["trust_domains"]["example.org"]["ok"] is False
    assert body["trust_domains"]["example.org"]["expired"] is True
    assert body["trust_domains"]["other.org"]["ok"] is True
    assert any(
        p.startswith("trust domain example.org: bundle not refreshed")
        for p in body["problems"]
    ), body["problems"]
    assert (await audit_rows(server.services, "bundle.expired"))[-1].detail[
        "trust_domain"
    ] == "example.org"


async def test_good_file_keeps_the_bundle_fresh(server: Running, worker: Svid) -> None:
    server.clock.advance(MAX_AGE - 10)
    server.services.trust_sources.tick()  # unchanged and readable: confirmed
    server.clock.advance(MAX_AGE - 10)
    assert await token_status(server, worker, WORKER) == "200"
    assert (await readyz(server)).status_code == 200


async def test_unknown_use_and_kty_are_skipped(
    server: Running, bundle_file: Path, worker: Svid, caplog: pytest.LogCaptureFixture
) -> None:
    good = _entry(server.pki.example.root)
    document = {
        "spiffe_sequence": 3,
        "keys": [
            good,
            {**good, "use": "x509-svid-v2"},
            {"kty": "PQC", "use": "x509-svid", "x5c": good["x5c"]},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},  # no use
        ],
    }
    write_bytes_atomically(bundle_file, json.dumps(document).encode())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="swim_as.trust"):
        server.services.trust_sources.tick()

    skipped = [
        r for r in caplog.records if getattr(r, "event", "") == "bundle.entry_skipped"
    ]
    assert [getattr(r, "reason") for r in skipped] == [
        "keys[1]: use 'x509-svid-v2' is not supported",
        "keys[2]: key type 'PQC' is not supported",
        "keys[3]: no 'use'",
    ]
    updated = (await audit_rows(server.services, "bundle.updated"))[-1].detail
    assert updated["new_sequence"] == 3, updated
    assert len(updated["skipped"]) == 3
    assert await token_status(server, worker, WORKER) == "200"


async def test_lower_sequence_is_refused(
    server: Running, bundle_file: Path, worker: Svid, tmp_path: Path
) -> None:
    write_bytes_atomically(bundle_file, bundle_bytes(server.pki.example, sequence=10))
    server.services.trust_sources.tick()
    stale = Authority(tmp_path / "stale", "stale", "example.org")
    write_bytes_atomically(bundle_file, bundle_bytes(stale, sequence=9))
    server.services.trust_sources.tick()

    refused = (await audit_rows(server.services, "bundle.refused"))[-1].detail
    assert refused["reason"] == "sequence"
    assert refused["sequence_in_force"] == 10
    assert await token_status(server, worker, WORKER) == "200"
    state = server.services.trust.state(worker_td())
    assert state is not None and state.x509 is not None
    assert state.x509.sequence == 10


async def test_empty_bundle_refuses_everything(
    server: Running, bundle_file: Path, worker: Svid
) -> None:
    write_bytes_atomically(bundle_file, json.dumps({"keys": []}).encode())
    server.services.trust_sources.tick()
    assert await token_status(server, worker, WORKER) == "handshake"
    state = server.services.trust.state(worker_td())
    assert state is not None and state.x509 is not None
    assert state.x509.authorities == ()


def worker_td() -> Any:
    from swim_as.spiffe.ids import TrustDomain

    return TrustDomain("example.org")


def remove(path: Path) -> None:
    path.unlink()
