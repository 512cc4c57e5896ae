"""Identifiers no database can hold, and credentials that are no credentials.

Found by attacking a running server: a lone surrogate ("\\ud800" in JSON)
or a NUL byte in an identifier used to reach the database and fail there
(500 or 503). Each now gets the protocol's own error. The server here runs
on PostgreSQL, which refuses NUL bytes in text.
"""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.clients import JWT_BEARER, JWT_SPIFFE
from tests.support.harness import Running
from tests.support.jose import compact


def raw_jwt(claims_json: str) -> str:
    """A JWT whose payload is exactly ``claims_json`` (with JSON escapes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives import hashes
    from jwt.algorithms import ECAlgorithm

    header = {"alg": "ES256", "kid": "k", "typ": "JWT"}
    token = compact(
        header,
        {"sub": "placeholder"},
        lambda data: ECAlgorithm(hashes.SHA256).sign(data, key),
    )
    head, _, signature = token.split(".")
    from tests.support.jose import b64

    return f"{head}.{b64(claims_json.encode())}.{signature}"


async def post(server: Running, **form: str):  # type: ignore[no-untyped-def]
    form.setdefault("grant_type", "client_credentials")
    async with server.client() as c:
        return await c.post(f"{server.issuer}/token", data=form)


@pytest.mark.parametrize(
    "assertion_type,claims",
    [
        (JWT_SPIFFE, '{"sub": "spiffe://example.org/\\ud800", "aud": "x", "exp": 1}'),
        (JWT_BEARER, '{"iss": "a\\ud800", "sub": "a\\ud800", "aud": "x", "exp": 1}'),
        (JWT_BEARER, '{"iss": "a\\u0000b", "sub": "a\\u0000b", "aud": "x", "exp": 1}'),
    ],
    ids=["jwt-svid-surrogate-sub", "pk-jwt-surrogate-iss", "pk-jwt-nul-iss"],
)
async def test_unstorable_assertion_claims(
    server: Running, assertion_type: str, claims: str
) -> None:
    r = await post(
        server, client_assertion_type=assertion_type, client_assertion=raw_jwt(claims)
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text


@pytest.mark.parametrize("client_id", ["a\x00b", "spiffe://example.org/\x00"])
async def test_nul_client_id(server: Running, client_id: str) -> None:
    r = await post(server, client_id=client_id)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client"), r.text


async def test_nul_in_a_management_path(server: Running) -> None:
    async with server.client() as c:
        r = await c.get(
            f"{server.issuer}/register/a%00b",
            headers={"authorization": "Bearer token-of-nobody-0123456789"},
        )
    assert r.status_code == 401


@pytest.mark.parametrize("scheme", ["Bearer abc", "DPoP abc", "Negotiate abc"])
async def test_non_basic_authorization_is_a_bad_request(
    server: Running, scheme: str
) -> None:
    async with server.client() as c:
        r = await c.post(
            f"{server.issuer}/token",
            data={"grant_type": "client_credentials", "client_id": "x"},
            headers={"authorization": scheme},
        )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


async def test_no_server_error_was_logged(server: Running, caplog) -> None:  # type: ignore[no-untyped-def]
    await post(server, client_id="a\x00b")
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_statement_claims_with_lone_surrogates() -> None:
    from swim_as.clients.metadata import validate_metadata
    from swim_as.errors import InvalidClientMetadata

    body = json.loads(
        '{"client_name": "\\ud800", "token_endpoint_auth_method": '
        '"tls_client_auth", "tls_client_auth_san_uri": '
        '"spiffe://example.org/x"}'
    )
    with pytest.raises(InvalidClientMetadata, match="invalid Unicode"):
        validate_metadata(
            body, enabled_methods=frozenset({"tls_client_auth"}), caller_spiffe_id=None
        )
    assert time.time()  # keeps the module's imports honest
