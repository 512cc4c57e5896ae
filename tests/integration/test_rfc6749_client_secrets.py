"""Client secrets (RFC 6749 §2.3.1), kept only to migrate clients away.

Off by default: not advertised, not registrable, and a Basic header gets a
401 with a challenge (D9). When the operator turns them on, swim-as makes
the secret, shows it once, stores a slow hash, and logs and counts every
use.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from sqlalchemy import select

from swim_as.errors import InvalidClientMetadata
from swim_as.storage.models import AuditRow, ClientRow
from tests.support.clients import JWT_BEARER, operator
from tests.support.harness import Running, running_server
from tests.support.harness import TestPki as Pki
from tests.support.postgres import create_database


def basic(client_id: str, secret: str) -> str:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


async def post_token(
    server: Running, *, headers: dict[str, str] | None = None, **form: str
) -> Any:
    async with server.client() as c:
        return await c.post(
            f"{server.issuer}/token",
            data={"grant_type": "client_credentials", **form},
            headers=headers or {},
        )


# -- off by default ------------------------------------------------------------


async def test_off_by_default(server: Running) -> None:
    async with server.client() as c:
        doc = (
            await c.get(f"{server.issuer}/.well-known/oauth-authorization-server")
        ).json()
    methods = doc["token_endpoint_auth_methods_supported"]
    assert "client_secret_basic" not in methods and "client_secret_post" not in methods
    for method in ("client_secret_basic", "client_secret_post"):
        with pytest.raises(InvalidClientMetadata, match="not supported"):
            await operator(server).add_other({"token_endpoint_auth_method": method})
    r = await post_token(server, headers={"authorization": basic("someone", "secret")})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    assert r.headers["www-authenticate"] == 'Basic realm="swim-as"'
    r = await post_token(server, client_id="someone", client_secret="secret")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


async def test_basic_for_a_certificate_client(server: Running) -> None:
    sid = "spiffe://example.org/ns/sec/sa/cert-client"
    await operator(server).add(sid, method="tls_client_auth")
    r = await post_token(server, headers={"authorization": basic(sid, "guess")})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    assert r.headers["www-authenticate"].startswith("Basic ")
    assert r.json()["error_description"] == (
        "client is registered for another authentication method"
    )


# -- turned on -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def legacy(
    postgres_server: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    folder: Path = tmp_path_factory.mktemp("secrets-server")
    async with running_server(
        pki,
        await create_database(postgres_server),
        folder,
        client_auth={
            "methods": [
                "tls_client_auth",
                "spiffe_x509",
                "client_secret_basic",
                "client_secret_post",
            ]
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def basic_registration(legacy: Running) -> tuple[str, str, str]:
    registration = await operator(legacy).add_other(
        {"token_endpoint_auth_method": "client_secret_basic", "client_name": "legacy"},
        scopes=["old.read"],
    )
    assert registration.client_secret is not None
    assert registration.registration_access_token is not None
    body = legacy.services.registration.response(registration)
    assert body["client_secret"] == registration.client_secret
    assert body["client_secret_expires_at"] == 0
    return (
        registration.client.client_id,
        registration.client_secret,
        registration.registration_access_token,
    )


@pytest.fixture(scope="module")
def basic_client(basic_registration: tuple[str, str, str]) -> tuple[str, str]:
    return basic_registration[0], basic_registration[1]


@pytest.fixture(scope="module")
def registration_token(basic_registration: tuple[str, str, str]) -> str:
    return basic_registration[2]


@pytest.fixture(scope="module")
async def post_client(legacy: Running) -> tuple[str, str]:
    registration = await operator(legacy).add_other(
        {"token_endpoint_auth_method": "client_secret_post"}
    )
    assert registration.client_secret is not None
    return registration.client.client_id, registration.client_secret


async def test_advertised_when_on(legacy: Running) -> None:
    async with legacy.client() as c:
        doc = (
            await c.get(f"{legacy.issuer}/.well-known/oauth-authorization-server")
        ).json()
    assert doc["token_endpoint_auth_methods_supported"] == [
        "tls_client_auth",
        "spiffe_x509",
        "client_secret_basic",
        "client_secret_post",
    ]
    # No JWT method is on: no signing algorithms to list.
    assert "token_endpoint_auth_signing_alg_values_supported" not in doc


async def test_only_a_slow_hash_is_stored(
    legacy: Running, basic_client: tuple[str, str], registration_token: str
) -> None:
    client_id, secret = basic_client
    rat = registration_token
    async with legacy.services.db.reading() as session:
        row = await session.get(ClientRow, client_id)
    assert row is not None and row.client_secret_hash is not None
    assert row.client_secret_hash.startswith("scrypt$")
    assert secret not in row.client_secret_hash
    assert "client_secret" not in row.client_metadata
    client = await legacy.services.clients.get(client_id)
    assert client is not None and client.secret_hash == row.client_secret_hash
    assert row.client_secret_hash not in repr(client)
    # Shown once: reading the registration (RFC 7592) does not show it.
    async with legacy.client() as c:
        read = await c.get(
            legacy.services.registration.client_uri(client_id),
            headers={"authorization": f"Bearer {rat}"},
        )
    assert read.status_code == 200, read.text
    assert "client_secret" not in read.json()
    assert "client_secret_expires_at" not in read.json()
    async with legacy.services.db.reading() as session:
        audit = (
            await session.scalars(
                select(AuditRow).where(AuditRow.client_id == client_id)
            )
        ).all()
    assert audit and all(secret not in str(a.detail) for a in audit)


async def test_basic(
    legacy: Running, basic_client: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    client_id, secret = basic_client
    counters = legacy.services.audit.counters
    before = counters["client_auth.legacy_secret"]
    with caplog.at_level(logging.WARNING, logger="swim_as"):
        r = await post_token(
            legacy, headers={"authorization": basic(client_id, secret)}
        )
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "old.read"
    assert counters["client_auth.legacy_secret"] == before + 1
    warnings = [
        rec
        for rec in caplog.records
        if getattr(rec, "event", None) == "client_auth.legacy_secret"
    ]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert getattr(warnings[0], "client_id") == client_id
    assert secret not in caplog.text


async def test_post(legacy: Running, post_client: tuple[str, str]) -> None:
    client_id, secret = post_client
    r = await post_token(legacy, client_id=client_id, client_secret=secret)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "case",
    ["wrong-secret", "unknown-client", "malformed", "other-scheme", "post-for-basic"],
)
async def test_basic_refusals_are_401(
    legacy: Running, basic_client: tuple[str, str], case: str
) -> None:
    client_id, secret = basic_client
    header = {
        "wrong-secret": basic(client_id, secret + "x"),
        "unknown-client": basic("nobody", secret),
        "malformed": "Basic not-base64!",
    }.get(case)
    if case == "other-scheme":
        # Bearer is no client authentication (RFC 6749 §2.3): a bad request.
        r = await post_token(legacy, headers={"authorization": "Bearer " + secret})
        assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
        return
    if case == "post-for-basic":
        r = await post_token(legacy, client_id=client_id, client_secret=secret)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
        return
    r = await post_token(legacy, headers={"authorization": header or ""})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client"), r.text
    assert r.headers["www-authenticate"] == 'Basic realm="swim-as"'
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "form,status,error",
    [
        ({"client_secret": "x"}, 400, "invalid_request"),
        ({"client_id": "someone-else"}, 401, "invalid_client"),
        (
            {"client_assertion_type": JWT_BEARER, "client_assertion": "a.b.c"},
            400,
            "invalid_request",
        ),
    ],
    ids=["basic-and-post", "client-id-differs", "basic-and-assertion"],
)
async def test_basic_with_something_else(
    legacy: Running,
    basic_client: tuple[str, str],
    form: dict[str, str],
    status: int,
    error: str,
) -> None:
    client_id, secret = basic_client
    r = await post_token(
        legacy, headers={"authorization": basic(client_id, secret)}, **form
    )
    assert (r.status_code, r.json()["error"]) == (status, error), r.text


async def test_post_refusals(legacy: Running, post_client: tuple[str, str]) -> None:
    client_id, secret = post_client
    r = await post_token(legacy, client_id=client_id, client_secret="wrong")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    r = await post_token(legacy, client_secret=secret)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


async def test_never_self_registered(legacy: Running) -> None:
    svid = legacy.pki.example.issue("wants-secret", ["spiffe://example.org/ns/s/sa/w"])
    r = await legacy.register(
        svid, {"token_endpoint_auth_method": "client_secret_basic"}
    )
    assert (r.status_code, r.json()["error"]) == (403, "access_denied")
