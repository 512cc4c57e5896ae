"""jwks_uri fetching: the address policy, the URL rules, limits and caching.

Every listener is our own, on 127.0.0.1; refused destinations are never
contacted (the listener counts connections to prove it).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from swim_as.clientauth.jwks_fetch import (
    AddressPolicy,
    DestinationRefused,
    FetchFailed,
    JwksFetcher,
    check_url,
)
from swim_as.clock import FixedClock
from tests.support.harness import TestPki as Pki
from tests.support.jwks_server import jwks_server, server_tls

STRICT = AddressPolicy()
LOOPBACK_OK = AddressPolicy.from_strings(["127.0.0.1/32"])
DOCUMENT = {"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}


@pytest.mark.parametrize(
    "address,reason",
    [
        ("127.0.0.1", "a loopback"),
        ("127.8.9.10", "a loopback"),
        ("::1", "a loopback"),
        ("10.1.2.3", "a private"),
        ("172.16.0.1", "a private"),
        ("192.168.1.1", "a private"),
        ("fd12:3456::1", "a private"),
        ("169.254.10.10", "a link-local"),
        ("fe80::1", "a link-local"),
        ("169.254.169.254", "a cloud metadata"),
        ("169.254.170.2", "a cloud metadata"),
        ("fd00:ec2::254", "a cloud metadata"),
        ("100.100.100.200", "a cloud metadata"),
        ("168.63.129.16", "a cloud metadata"),
        ("0.0.0.0", "an unspecified"),
        ("::", "an unspecified"),
        ("224.0.0.1", "a multicast"),
        ("ff02::1", "a multicast"),
        ("100.64.0.1", "a non-public"),
        ("192.0.2.1", "a private"),
        ("::ffff:127.0.0.1", "a loopback"),
        ("::ffff:169.254.169.254", "a cloud metadata"),
        ("2002:7f00:1::", "a loopback"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a tunnelled"),
    ],
    ids=lambda v: v.replace(":", "_") if isinstance(v, str) else v,
)
def test_refused_addresses(address: str, reason: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "8.8.8.8"]
)
def test_public_addresses_allowed(address: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) is None


def test_operator_networks_open_private_space_but_not_metadata() -> None:
    policy = AddressPolicy.from_strings(["127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8"])
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.refusal(ipaddress.ip_address("10.9.8.7")) is None
    assert policy.refusal(ipaddress.ip_address("169.254.10.1")) is None
    assert policy.refusal(ipaddress.ip_address("169.254.169.254")) == "a cloud metadata"
    assert policy.refusal(ipaddress.ip_address("::1")) == "a loopback"


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://keys.example/jwks", "https URL"),
        ("https:///jwks", "https URL"),
        ("https://user:pw@keys.example/jwks", "userinfo"),
        ("https://keys.example/jwks#frag", "fragment"),
        ("https://keys.example:0/jwks", "invalid port"),
        ("https://keys.example:99999/jwks", "not a valid URL"),
        ("https://127.0.0.1/jwks", "names a loopback address"),
        ("https://[::1]:8443/jwks", "names a loopback address"),
        ("https://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("https://[fd00:ec2::254]/", "a cloud metadata address"),
        ("https://10.0.0.1/jwks", "a private address"),
    ],
    ids=[
        "http",
        "no-host",
        "userinfo",
        "fragment",
        "port-zero",
        "port-range",
        "loopback",
        "loopback-v6",
        "metadata",
        "metadata-v6",
        "private",
    ],
)
def test_url_rules(url: str, message: str) -> None:
    with pytest.raises(DestinationRefused, match=message):
        check_url(url, STRICT)


async def test_loopback_refused_and_never_contacted() -> None:
    """A name resolving to loopback is refused after resolution, unsent."""
    async with jwks_server() as listener:
        fetcher = JwksFetcher(STRICT, FixedClock(1000.0))
        for url in (
            f"https://localhost:{listener.port}/jwks",
            f"https://127.0.0.1:{listener.port}/jwks",
            f"https://[::ffff:127.0.0.1]:{listener.port}/jwks",
        ):
            with pytest.raises(DestinationRefused):
                await fetcher.get(url)
            with pytest.raises(DestinationRefused):
                await fetcher.check_destination(url)
        assert listener.connections == 0
        assert fetcher.fetches == 0


async def test_fetch_with_sni_and_host_of_the_name(pki: Pki) -> None:
    tls = server_tls(pki.server.chain_path, pki.server.key_path)
    async with jwks_server(tls) as server:
        server.serve_json(DOCUMENT)
        clock = FixedClock(1000.0)
        fetcher = JwksFetcher(
            LOOPBACK_OK, clock, cache_seconds=60, ca_file=pki.web.bundle_path
        )
        # The connection goes to the checked address; the name is sent in
        # Host (and SNI, checked against the certificate's DNS name).
        url = server.url(host="localhost")
        assert await fetcher.get(url) == DOCUMENT
        assert server.paths == ["/jwks"]
        assert server.hosts == [f"localhost:{server.port}"]
        # Cached until the cache time is over.
        assert await fetcher.get(url) == DOCUMENT
        assert server.connections == 1
        clock.advance(61)
        assert await fetcher.get(url) == DOCUMENT
        assert server.connections == 2


async def test_certificate_is_verified(pki: Pki) -> None:
    tls = server_tls(pki.server.chain_path, pki.server.key_path)
    async with jwks_server(tls) as server:
        fetcher = JwksFetcher(LOOPBACK_OK, FixedClock(1000.0))  # system CAs only
        with pytest.raises(FetchFailed, match="ConnectError"):
            await fetcher.get(server.url())


@pytest.mark.parametrize(
    "status,body,headers,message",
    [
        (302, b"", {"location": "https://127.0.0.1/elsewhere"}, "status 302"),
        (404, b"{}", {}, "status 404"),
        (200, b"not json", {}, "not JSON"),
        (200, b"x" * 5000, {}, "body over 4096 bytes"),
    ],
    ids=["redirect", "not-found", "not-json", "too-large"],
)
async def test_bad_answers(
    pki: Pki, status: int, body: bytes, headers: dict[str, str], message: str
) -> None:
    tls = server_tls(pki.server.chain_path, pki.server.key_path)
    async with jwks_server(tls) as server:
        server.status, server.body = status, body
        server.headers.update(headers)
        fetcher = JwksFetcher(
            LOOPBACK_OK, FixedClock(1000.0), max_bytes=4096, ca_file=pki.web.bundle_path
        )
        with pytest.raises(FetchFailed, match=message):
            await fetcher.get(server.url())
        assert server.paths == ["/jwks"]  # the redirect was not followed


async def test_body_limit_without_content_length(pki: Pki) -> None:
    tls = server_tls(pki.server.chain_path, pki.server.key_path)
    async with jwks_server(tls) as server:
        server.body = b"[" + b"1," * 4000 + b"1]"
        server.headers["content-length"] = "10"  # lies; the reader counts
        fetcher = JwksFetcher(
            LOOPBACK_OK, FixedClock(1000.0), max_bytes=4096, ca_file=pki.web.bundle_path
        )
        with pytest.raises(FetchFailed):
            await fetcher.get(server.url())


async def test_time_limit(pki: Pki) -> None:
    tls = server_tls(pki.server.chain_path, pki.server.key_path)
    async with jwks_server(tls) as server:
        server.delay = 3.0
        fetcher = JwksFetcher(
            LOOPBACK_OK, FixedClock(1000.0), timeout=0.5, ca_file=pki.web.bundle_path
        )
        with pytest.raises(FetchFailed, match="no answer within 0.5 s"):
            await fetcher.get(server.url())


async def test_failure_remembered_then_retried(pki: Pki) -> None:
    tls = server_tls(pki.server.chain_path, pki.server.key_path)
    async with jwks_server(tls) as server:
        server.status = 500
        clock = FixedClock(1000.0)
        fetcher = JwksFetcher(
            LOOPBACK_OK, clock, retry_seconds=30, ca_file=pki.web.bundle_path
        )
        for _ in range(3):
            with pytest.raises(FetchFailed, match="status 500"):
                await fetcher.get(server.url())
        assert server.connections == 1
        server.serve_json(DOCUMENT)
        clock.advance(31)
        assert await fetcher.get(server.url()) == DOCUMENT


async def test_refresh_is_rate_limited(pki: Pki) -> None:
    tls = server_tls(pki.server.chain_path, pki.server.key_path)
    async with jwks_server(tls) as server:
        server.serve_json(DOCUMENT)
        clock = FixedClock(1000.0)
        fetcher = JwksFetcher(
            LOOPBACK_OK,
            clock,
            cache_seconds=300,
            retry_seconds=30,
            ca_file=pki.web.bundle_path,
        )
        await fetcher.get(server.url())
        await fetcher.get(server.url(), refresh=True)  # too soon: cached
        assert server.connections == 1
        clock.advance(31)
        await fetcher.get(server.url(), refresh=True)
        assert server.connections == 2


async def test_unreadable_ca_file_is_a_fetch_failure(tmp_path: object) -> None:
    async with jwks_server() as server:
        fetcher = JwksFetcher(
            LOOPBACK_OK, FixedClock(1000.0), ca_file=Path("/nonexistent/ca.pem")
        )
        with pytest.raises(FetchFailed, match="jwks_uri_ca_file"):
            await fetcher.get(server.url())
