"""One credential per request, secrets as slow hashes, the JWT bundle refresher."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus

import pytest

from swim_as.clientauth.authenticate import presented_credential
from swim_as.clientauth.base import (
    JWT_BEARER_ASSERTION,
    JWT_SPIFFE_ASSERTION,
    Credential,
    Credentials,
)
from swim_as.clientauth.client_secret import (
    hash_secret,
    new_secret,
    parse_basic,
    verify_secret,
)
from swim_as.clock import FixedClock
from swim_as.errors import InvalidClient, InvalidRequest
from swim_as.spiffe.ids import TrustDomain
from swim_as.trust.refresh import JwtBundleRefresher
from swim_as.trust.store import TrustStore


def creds(**fields: str) -> Credentials:
    return Credentials(
        client_id=fields.pop("client_id", None), certificate=None, **fields
    )


@pytest.mark.parametrize(
    "fields,expected",
    [
        ({}, Credential.CERTIFICATE),
        ({"client_id": "x"}, Credential.CERTIFICATE),
        (
            {"client_assertion_type": JWT_SPIFFE_ASSERTION, "client_assertion": "a"},
            Credential.JWT_SPIFFE,
        ),
        (
            {"client_assertion_type": JWT_BEARER_ASSERTION, "client_assertion": "a"},
            Credential.JWT_BEARER,
        ),
        ({"authorization": "Basic eDp5"}, Credential.BASIC),
        ({"client_id": "x", "client_secret": "s"}, Credential.POST),
    ],
    ids=["nothing", "client-id", "jwt-spiffe", "jwt-bearer", "basic", "post"],
)
def test_one_credential(fields: dict[str, str], expected: Credential) -> None:
    assert presented_credential(creds(**fields)) is expected


@pytest.mark.parametrize(
    "fields",
    [
        {
            "client_assertion_type": JWT_SPIFFE_ASSERTION,
            "client_assertion": "a",
            "authorization": "Basic eDp5",
        },
        {
            "client_assertion_type": JWT_BEARER_ASSERTION,
            "client_assertion": "a",
            "client_secret": "s",
        },
        {"authorization": "Basic eDp5", "client_secret": "s"},
        {"client_assertion": "a", "client_secret": "s"},
    ],
    ids=["assertion+header", "assertion+secret", "header+secret", "half+secret"],
)
def test_two_credentials_are_invalid_request(fields: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest, match="only one client authentication"):
        presented_credential(creds(**fields))


def test_half_an_assertion() -> None:
    with pytest.raises(InvalidRequest, match="client_assertion_type is required"):
        presented_credential(creds(client_assertion="a"))
    with pytest.raises(InvalidRequest, match="client_assertion is required"):
        presented_credential(creds(client_assertion_type=JWT_SPIFFE_ASSERTION))
    with pytest.raises(InvalidClient, match="unsupported client_assertion_type"):
        presented_credential(
            creds(client_assertion_type="urn:x:saml2", client_assertion="a")
        )


def test_secret_hash_round_trip() -> None:
    secret = new_secret()
    assert len(secret) >= 43
    stored = hash_secret(secret, n=2**10)
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "1024", "8", "1")
    assert secret not in stored
    assert verify_secret(stored, secret)
    assert not verify_secret(stored, secret + "x")
    assert not verify_secret(None, secret)
    assert not verify_secret("bcrypt$whatever", secret)
    assert not verify_secret("scrypt$x$8$1$AA$AA", secret)
    # A new salt every time.
    assert hash_secret(secret, n=2**10) != stored


@pytest.mark.parametrize(
    "header,expected",
    [
        ("Basic " + base64.b64encode(b"abc:s3cret").decode(), ("abc", "s3cret")),
        (
            "basic "
            + base64.b64encode(
                f"{quote_plus('id:with/odd')}:{quote_plus('p@ss:w rd')}".encode()
            ).decode(),
            ("id:with/odd", "p@ss:w rd"),
        ),
        ("Bearer abc", None),
        ("Basic", None),
        ("Basic !!!", None),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
        ("Basic " + base64.b64encode(b":secret").decode(), None),
        ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), None),
    ],
    ids=[
        "plain",
        "form-encoded",
        "bearer",
        "empty",
        "not-base64",
        "no-colon",
        "no-user",
        "not-utf8",
    ],
)
def test_parse_basic(header: str, expected: tuple[str, str] | None) -> None:
    assert parse_basic(header) == expected


class CountingSource:
    """A bundle source's reload: counts calls, "changes" when dirty."""

    def __init__(self) -> None:
        self.checks = 0
        self.loads = 0
        self.dirty = False

    async def __call__(self) -> bool:
        self.checks += 1
        if not self.dirty:
            return False
        self.loads += 1
        self.dirty = False
        return True


async def test_unknown_kid_reloads_once_per_interval() -> None:
    clock = FixedClock(1000.0)
    td, other = TrustDomain("example.org"), TrustDomain("other.org")
    source, other_source = CountingSource(), CountingSource()
    refresher = JwtBundleRefresher(
        TrustStore(clock), {td: source, other: other_source}, clock, interval=30
    )
    assert await refresher.unknown_kid(td) is False  # asked, nothing changed
    for _ in range(50):
        assert await refresher.unknown_kid(td) is False
    assert source.checks == 1 and refresher.reloads["example.org"] == 1
    # Another trust domain has its own budget.
    assert await refresher.unknown_kid(other) is False
    assert other_source.checks == 1
    clock.advance(29)
    source.dirty = True
    assert await refresher.unknown_kid(td) is False
    clock.advance(1)
    assert await refresher.unknown_kid(td) is True
    assert (source.checks, source.loads, refresher.reloads["example.org"]) == (2, 1, 2)
    # A trust domain without a source is never "reloaded".
    assert await refresher.unknown_kid(TrustDomain("nowhere.org")) is False
