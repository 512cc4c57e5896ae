"""POST /register (RFC 7591) and the client configuration endpoint (RFC 7592)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select

from swim_as.storage.models import AuditRow, ClientRow
from tests.support.harness import Running
from tests.support.pki import Svid

TD = "spiffe://example.org"


def self_body(san_uri: str, **extra: Any) -> dict[str, Any]:
    return {
        "token_endpoint_auth_method": "tls_client_auth",
        "tls_client_auth_san_uri": san_uri,
        "grant_types": ["client_credentials"],
        **extra,
    }


async def test_self_registration(server: Running) -> None:
    sid = f"{TD}/ns/reg/sa/one"
    svid = server.pki.example.issue("reg-one", [sid])
    r = await server.register(
        svid, self_body(sid, client_name="one", unknown_member="ignored")
    )
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["client_id"] == sid
    assert isinstance(body["client_id_issued_at"], int)
    assert body["grant_types"] == ["client_credentials"]
    assert body["token_endpoint_auth_method"] == "tls_client_auth"
    assert body["tls_client_auth_san_uri"] == sid
    assert body["tls_client_certificate_bound_access_tokens"] is True
    assert body["client_name"] == "one"
    for absent in (
        "client_secret",
        "response_types",
        "redirect_uris",
        "unknown_member",
    ):
        assert absent not in body
    assert len(body["registration_access_token"]) >= 40
    assert body["registration_client_uri"].startswith(server.issuer + "/register/")
    # The registered workload gets a bound token, with no scope (D13).
    t = await server.token(svid, client_id=sid)
    assert t.status_code == 200, t.text
    assert "scope" not in t.json()


async def test_defaults_from_the_svid(server: Running) -> None:
    """D13: no method → tls_client_auth with the caller's own SPIFFE ID."""
    sid = f"{TD}/ns/reg/sa/defaults"
    svid = server.pki.example.issue("reg-defaults", [sid])
    r = await server.register(svid, {})
    assert r.status_code == 201, r.text
    assert r.json()["token_endpoint_auth_method"] == "tls_client_auth"
    assert r.json()["tls_client_auth_san_uri"] == sid


async def test_spiffe_x509_registration(server: Running) -> None:
    sid = f"{TD}/ns/reg/sa/x509"
    svid = server.pki.example.issue("reg-x509", [sid])
    r = await server.register(svid, {"token_endpoint_auth_method": "spiffe_x509"})
    assert r.status_code == 201, r.text
    assert r.json()["spiffe_id"] == sid
    assert (await server.token(svid, client_id=sid)).status_code == 200


async def test_scope_in_registration_grants_nothing(server: Running) -> None:
    sid = f"{TD}/ns/reg/sa/greedy"
    svid = server.pki.example.issue("reg-greedy", [sid])
    r = await server.register(svid, self_body(sid, scope="admin everything"))
    assert r.status_code == 201, r.text
    t = await server.token(svid, client_id=sid, scope="admin")
    assert (t.status_code, t.json()["error"]) == (400, "invalid_scope")


async def test_repeat_returns_same_client(server: Running) -> None:
    sid = f"{TD}/ns/reg/sa/again"
    svid = server.pki.example.issue("reg-again", [sid])
    first = await server.register(svid, self_body(sid))
    again = await server.register(svid, self_body(sid))
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["client_id"] == again.json()["client_id"] == sid
    assert first.json()["client_id_issued_at"] == again.json()["client_id_issued_at"]


async def test_concurrent_registrations_make_one_row(server: Running) -> None:
    sid = f"{TD}/ns/reg/sa/racer"
    svid = server.pki.example.issue("reg-racer", [sid])
    results = await asyncio.gather(
        *(server.register(svid, self_body(sid)) for _ in range(24))
    )
    assert sorted({r.status_code for r in results}) in ([200, 201], [201])
    assert [r.status_code for r in results].count(201) == 1
    async with server.services.db.reading() as session:
        rows = await session.scalar(
            select(func.count())
            .select_from(ClientRow)
            .where(ClientRow.client_id == sid)
        )
        audits = await session.scalar(
            select(func.count())
            .select_from(AuditRow)
            .where(AuditRow.client_id == sid, AuditRow.event == "client.registered")
        )
    assert (rows, audits) == (1, 1)


async def test_someone_else_refused(server: Running) -> None:
    sid = f"{TD}/ns/reg/sa/mallory"
    svid = server.pki.example.issue("reg-mallory", [sid])
    r = await server.register(svid, self_body(f"{TD}/ns/reg/sa/victim"))
    assert (r.status_code, r.json()["error"]) == (403, "access_denied")


async def test_without_any_credential(server: Running) -> None:
    """RFC 6750 §3.1: no SVID, no token, no statement → a bare challenge."""
    r = await server.register(None, self_body(f"{TD}/ns/reg/sa/anon"))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="swim-as"'
    assert r.content == b""


async def test_broken_svid_refused(server: Running) -> None:
    sid = f"{TD}/ns/reg/sa/ca-leaf"
    svid = server.pki.example.issue("reg-ca-leaf", [sid], is_ca=True)
    r = await server.register(svid, self_body(sid))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


@pytest.fixture(scope="module")
async def caller(server: Running) -> tuple[Svid, str]:
    sid = f"{TD}/ns/reg/sa/caller"
    return server.pki.example.issue("reg-caller", [sid]), sid


@pytest.mark.parametrize(
    "content,ctype,error",
    [
        (b"{not json", "application/json", "invalid_request"),
        (b"[]", "application/json", "invalid_request"),
        (b'"text"', "application/json", "invalid_request"),
        (b"\xff\xfe", "application/json", "invalid_request"),
        (
            b"grant_types=client_credentials",
            "application/x-www-form-urlencoded",
            "invalid_request",
        ),
    ],
    ids=["malformed", "array", "string", "not-utf8", "form"],
)
async def test_bad_json(
    server: Running, caller: tuple[Svid, str], content: bytes, ctype: str, error: str
) -> None:
    svid, _ = caller
    async with server.client(svid) as c:
        r = await c.post(
            f"{server.issuer}/register",
            content=content,
            headers={"content-type": ctype},
        )
    assert (r.status_code, r.json()["error"]) == (400, error), r.text


async def test_too_large(server: Running, caller: tuple[Svid, str]) -> None:
    svid, sid = caller
    r = await server.register(svid, self_body(sid, client_name="x" * 70_000))
    assert (r.status_code, r.json()["error"]) == (413, "invalid_request")


@pytest.mark.parametrize(
    "extra",
    [
        {"grant_types": "client_credentials"},
        {"grant_types": ["client_credentials", "authorization_code"]},
        {"grant_types": ["refresh_token"]},
        {"redirect_uris": ["https://app.example/cb"]},
        {"response_types": ["code"]},
        {"token_endpoint_auth_method": "client_secret_basic"},
        {"token_endpoint_auth_method": "none"},
        {"token_endpoint_auth_method": 7},
        {"tls_client_auth_san_uri": ["spiffe://example.org/x"]},
        {"tls_client_auth_san_dns": "worker.example.org"},
        {"spiffe_id": "spiffe://example.org/ns/reg/sa/elsewhere"},
        {"tls_client_certificate_bound_access_tokens": "yes"},
        {"scope": 12},
        {"contacts": "ops@example.org"},
        {"client_uri": "http://insecure.example"},
        {"jwks_uri": "https://keys.example/jwks"},
    ],
    ids=[
        "grant-types-string",
        "code-grant",
        "refresh-grant",
        "redirect-uris",
        "response-types",
        "secret-method",
        "none-method",
        "method-number",
        "san-uri-list",
        "san-dns",
        "spiffe-id-differs",
        "bound-string",
        "scope-number",
        "contacts-string",
        "client-uri-http",
        "jwks-uri-for-tls",
    ],
)
async def test_invalid_metadata(
    server: Running, caller: tuple[Svid, str], extra: dict[str, Any]
) -> None:
    svid, sid = caller
    r = await server.register(svid, self_body(sid, **extra))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client_metadata"), (
        r.text
    )


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://example.org/ns/reg/sa/caller/",
        "spiffe://Example.org/ns/reg/sa/caller",
        "spiffe://example.org/ns//caller",
        "spiffe://example.org",
        "spiffe://example.org/ns/reg/sa/*",
        "https://example.org/ns/reg/sa/caller",
    ],
    ids=["trailing-slash", "uppercase", "empty-segment", "root", "wildcard", "https"],
)
async def test_invalid_san_uri(
    server: Running, caller: tuple[Svid, str], value: str
) -> None:
    svid, _ = caller
    r = await server.register(svid, self_body(value))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client_metadata"), (
        r.text
    )


async def test_empty_redirect_lists_are_fine(
    server: Running, caller: tuple[Svid, str]
) -> None:
    svid, sid = caller
    r = await server.register(svid, self_body(sid, redirect_uris=[], response_types=[]))
    assert r.status_code in (200, 201), r.text
    assert "response_types" not in r.json()


# -- RFC 7592 ------------------------------------------------------------------


@pytest.fixture
async def managed(server: Running) -> tuple[Svid, dict[str, Any]]:
    import uuid

    sid = f"{TD}/ns/reg/sa/managed-{uuid.uuid4().hex[:8]}"
    svid = server.pki.example.issue(f"managed-{sid[-8:]}", [sid])
    r = await server.register(svid, self_body(sid, client_name="before"))
    assert r.status_code == 201, r.text
    return svid, r.json()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_read(server: Running, managed: tuple[Svid, dict[str, Any]]) -> None:
    _, reg = managed
    async with server.client() as c:
        r = await c.get(
            reg["registration_client_uri"],
            headers=bearer(reg["registration_access_token"]),
        )
    assert r.status_code == 200, r.text
    assert r.json()["client_id"] == reg["client_id"]
    assert r.json()["client_name"] == "before"
    assert "registration_access_token" not in r.json()


async def test_read_with_own_svid(
    server: Running, managed: tuple[Svid, dict[str, Any]]
) -> None:
    svid, reg = managed
    async with server.client(svid) as c:
        r = await c.get(reg["registration_client_uri"])
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "headers,status,challenge",
    [
        ({}, 401, 'Bearer realm="swim-as"'),
        ({"authorization": "Bearer wrong-token-0123456789"}, 401, "invalid_token"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, 401, "invalid_token"),
    ],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_read_refused(
    server: Running,
    managed: tuple[Svid, dict[str, Any]],
    headers: dict[str, str],
    status: int,
    challenge: str,
) -> None:
    _, reg = managed
    async with server.client() as c:
        r = await c.get(reg["registration_client_uri"], headers=headers)
    assert r.status_code == status
    assert challenge in r.headers["www-authenticate"]


async def test_another_clients_token(
    server: Running, managed: tuple[Svid, dict[str, Any]]
) -> None:
    _, reg = managed
    sid = f"{TD}/ns/reg/sa/neighbour"
    svid = server.pki.example.issue("neighbour", [sid])
    neighbour = (await server.register(svid, self_body(sid))).json()
    async with server.client() as c:
        r = await c.get(
            reg["registration_client_uri"],
            headers=bearer(neighbour["registration_access_token"]),
        )
        assert r.status_code == 401
        # and someone else's SVID does not manage it either
    async with server.client(svid) as c:
        r = await c.get(reg["registration_client_uri"])
        assert r.status_code == 401


async def test_unknown_client(server: Running) -> None:
    async with server.client() as c:
        r = await c.get(
            f"{server.issuer}/register/spiffe%3A%2F%2Fexample.org%2Fnope",
            headers=bearer("whatever-token-0123456789"),
        )
    assert r.status_code == 401


async def test_update(server: Running, managed: tuple[Svid, dict[str, Any]]) -> None:
    _, reg = managed
    update = {
        "client_id": reg["client_id"],
        "token_endpoint_auth_method": "tls_client_auth",
        "tls_client_auth_san_uri": reg["client_id"],
        "client_name": "after",
    }
    async with server.client() as c:
        r = await c.put(
            reg["registration_client_uri"],
            json=update,
            headers=bearer(reg["registration_access_token"]),
        )
    assert r.status_code == 200, r.text
    assert r.json()["client_name"] == "after"


@pytest.mark.parametrize(
    "change,error",
    [
        (
            {"client_id": "spiffe://example.org/ns/reg/sa/someone-else"},
            "invalid_request",
        ),
        ({"client_id": None}, "invalid_request"),
        ({"registration_access_token": "x"}, "invalid_request"),
        ({"registration_client_uri": "https://x"}, "invalid_request"),
        ({"client_id_issued_at": 1}, "invalid_request"),
        (
            {"tls_client_auth_san_uri": "spiffe://example.org/ns/reg/sa/someone-else"},
            "invalid_client_metadata",
        ),
        ({"grant_types": ["implicit"]}, "invalid_client_metadata"),
    ],
    ids=[
        "change-client-id",
        "omit-client-id",
        "send-token",
        "send-uri",
        "send-issued-at",
        "change-identity",
        "bad-grant",
    ],
)
async def test_update_refused(
    server: Running,
    managed: tuple[Svid, dict[str, Any]],
    change: dict[str, Any],
    error: str,
) -> None:
    _, reg = managed
    update = {
        "client_id": reg["client_id"],
        "token_endpoint_auth_method": "tls_client_auth",
        "tls_client_auth_san_uri": reg["client_id"],
        **change,
    }
    update = {k: v for k, v in update.items() if v is not None}
    async with server.client() as c:
        r = await c.put(
            reg["registration_client_uri"],
            json=update,
            headers=bearer(reg["registration_access_token"]),
        )
    assert (r.status_code, r.json()["error"]) == (400, error), r.text


async def test_delete(server: Running, managed: tuple[Svid, dict[str, Any]]) -> None:
    svid, reg = managed
    assert (await server.token(svid, client_id=reg["client_id"])).status_code == 200
    async with server.client() as c:
        r = await c.delete(
            reg["registration_client_uri"],
            headers=bearer(reg["registration_access_token"]),
        )
        assert r.status_code == 204
        again = await c.get(
            reg["registration_client_uri"],
            headers=bearer(reg["registration_access_token"]),
        )
        assert again.status_code == 401
    t = await server.token(svid, client_id=reg["client_id"])
    assert (t.status_code, t.json()["error"]) == (400, "invalid_client")
    async with server.services.db.reading() as session:
        events = (
            await session.scalars(
                select(AuditRow.event)
                .where(AuditRow.client_id == reg["client_id"])
                .where(AuditRow.event.startswith("client."))
                .order_by(AuditRow.id)
            )
        ).all()
    assert events[0] == "client.registered" and events[-1] == "client.deleted"


# -- hostile input found in review ----------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"client_name": "\\ud800"}',
        b'{"client_name": "a", "client_name": "b"}',
        b'{"n": NaN}',
        b"\xef\xbb\xbf{}",
        '{"client_name": "x"}'.encode("utf-16"),
    ],
    ids=["deep", "lone-surrogate", "duplicate-member", "nan", "bom", "utf-16"],
)
async def test_hostile_json(
    server: Running, caller: tuple[Svid, str], content: bytes
) -> None:
    svid, _ = caller
    async with server.client(svid) as c:
        r = await c.post(
            f"{server.issuer}/register",
            content=content,
            headers={"content-type": "application/json"},
        )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request"), r.text


async def test_deep_json_without_certificate(server: Running) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    async with server.client() as c:
        r = await c.post(
            f"{server.issuer}/register",
            content=body[:60_000],
            headers={"content-type": "application/json"},
        )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


@pytest.mark.parametrize(
    "member",
    ["client_uri", "logo_uri", "tos_uri", "policy_uri", "spiffe_bundle_endpoint"],
)
async def test_unparsable_url(
    server: Running, caller: tuple[Svid, str], member: str
) -> None:
    svid, sid = caller
    r = await server.register(svid, self_body(sid, **{member: "https://[x"}))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client_metadata")


@pytest.mark.parametrize("scope", ["a\tb", "a  b", "a\u3000b", " a", "a ", "a\\b"])
async def test_registered_scope_must_be_rfc6749(
    server: Running, caller: tuple[Svid, str], scope: str
) -> None:
    svid, sid = caller
    r = await server.register(svid, self_body(sid, scope=scope))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client_metadata")


async def test_repeat_returns_no_new_token(
    server: Running, managed: tuple[Svid, dict[str, Any]]
) -> None:
    svid, reg = managed
    again = await server.register(svid, self_body(reg["client_id"]))
    assert again.status_code == 200
    assert "registration_access_token" not in again.json()
    async with server.client() as c:
        r = await c.get(
            reg["registration_client_uri"],
            headers=bearer(reg["registration_access_token"]),
        )
    assert r.status_code == 200  # the first token is still the valid one


async def test_disabled_client_cannot_undo_the_operator(
    server: Running, managed: tuple[Svid, dict[str, Any]]
) -> None:
    from swim_as.clients.admin import ClientAdmin

    svid, reg = managed
    s = server.services
    await ClientAdmin(
        s.db,
        s.clients,
        s.registration,
        s.clock,
        enabled_methods=frozenset({"tls_client_auth"}),
        actor="test",
    ).set_disabled(reg["client_id"], True)
    async with server.client(svid) as c:
        deleted = await c.delete(reg["registration_client_uri"])
        read = await c.get(
            reg["registration_client_uri"],
            headers=bearer(reg["registration_access_token"]),
        )
    assert (deleted.status_code, deleted.json()["error"]) == (403, "access_denied")
    assert (read.status_code, read.json()["error"]) == (403, "access_denied")
    again = await server.register(svid, self_body(reg["client_id"]))
    assert again.status_code == 200  # the same, still disabled, client
    t = await server.token(svid, client_id=reg["client_id"])
    assert (t.status_code, t.json()["error"]) == (400, "invalid_client")
