"""Values found in review that must be refused, not crash or slip through."""

from __future__ import annotations

import ipaddress

import pytest

from swim_as.clientauth.jwks_fetch import AddressPolicy
from swim_as.spiffe.bundle import parse_bundle
from swim_as.spiffe.errors import BundleError
from swim_as.spiffe.ids import TrustDomain


@pytest.mark.parametrize(
    "address,refusal",
    [
        ("64:ff9b::a9fe:a9fe", "a cloud metadata"),  # NAT64 of 169.254.169.254
        ("64:ff9b::a00:1", "a private"),  # NAT64 of 10.0.0.1
        ("64:ff9b::7f00:1", "a loopback"),
        ("::7f00:1", "a loopback"),  # IPv4-compatible
        ("::a00:1", "a private"),
        ("64:ff9b:1::1", "a non-public"),  # RFC 8215 local-use NAT64
        ("fec0::1", "a non-public"),  # site-local
        ("::ffff:10.0.0.1", "a private"),
        ("64:ff9b::808:808", None),  # NAT64 of a public address
        ("2001:4860:4860::8888", None),
    ],
)
def test_ipv6_forms_of_ipv4_are_judged_as_ipv4(
    address: str, refusal: str | None
) -> None:
    assert AddressPolicy().refusal(ipaddress.ip_address(address)) == refusal


def test_sequence_beyond_64_bits_is_refused() -> None:
    document = b'{"keys": [], "spiffe_sequence": ' + str(2**70).encode() + b"}"
    with pytest.raises(BundleError, match="2\\^64"):
        parse_bundle(document, TrustDomain("example.org"))
