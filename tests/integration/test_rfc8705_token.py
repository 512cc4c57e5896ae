"""POST /token over real mTLS: RFC 8705 bound tokens for X.509-SVIDs.

A reviewer's checklist: the exact error code and status for every bad input
(RFC 6749 §5.2, D9), and a token that verifies the way a resource server
checks it (RFC 9068 §4, RFC 8705 §3).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import jwt
import pytest

from swim_as.clients.admin import ClientAdmin
from tests.support.harness import Running
from tests.support.pki import Authority, Svid

TD = "spiffe://example.org"
WORKER = f"{TD}/ns/prod/sa/worker"
OTHER_WORKER = f"{TD}/ns/prod/sa/other-worker"


def admin(server: Running) -> ClientAdmin:
    s = server.services
    return ClientAdmin(
        s.db,
        s.clients,
        s.registration,
        s.clock,
        enabled_methods=frozenset({"tls_client_auth", "spiffe_x509"}),
        actor="test",
    )


@pytest.fixture(scope="module")
async def worker(server: Running) -> Svid:
    svid = server.pki.example.issue("worker", [WORKER])
    await admin(server).add(
        WORKER, method="tls_client_auth", scopes=["orders.read", "orders.write"]
    )
    return svid


@pytest.fixture(scope="module")
async def other_worker(server: Running) -> Svid:
    svid = server.pki.example.issue("other-worker", [OTHER_WORKER])
    await admin(server).add(OTHER_WORKER, method="spiffe_x509")
    return svid


async def verify_like_a_resource_server(
    server: Running, token: str, audience: str = "https://api.example.org"
) -> dict[str, Any]:
    jwks = await server.jwks()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key)
    return jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=server.issuer,
    )


async def test_bound_token_verifies(server: Running, worker: Svid) -> None:
    r = await server.token(worker, client_id=WORKER)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert "refresh_token" not in body
    assert body["scope"] == "orders.read orders.write"
    claims = await verify_like_a_resource_server(server, body["access_token"])
    assert claims["cnf"] == {"x5t#S256": worker.x5t}
    assert claims["sub"] == WORKER and claims["client_id"] == WORKER
    assert claims["scope"] == "orders.read orders.write"
    assert claims["exp"] - claims["iat"] == 300 == body["expires_in"]
    assert len(claims["jti"]) >= 16
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "ES256"


async def test_requested_scope_narrows(server: Running, worker: Svid) -> None:
    r = await server.token(worker, client_id=WORKER, scope="orders.read")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "orders.read"
    claims = await verify_like_a_resource_server(server, r.json()["access_token"])
    assert claims["scope"] == "orders.read"


async def test_scope_not_granted(server: Running, worker: Svid) -> None:
    r = await server.token(worker, client_id=WORKER, scope="orders.read admin")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_scope")


async def test_no_scope_granted_means_no_scope_claim(
    server: Running, other_worker: Svid
) -> None:
    r = await server.token(other_worker, client_id=OTHER_WORKER)
    assert r.status_code == 200, r.text
    claims = await verify_like_a_resource_server(server, r.json()["access_token"])
    assert "scope" not in claims and "scope" not in r.json()
    refused = await server.token(other_worker, client_id=OTHER_WORKER, scope="x")
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_scope")


async def test_resource_sets_audience(server: Running, worker: Svid) -> None:
    r = await server.token(worker, client_id=WORKER, resource="https://api.example.org")
    assert r.status_code == 200, r.text
    await verify_like_a_resource_server(server, r.json()["access_token"])


async def test_token_capped_by_certificate(server: Running) -> None:
    sid = f"{TD}/ns/prod/sa/short"
    short = server.pki.example.issue(
        "short", [sid], not_after=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    )
    await admin(server).add(sid, method="tls_client_auth")
    r = await server.token(short, client_id=sid)
    assert r.status_code == 200, r.text
    claims = await verify_like_a_resource_server(server, r.json()["access_token"])
    assert claims["exp"] <= short.not_after.timestamp()
    assert r.json()["expires_in"] <= 90


async def test_svid_under_intermediate(server: Running) -> None:
    sid = f"{TD}/ns/prod/sa/chained"
    mid = Authority(
        server.pki.folder / "mid", "mid", "example.org", parent=server.pki.example
    )
    chained = mid.issue("chained", [sid])
    await admin(server).add(sid, method="spiffe_x509")
    r = await server.token(chained, client_id=sid)
    assert r.status_code == 200, r.text
    claims = await verify_like_a_resource_server(server, r.json()["access_token"])
    assert claims["cnf"]["x5t#S256"] == chained.x5t


async def test_second_trust_domain(server: Running) -> None:
    sid = "spiffe://other.org/ns/x/sa/y"
    svid = server.pki.other.issue("other-td", [sid])
    await admin(server).add(sid, method="tls_client_auth")
    r = await server.token(svid, client_id=sid)
    assert r.status_code == 200, r.text


# -- refusals -------------------------------------------------------------------


def broken_svids(server: Running) -> dict[str, Svid]:
    ca = server.pki.example
    now = dt.datetime.now(dt.UTC)
    stray = Authority(server.pki.folder / "stray", "stray", "example.org")
    return {
        "other-trust-domain-ca": server.pki.other.issue("x-td", [WORKER]),
        "expired": ca.issue(
            "expired",
            [WORKER],
            not_before=now - dt.timedelta(hours=3),
            not_after=now - dt.timedelta(hours=1),
        ),
        "not-yet-valid": ca.issue(
            "future",
            [WORKER],
            not_before=now + dt.timedelta(hours=1),
            not_after=now + dt.timedelta(hours=3),
        ),
        "ca-leaf": ca.issue("ca-leaf", [WORKER], is_ca=True),
        "key-cert-sign": ca.issue("kcs", [WORKER], key_cert_sign=True),
        "crl-sign": ca.issue("crl", [WORKER], crl_sign=True),
        "no-digital-signature": ca.issue("nods", [WORKER], digital_signature=False),
        "no-uri-san": ca.issue("no-uri", dns=["worker.example.org"]),
        "two-uri-sans": ca.issue("two-uris", [WORKER, f"{TD}/ns/prod/sa/evil"]),
        "root-id": ca.issue("root-id", [TD]),
        "uppercase-td": ca.issue("upper", ["spiffe://Example.org/ns/prod/sa/worker"]),
        "trailing-slash": ca.issue("slash", [WORKER + "/"]),
        "dot-segment": ca.issue("dot", [f"{TD}/ns/./worker"]),
        "percent-encoded": ca.issue("pct", [f"{TD}/ns/prod%2Fsa/worker"]),
        "query": ca.issue("query", [WORKER + "?x=1"]),
        "port": ca.issue("port", ["spiffe://example.org:443/ns/prod/sa/worker"]),
        "stray-ca": stray.issue("stray", [WORKER]),
    }


# Refused at the handshake (unknown issuer): no HTTP answer is possible.
HANDSHAKE_REFUSED = {"stray-ca"}


@pytest.mark.parametrize(
    "variant",
    [
        "other-trust-domain-ca",
        "expired",
        "not-yet-valid",
        "ca-leaf",
        "key-cert-sign",
        "crl-sign",
        "no-digital-signature",
        "no-uri-san",
        "two-uri-sans",
        "root-id",
        "uppercase-td",
        "trailing-slash",
        "dot-segment",
        "percent-encoded",
        "query",
        "port",
        "stray-ca",
    ],
)
async def test_broken_svid_refused(server: Running, worker: Svid, variant: str) -> None:
    svid = broken_svids(server)[variant]
    client_id = TD if variant == "root-id" else WORKER
    if variant in HANDSHAKE_REFUSED:
        with pytest.raises((httpx.ConnectError, httpx.ReadError)):
            await server.token(svid, client_id=client_id)
        return
    r = await server.token(svid, client_id=client_id)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text
    assert r.headers["cache-control"] == "no-store"


async def test_non_ca_intermediate_refused(server: Running) -> None:
    not_a_ca = Authority(
        server.pki.folder / "nonca",
        "nonca",
        "example.org",
        parent=server.pki.example,
        is_ca=False,
    )
    svid = not_a_ca.issue("via-non-ca", [WORKER])
    try:
        r = await server.token(svid, client_id=WORKER)
    except (httpx.ConnectError, httpx.ReadError):
        return  # OpenSSL refuses the path at the handshake
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


async def test_no_certificate(server: Running, worker: Svid) -> None:
    r = await server.token(None, client_id=WORKER)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert r.json()["error_description"] == "client certificate required"


async def test_client_id_missing(server: Running, worker: Svid) -> None:
    r = await server.token(worker)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


async def test_client_id_of_someone_else(
    server: Running, worker: Svid, other_worker: Svid
) -> None:
    r = await server.token(other_worker, client_id=WORKER)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


async def test_unknown_client(server: Running) -> None:
    sid = f"{TD}/ns/prod/sa/nobody"
    svid = server.pki.example.issue("nobody", [sid])
    r = await server.token(svid, client_id=sid)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


async def test_disabled_client(server: Running) -> None:
    sid = f"{TD}/ns/prod/sa/disabled"
    svid = server.pki.example.issue("disabled", [sid])
    await admin(server).add(sid, method="tls_client_auth")
    assert (await server.token(svid, client_id=sid)).status_code == 200
    await admin(server).set_disabled(sid, True)
    r = await server.token(svid, client_id=sid)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    await admin(server).set_disabled(sid, False)
    assert (await server.token(svid, client_id=sid)).status_code == 200


async def test_registered_for_another_method(server: Running) -> None:
    sid = f"{TD}/ns/prod/sa/jwt-only"
    svid = server.pki.example.issue("jwt-only", [sid])
    s = server.services
    await ClientAdmin(
        s.db,
        s.clients,
        s.registration,
        s.clock,
        enabled_methods=frozenset({"spiffe_jwt"}),
        actor="test",
    ).add(sid, method="spiffe_jwt")
    r = await server.token(svid, client_id=sid)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")


@pytest.mark.parametrize(
    "form,status,error",
    [
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"grant_type": "authorization_code"}, 400, "unsupported_grant_type"),
        ({"grant_type": ""}, 400, "invalid_request"),
        ({"resource": "not a uri"}, 400, "invalid_target"),
        ({"resource": "/relative/path"}, 400, "invalid_target"),
        ({"resource": "https://api.example.org/#frag"}, 400, "invalid_target"),
        ({"resource": "https://elsewhere.example"}, 400, "invalid_target"),
        ({"scope": "orders.read\\x"}, 400, "invalid_scope"),
    ],
    ids=[
        "password",
        "code",
        "empty-grant",
        "resource-not-uri",
        "resource-relative",
        "resource-fragment",
        "resource-not-allowed",
        "scope-not-granted",
    ],
)
async def test_token_request_errors(
    server: Running, worker: Svid, form: dict[str, str], status: int, error: str
) -> None:
    r = await server.token(worker, client_id=WORKER, **form)
    assert (r.status_code, r.json()["error"]) == (status, error), r.text


async def test_missing_grant_type(server: Running, worker: Svid) -> None:
    async with server.client(worker) as c:
        r = await c.post(f"{server.issuer}/token", data={"client_id": WORKER})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        f"grant_type=client_credentials&client_id={WORKER}&client_id={WORKER}",
        f"grant_type=client_credentials&grant_type=client_credentials&client_id={WORKER}",
        f"grant_type=client_credentials&client_id={WORKER}&scope=a&scope=b",
    ],
    ids=["client_id", "grant_type", "scope"],
)
async def test_repeated_parameter(server: Running, worker: Svid, body: str) -> None:
    async with server.client(worker) as c:
        r = await c.post(
            f"{server.issuer}/token",
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


async def test_resource_may_repeat(server: Running, worker: Svid) -> None:
    """RFC 8707 §2: resource is the one parameter that may be repeated."""
    body = (
        f"grant_type=client_credentials&client_id={WORKER}"
        "&resource=https://api.example.org&resource=https://other.example"
    )
    async with server.client(worker) as c:
        r = await c.post(
            f"{server.issuer}/token",
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_target")


async def test_json_body_refused(server: Running, worker: Svid) -> None:
    async with server.client(worker) as c:
        r = await c.post(
            f"{server.issuer}/token",
            json={"grant_type": "client_credentials", "client_id": WORKER},
        )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


async def test_body_too_large(server: Running, worker: Svid) -> None:
    async with server.client(worker) as c:
        r = await c.post(
            f"{server.issuer}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": WORKER,
                "padding": "x" * 70_000,
            },
        )
    assert (r.status_code, r.json()["error"]) == (413, "invalid_request")


async def test_body_not_utf8(server: Running, worker: Svid) -> None:
    async with server.client(worker) as c:
        r = await c.post(
            f"{server.issuer}/token",
            content=b"grant_type=\xff\xfe",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


async def test_get_not_allowed(server: Running, worker: Svid) -> None:
    async with server.client(worker) as c:
        r = await c.get(f"{server.issuer}/token")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "scope",
    [
        "orders.read\torders.write",
        "orders.read  orders.write",
        "orders.read\u3000orders.write",
        "   ",
        "orders.read\u00a0x",
    ],
    ids=["tab", "double-space", "ideographic-space", "spaces", "nbsp"],
)
async def test_scope_separators_are_single_spaces(
    server: Running, worker: Svid, scope: str
) -> None:
    """RFC 6749 §3.3: scope tokens are separated by one SP and nothing else."""
    r = await server.token(worker, client_id=WORKER, scope=scope)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_scope"), r.text
