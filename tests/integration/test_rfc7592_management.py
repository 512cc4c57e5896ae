"""RFC 7592 client management: every bad credential on every method, the
update rules, and what deletion leaves behind (tombstones)."""

from __future__ import annotations

import uuid
from typing import Any

import jwt
import pytest

from swim_as.clients.tombstones import DeletedClients, issued_before_deletion
from tests.support.harness import Running
from tests.support.lifecycle import (
    admin,
    audit_events,
    info_logs,  # noqa: F401 (fixture)
)
from tests.support.pki import Svid

TD = "spiffe://example.org"

# Every log call runs, as in production (INFO).
pytestmark = pytest.mark.usefixtures("info_logs")


@pytest.fixture
async def managed(server: Running) -> tuple[Svid, dict[str, Any]]:
    sid = f"{TD}/ns/mgmt/sa/{uuid.uuid4().hex[:10]}"
    svid = server.pki.example.issue(f"mgmt-{sid[-10:]}", [sid])
    r = await server.register(svid, {"client_name": "managed"})
    assert r.status_code == 201, r.text
    return svid, r.json()


@pytest.fixture
async def neighbour(server: Running) -> tuple[Svid, dict[str, Any]]:
    sid = f"{TD}/ns/mgmt/sa/n-{uuid.uuid4().hex[:10]}"
    svid = server.pki.example.issue(f"mgmt-{sid[-12:]}", [sid])
    r = await server.register(svid, {})
    assert r.status_code == 201, r.text
    return svid, r.json()


def update_body(reg: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {
        k: v
        for k, v in reg.items()
        if k
        not in (
            "registration_access_token",
            "registration_client_uri",
            "client_id_issued_at",
        )
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


async def call(
    server: Running,
    method: str,
    url: str,
    *,
    token: str | None = None,
    svid: Svid | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with server.client(svid) as c:
        return await c.request(method, url, headers=headers, json=body)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("credential", ["missing", "wrong", "another-clients"])
async def test_bad_credentials(
    server: Running,
    managed: tuple[Svid, dict[str, Any]],
    neighbour: tuple[Svid, dict[str, Any]],
    method: str,
    credential: str,
) -> None:
    """RFC 7592 §2.1-§2.3: an invalid token is an RFC 6750 error (401).

    A registration access token belongs to one client: for any other
    client it is not valid (answering 403 would confirm it is valid
    somewhere).
    """
    _, reg = managed
    token = {
        "missing": None,
        "wrong": "wrong-token-" + "x" * 30,
        "another-clients": neighbour[1]["registration_access_token"],
    }[credential]
    body = update_body(reg, client_name="changed") if method == "PUT" else None
    r = await call(
        server, method, reg["registration_client_uri"], token=token, body=body
    )
    assert r.status_code == 401
    if credential == "missing":
        assert r.headers["www-authenticate"] == 'Bearer realm="swim-as"'
        assert r.content == b""
    else:
        assert r.json()["error"] == "invalid_token"
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    # Nothing changed.
    still = await call(
        server,
        "GET",
        reg["registration_client_uri"],
        token=reg["registration_access_token"],
    )
    assert still.status_code == 200 and still.json()["client_name"] == "managed"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_another_workloads_svid(
    server: Running,
    managed: tuple[Svid, dict[str, Any]],
    neighbour: tuple[Svid, dict[str, Any]],
    method: str,
) -> None:
    _, reg = managed
    body = update_body(reg) if method == "PUT" else None
    r = await call(
        server, method, reg["registration_client_uri"], svid=neighbour[0], body=body
    )
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_unknown_client(
    server: Running, managed: tuple[Svid, dict[str, Any]], method: str
) -> None:
    """§2.1-§2.3: an unknown client is 401, even with a token valid elsewhere."""
    _, reg = managed
    url = f"{server.issuer}/register/spiffe%3A%2F%2Fexample.org%2Fns%2Fmgmt%2Fnobody"
    body = (
        update_body(reg, client_id=f"{TD}/ns/mgmt/nobody") if method == "PUT" else None
    )
    r = await call(
        server, method, url, token=reg["registration_access_token"], body=body
    )
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")


@pytest.mark.parametrize(
    "changes,error",
    [
        ({"client_id": f"{TD}/ns/mgmt/sa/someone-else"}, "invalid_request"),
        ({"client_id": None}, "invalid_request"),
        ({"registration_access_token": "x"}, "invalid_request"),
        (
            {"registration_client_uri": "https://x.example/register/x"},
            "invalid_request",
        ),
        ({"client_id_issued_at": 1}, "invalid_request"),
        ({"client_secret_expires_at": 0}, "invalid_request"),
        ({"client_secret": "guess"}, "invalid_request"),
        (
            {"tls_client_auth_san_uri": f"{TD}/ns/mgmt/sa/other"},
            "invalid_client_metadata",
        ),
        ({"redirect_uris": ["https://app.example/cb"]}, "invalid_client_metadata"),
    ],
    ids=[
        "changes-client-id",
        "omits-client-id",
        "sends-registration-access-token",
        "sends-registration-client-uri",
        "sends-client-id-issued-at",
        "sends-client-secret-expires-at",
        "sends-client-secret",
        "changes-identity",
        "other-flow",
    ],
)
async def test_update_refused(
    server: Running,
    managed: tuple[Svid, dict[str, Any]],
    changes: dict[str, Any],
    error: str,
) -> None:
    _, reg = managed
    r = await call(
        server,
        "PUT",
        reg["registration_client_uri"],
        token=reg["registration_access_token"],
        body=update_body(reg, **changes),
    )
    assert (r.status_code, r.json()["error"]) == (400, error), r.text


async def test_update_replaces_and_is_audited(
    server: Running, managed: tuple[Svid, dict[str, Any]]
) -> None:
    _, reg = managed
    body = update_body(reg, client_name=None, contacts=["ops@example.org"])
    r = await call(
        server,
        "PUT",
        reg["registration_client_uri"],
        token=reg["registration_access_token"],
        body=body,
    )
    assert r.status_code == 200, r.text
    # §2.2: omitted members are removed, not kept.
    assert "client_name" not in r.json() and r.json()["contacts"] == ["ops@example.org"]
    events = await audit_events(server, client_id=reg["client_id"], prefix="client.")
    assert [e.event for e in events] == ["client.registered", "client.updated"]
    assert events[1].detail["before"]["client_name"] == "managed"
    assert "client_name" not in events[1].detail["after"]


async def test_delete_leaves_a_tombstone(
    server: Running, managed: tuple[Svid, dict[str, Any]]
) -> None:
    svid, reg = managed
    client_id = reg["client_id"]
    token = (await server.token(svid, client_id=client_id)).json()["access_token"]
    old_iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    dead = DeletedClients(server.services.clients)
    assert not await dead.token_is_dead(client_id, old_iat)

    url, rat = reg["registration_client_uri"], reg["registration_access_token"]
    assert (await call(server, "DELETE", url, token=rat)).status_code == 204
    # The token, the client and the registration access token are gone.
    assert (await call(server, "DELETE", url, token=rat)).status_code == 401
    assert (await call(server, "GET", url, token=rat)).status_code == 401
    refused = await server.token(svid, client_id=client_id)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_client")
    deleted_at = await server.services.clients.deleted_at(client_id)
    assert deleted_at is not None
    assert await dead.token_is_dead(client_id, old_iat)

    # A new registration with the same id does not resurrect old tokens.
    server.clock.advance(2)
    try:
        again = await server.register(svid, {})
        assert again.status_code == 201, again.text
        new = (await server.token(svid, client_id=client_id)).json()["access_token"]
        new_iat = jwt.decode(new, options={"verify_signature": False})["iat"]
        assert not await dead.token_is_dead(client_id, new_iat)
        assert await dead.token_is_dead(client_id, old_iat)
    finally:
        server.clock.advance(-2)


async def test_operator_delete_leaves_a_tombstone_too(server: Running) -> None:
    sid = f"{TD}/ns/mgmt/sa/operator-deleted"
    await admin(server).add(sid, method="spiffe_x509")
    await admin(server).delete(sid)
    assert await server.services.clients.deleted_at(sid) is not None


def test_the_comparison_errs_towards_inactive() -> None:
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(1_000_000.5, UTC)
    assert issued_before_deletion(1_000_000, at)  # the same second
    assert issued_before_deletion(999_999, at)
    assert not issued_before_deletion(1_000_001, at)
    assert not issued_before_deletion(1_000_000, None)
