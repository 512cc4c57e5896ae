"""Signing-key rotation (D7): lifecycle, zero failed verifications, replicas.

next → active → retiring → retired with an injected clock; a resource
server that refreshes the JWKS only on an unknown ``kid`` sees no failure
across a scheduled and an immediate rotation under a steady stream of token
requests; two replicas on one PostgreSQL sign with the same key within the
reload bound (``settings.KEY_RELOAD_SECONDS`` + 1 s) after a rotation on
either, with notifications and without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import select

from swim_as.clock import FixedClock
from swim_as.keys.keyring import (
    ACTIVE,
    NEXT,
    RETIRED,
    RETIRING,
    Keyring,
    KeyRotator,
    RotationPolicy,
)
from swim_as.settings import KEY_RELOAD_SECONDS
from swim_as.storage.db import Database
from swim_as.storage.migrate import upgrade
from swim_as.storage.models import SigningKeyRow
from tests.support import harness
from tests.support.harness import Running, running_server, write_kek
from tests.support.postgres import create_database
from tests.support.trust import admin, audit_rows

WORKER = "spiffe://example.org/ns/prod/sa/rotation-worker"
LEAD, RETAIN = 900, 360
POLICY = RotationPolicy(
    algorithm="ES256",
    publish_lead=timedelta(seconds=LEAD),
    retain=timedelta(seconds=RETAIN),
    rotate_every=timedelta(seconds=3600),
)


def _kek() -> bytes:
    import os

    return os.urandom(32)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await asyncio.to_thread(upgrade, db_url)
    database = Database(db_url)
    yield database
    await database.close()


async def states(db: Database) -> dict[str, str]:
    async with db.reading() as session:
        rows = (await session.scalars(select(SigningKeyRow))).all()
    return {row.kid: row.state for row in rows}


def published(keyring: Keyring) -> list[str]:
    import json

    return [k["kid"] for k in json.loads(keyring.jwks())["keys"]]


async def test_key_lifecycle(db: Database) -> None:
    kek, clock = _kek(), FixedClock(time.time())
    rotator, keyring = KeyRotator(db, kek, clock, POLICY), Keyring(db, kek, clock)
    first = await rotator.ensure_initial_key()
    assert first is not None and await rotator.ensure_initial_key() is None
    await keyring.load()
    assert keyring.signer().kid == first

    second = await rotator.rotate(actor="test")
    assert await rotator.rotate(actor="test") == second  # one next key at a time
    await keyring.load()
    assert (await states(db))[second] == NEXT
    assert published(keyring) == [first, second]  # published before it signs
    clock.advance(LEAD - 1)
    assert keyring.signer().kid == first
    clock.advance(1)
    # Every replica that read the rows switches now, by its own clock.
    assert keyring.signer().kid == second

    assert await rotator.tick()
    await keyring.load()
    assert await states(db) == {first: RETIRING, second: ACTIVE}
    clock.advance(RETAIN - 1)
    await rotator.tick()
    await keyring.load()
    assert published(keyring) == [first, second]  # its tokens still verify
    clock.advance(1)
    assert await rotator.tick()
    await keyring.load()
    assert await states(db) == {first: RETIRED, second: ACTIVE}
    assert published(keyring) == [second]


async def test_scheduled_rotation(db: Database) -> None:
    kek, clock = _kek(), FixedClock(time.time())
    rotator = KeyRotator(db, kek, clock, POLICY)
    first = await rotator.ensure_initial_key()
    clock.advance(3600 - LEAD - 1)
    assert not await rotator.tick()
    clock.advance(1)
    assert await rotator.tick()
    [next_kid] = [k for k, s in (await states(db)).items() if s == NEXT]
    async with db.reading() as session:
        row = await session.get(SigningKeyRow, next_kid)
    assert row is not None
    assert row.activate_after.timestamp() == pytest.approx(clock.time() + LEAD)
    assert first != next_kid


async def test_rotate_now_keeps_every_signing_key_published(db: Database) -> None:
    kek, clock = _kek(), FixedClock(time.time())
    rotator, keyring = KeyRotator(db, kek, clock, POLICY), Keyring(db, kek, clock)
    first = await rotator.ensure_initial_key()
    pending = await rotator.rotate(actor="test")  # published, not signing yet
    urgent = await rotator.rotate(actor="test", immediately=True)
    await keyring.load()
    assert keyring.signer().kid == urgent
    assert await states(db) == {first: RETIRING, pending: RETIRING, urgent: ACTIVE}
    assert set(published(keyring)) == {first, pending, urgent}
    async with db.reading() as session:
        row = await session.get(SigningKeyRow, first)
    assert row is not None and row.publish_until is not None
    assert row.publish_until.timestamp() == pytest.approx(clock.time() + RETAIN)


async def test_one_replica_does_the_rotation_work(postgres_server: str) -> None:
    url = await create_database(postgres_server)
    await asyncio.to_thread(upgrade, url)
    kek, clock = _kek(), FixedClock(time.time())
    databases = [Database(url) for _ in range(5)]
    try:
        rotators = [KeyRotator(d, kek, clock, POLICY) for d in databases]
        await rotators[0].ensure_initial_key()
        clock.advance(3600 - LEAD)  # the schedule is due on every replica
        results = await asyncio.gather(*(r.tick() for r in rotators))
        assert results.count(True) == 1
        assert sorted((await states(databases[0])).values()) == [ACTIVE, NEXT]
    finally:
        for database in databases:
            await database.close()


# -- a resource server under a steady stream of tokens ------------------------


class Verifier:
    """A resource server: caches the JWKS, refetches it only on an unknown kid."""

    def __init__(self, server: Running) -> None:
        self.server = server
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        self.failures: list[str] = []
        self.kids: set[str] = set()
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> None:
        kid = jwt.get_unverified_header(token)["kid"]
        if kid not in self.keys:
            async with self._lock:  # one refetch, however many requests wait
                if kid not in self.keys:
                    self.fetches += 1
                    jwks = await self.server.jwks()
                    self.keys = {k["kid"]: jwt.PyJWK(k).key for k in jwks["keys"]}
        try:
            jwt.decode(
                token,
                self.keys[kid],
                algorithms=["ES256"],
                audience="https://api.example.org",
                issuer=self.server.issuer,
                leeway=abs(self.server.clock.offset) + 5,
            )
            self.kids.add(kid)
        except (KeyError, jwt.InvalidTokenError) as err:
            self.failures.append(f"{kid}: {err!r}")


async def token_stream(
    server: Running,
    svid: Any,
    verifier: Verifier,
    stop: asyncio.Event,
    counts: list[int],
) -> None:
    async with server.client(svid) as client:
        for _ in range(5000):  # bounded, whatever happens
            if stop.is_set():
                return
            r = await client.post(
                f"{server.issuer}/token",
                data={"grant_type": "client_credentials", "client_id": WORKER},
            )
            if r.status_code != 200:
                verifier.failures.append(f"HTTP {r.status_code}: {r.text}")
                continue
            await verifier.verify(r.json()["access_token"])
            counts[0] += 1


async def wait_for_tokens(counts: list[int], more: int) -> None:
    target = counts[0] + more
    for _ in range(3000):  # at most 30 s
        if counts[0] >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {counts[0]} tokens, expected {target}")


async def test_rotation_causes_no_failed_verification(server: Running) -> None:
    svid = server.pki.example.issue("rotation-worker", [WORKER])
    await admin(server).add(WORKER, method="tls_client_auth")
    verifier, counts, stop = Verifier(server), [0], asyncio.Event()
    streams = [
        asyncio.create_task(token_stream(server, svid, verifier, stop, counts))
        for _ in range(4)
    ]
    rotator, keyring = server.services.rotator, server.services.keyring
    try:
        await wait_for_tokens(counts, 40)
        first = keyring.signer().kid

        # Scheduled: published now, signing after the lead time.
        upcoming = await rotator.rotate(actor="test")
        await eventually_published(server, upcoming)
        await wait_for_tokens(counts, 40)
        assert keyring.signer().kid == first
        server.clock.advance(server.settings.keys.publish_lead_seconds)
        await wait_for_tokens(counts, 40)
        assert keyring.signer().kid == upcoming
        await rotator.tick()

        # Immediate (after a compromise): signs as soon as each replica knows.
        urgent = await rotator.rotate(actor="test", immediately=True)
        await wait_for_tokens(counts, 80)
        assert keyring.signer().kid == urgent
    finally:
        stop.set()
        await asyncio.gather(*streams)

    assert verifier.failures == []
    assert verifier.kids == {first, upcoming, urgent}
    assert verifier.fetches == 3  # once at the start, once per new kid
    assert counts[0] >= 200


async def eventually_published(server: Running, kid: str) -> None:
    deadline = time.monotonic() + KEY_RELOAD_SECONDS + 1
    while time.monotonic() < deadline:
        if kid in {k["kid"] for k in (await server.jwks())["keys"]}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{kid} not published within the bound")


# -- two replicas on one PostgreSQL --------------------------------------------


@pytest.fixture
async def replicas(
    postgres_server: str, pki: harness.TestPki, tmp_path: Path
) -> AsyncIterator[tuple[Running, Running]]:
    url = await create_database(postgres_server)
    kek = write_kek(tmp_path)
    keys = {"encryption_key_file": kek}
    async with (
        running_server(pki, url, tmp_path / "a", keys=keys) as a,
        running_server(pki, url, tmp_path / "b", keys=keys) as b,
    ):
        await admin(a).add(WORKER, method="tls_client_auth")
        yield a, b


async def signing_kid(server: Running, svid: Any) -> str:
    r = await server.token(svid, client_id=WORKER)
    assert r.status_code == 200, r.text
    return str(jwt.get_unverified_header(r.json()["access_token"])["kid"])


async def converge(replica: Running, svid: Any, kid: str) -> float:
    started = time.monotonic()
    bound = KEY_RELOAD_SECONDS + 1 + 1.5  # plus a request's round trip
    while time.monotonic() - started < bound:
        if await signing_kid(replica, svid) == kid:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"replica did not sign with {kid} within {bound} s")


@pytest.mark.parametrize("rotating", ["a", "b"], ids=["on-a", "on-b"])
async def test_replicas_agree_after_a_rotation(
    replicas: tuple[Running, Running], rotating: str
) -> None:
    a, b = replicas
    svid = a.pki.example.issue("replica-worker", [WORKER])
    before = await signing_kid(a, svid)
    assert await signing_kid(b, svid) == before

    source, other = (a, b) if rotating == "a" else (b, a)
    urgent = await source.services.rotator.rotate(actor="test", immediately=True)
    await converge(source, svid, urgent)
    # Notifications bring it at once; never later than the bound.
    assert await converge(other, svid, urgent) < KEY_RELOAD_SECONDS + 1

    # A scheduled rotation: both switch at the same instant of their clocks.
    upcoming = await source.services.rotator.rotate(actor="test")
    await eventually_published(other, upcoming)
    for replica in (a, b):
        replica.clock.advance(replica.settings.keys.publish_lead_seconds)
    assert await signing_kid(a, svid) == upcoming
    assert await signing_kid(b, svid) == upcoming


async def test_replicas_agree_by_polling_without_notifications(
    replicas: tuple[Running, Running],
) -> None:
    a, b = replicas
    svid = a.pki.example.issue("polled-worker", [WORKER])
    listener = b.services.db._listener
    assert listener is not None
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    b.services.db._listener = None

    urgent = await a.services.rotator.rotate(actor="test", immediately=True)
    elapsed = await converge(b, svid, urgent)
    assert elapsed < KEY_RELOAD_SECONDS + 1.5


# -- the key-encryption key -----------------------------------------------------


async def test_wrong_kek_at_reload_keeps_the_keys_in_force(
    postgres_server: str,
    pki: harness.TestPki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = await create_database(postgres_server)
    async with running_server(pki, url, tmp_path) as server:
        svid = server.pki.example.issue("kek-worker", [WORKER])
        await admin(server).add(WORKER, method="tls_client_auth")
        keyring = server.services.keyring
        before = keyring.signer().kid
        # A misconfigured replica (another KEK) adds a key to the shared rows.
        stranger = KeyRotator(server.services.db, _kek(), server.clock, POLICY)
        stranger._check_kek = lambda rows: None  # type: ignore[method-assign]
        foreign = await stranger.rotate(actor="misconfigured")

        caplog.clear()
        await keyring.load()
        assert keyring.signer().kid == before
        assert foreign not in published(keyring)
        failed = [
            r for r in caplog.records if getattr(r, "event", "") == "keys.load_failed"
        ]
        assert failed and "previous keys stay in force" in failed[0].getMessage()
        r = await server.token(svid, client_id=WORKER)
        assert r.status_code == 200
        assert jwt.get_unverified_header(r.json()["access_token"])["kid"] == before

        async with server.client() as client:
            ready = await client.get(f"{server.issuer}/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["signing_key"]["signing_kid"] == before
        assert "does not open signing key" in body["signing_key"]["error"]
        assert any(p.startswith("signing keys not reloaded") for p in body["problems"])
        await keyring.load()  # the same failure again: logged, audited once
        [audited] = await audit_rows(server.services, "keys.load_failed")
        assert audited.detail["reason"] == "kek"
        assert audited.detail["kept"] == [before]

        # This replica's own rotator does no work it could not read back.
        await server.services.rotator.tick()
        assert (await states(server.services.db))[foreign] == NEXT


async def test_wrong_kek_refuses_to_start(
    postgres_server: str,
    pki: harness.TestPki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from swim_as.keys.crypto import KeyDecryptionError
    from swim_as.keys.keyring import kek_problem

    url = await create_database(postgres_server)
    async with running_server(pki, url, tmp_path / "first"):
        pass  # creates the first key under its own KEK
    other_kek = write_kek(tmp_path)
    caplog.clear()
    with pytest.raises((KeyDecryptionError, RuntimeError)):
        async with running_server(
            pki, url, tmp_path / "second", keys={"encryption_key_file": other_kek}
        ):
            pass
    critical = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert critical and "is not the key-encryption key" in critical[0].getMessage()

    from swim_as.settings import KeySettings

    problem = await kek_problem(
        url, KeySettings(encryption_key_file=other_kek).load_kek()
    )
    assert problem is not None and "does not open signing key" in problem


# -- an unreachable database ---------------------------------------------------


async def test_readiness_names_every_problem(
    pki: harness.TestPki, tmp_path: Path
) -> None:
    from swim_as.app import build_services, readiness
    from tests.support.harness import free_port, make_settings

    dead = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"
    services = build_services(make_settings(pki, dead, tmp_path))
    try:
        report = await readiness(services)
    finally:
        await services.db.close()
    assert report["ready"] is False
    assert report["database"]["ok"] is False
    assert report["signing_key"] == {"ok": False, "signing_kid": None}
    assert report["problems"][:2] == [
        f"database unreachable: {report['database']['error']}",
        "no active signing key",
    ]
    assert "trust domain example.org: no bundle yet" in report["problems"]
