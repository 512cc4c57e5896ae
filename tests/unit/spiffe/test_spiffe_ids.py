"""SPIFFE IDs, trust domains and ID patterns (SPIFFE-ID §2, decision D4)."""

from __future__ import annotations

import pytest

from swim_as.spiffe.errors import SpiffeError, SpiffeIdError
from swim_as.spiffe.ids import SpiffeId, SpiffeIdPattern, TrustDomain

LONG_PATH = "/" + "a" * 2030  # "spiffe://example.org" (20) + 2031 > 2048
MAX_ID = "spiffe://example.org/" + "a" * (2048 - len("spiffe://example.org/"))

VALID_IDS = [
    ("spiffe://example.org/workload", "example.org", "/workload"),
    ("spiffe://example.org/ns/prod/sa/api", "example.org", "/ns/prod/sa/api"),
    ("spiffe://example.org/Mixed.Case-path_9", "example.org", "/Mixed.Case-path_9"),
    ("spiffe://a-b_c.9/x", "a-b_c.9", "/x"),
    ("spiffe://192.168.0.1/x", "192.168.0.1", "/x"),
    ("spiffe://example.org/...", "example.org", "/..."),
    ("spiffe://example.org/.hidden", "example.org", "/.hidden"),
    ("spiffe://example.org", "example.org", ""),
    (MAX_ID, "example.org", MAX_ID[len("spiffe://example.org") :]),
    ("spiffe://" + "t" * 255 + "/x", "t" * 255, "/x"),
]


@pytest.mark.parametrize(
    ("text", "trust_domain", "path"),
    VALID_IDS,
    ids=[
        "simple",
        "k8s-style",
        "path-case-kept",
        "td-punctuation",
        "ipv4-like-td",
        "three-dots-segment",
        "dot-prefixed-segment",
        "root",
        "exactly-2048-bytes",
        "td-255-bytes",
    ],
)
def test_valid_spiffe_ids_round_trip(text: str, trust_domain: str, path: str) -> None:
    spiffe_id = SpiffeId.parse(text)

    assert spiffe_id.trust_domain == TrustDomain(trust_domain)
    assert spiffe_id.path == path
    assert str(spiffe_id) == text
    assert spiffe_id.is_root is (path == "")


INVALID_IDS = [
    ("spiffe://Example.org/x", "trust_domain_char", "must be lowercase"),
    ("spiffe://example.org:443/x", "port", "a port is not allowed"),
    ("spiffe://u@example.org/x", "userinfo", "userinfo is not allowed"),
    ("spiffe://u:p@example.org/x", "userinfo", "userinfo is not allowed"),
    ("spiffe://example.org/x/", "trailing_slash", "trailing slash"),
    ("spiffe://example.org/", "trailing_slash", "trailing slash"),
    ("spiffe://example.org/a//b", "empty_segment", "empty path segment"),
    ("spiffe://example.org/./a", "dot_segment", "'.' is not allowed"),
    ("spiffe://example.org/a/../b", "dot_segment", "'..' is not allowed"),
    ("spiffe://example.org/..", "dot_segment", "'..' is not allowed"),
    ("spiffe://example.org/a%20b", "percent_encoding", "percent-encoding"),
    ("spiffe://ex%41mple.org/a", "percent_encoding", "percent-encoding"),
    ("spiffe://example.org/x?q=1", "query", "a query is not allowed"),
    ("spiffe://example.org/x#f", "fragment", "a fragment is not allowed"),
    ("spiffe://example.org?q", "query", "a query is not allowed"),
    ("spiffe://example.org" + LONG_PATH, "too_long", "longer than 2048 bytes"),
    ("spiffe://" + "t" * 256 + "/x", "trust_domain_too_long", "longer than 255"),
    ("spiffe:///x", "empty_trust_domain", "the trust domain is empty"),
    ("spiffe://", "empty_trust_domain", "the trust domain is empty"),
    ("", "empty", "it is empty"),
    ("SPIFFE://example.org/x", "scheme", "exactly 'spiffe://'"),
    ("Spiffe://example.org/x", "scheme", "exactly 'spiffe://'"),
    ("https://example.org/x", "scheme", "exactly 'spiffe://'"),
    ("spiffe:/example.org/x", "scheme", "exactly 'spiffe://'"),
    ("example.org/x", "scheme", "exactly 'spiffe://'"),
    (" spiffe://example.org/x", "scheme", "exactly 'spiffe://'"),
    ("spiffe://example.org/x ", "path_char", "character ' '"),
    ("spiffe://example.org/a*b", "path_char", "character '*'"),
    ("spiffe://example.org/caf\u00e9", "path_char", "character '\u00e9'"),
    ("spiffe://example.org/a\nb", "path_char", "character '\\n'"),
    ("spiffe://exa$mple.org/x", "trust_domain_char", "character '$'"),
    ("spiffe://[::1]/x", "port", "a port is not allowed"),
    ("spiffe://ex\u00e4mple.org/x", "trust_domain_char", "character '\u00e4'"),
]


@pytest.mark.parametrize(
    ("text", "reason", "fragment"),
    INVALID_IDS,
    ids=[
        "uppercase-td",
        "port",
        "userinfo",
        "userinfo-with-password",
        "trailing-slash",
        "root-trailing-slash",
        "empty-segment",
        "dot-segment",
        "dot-dot-segment",
        "dot-dot-last",
        "percent-in-path",
        "percent-in-td",
        "query",
        "fragment",
        "query-on-root",
        "over-2048-bytes",
        "td-over-255",
        "empty-td",
        "scheme-only",
        "empty",
        "uppercase-scheme",
        "capitalised-scheme",
        "https",
        "single-slash",
        "no-scheme",
        "leading-space",
        "trailing-space",
        "star-in-segment",
        "non-ascii-path",
        "newline",
        "dollar-in-td",
        "ipv6",
        "non-ascii-td",
    ],
)
def test_invalid_spiffe_ids_are_refused(text: str, reason: str, fragment: str) -> None:
    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId.parse(text)

    assert caught.value.reason == reason
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("invalid SPIFFE ID ")


def test_error_message_quotes_a_truncated_safe_input() -> None:
    text = "spiffe://example.org/a\r\n" + "b" * 500

    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId.parse(text)

    message = str(caught.value)
    assert "\n" not in message
    assert "\\r\\n" in message
    assert f"({len(text)} characters)" in message
    assert len(message) < 250


def test_spiffe_id_error_is_a_spiffe_error() -> None:
    with pytest.raises(SpiffeError):
        SpiffeId.parse("nope")


def test_parse_refuses_non_strings() -> None:
    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId.parse(b"spiffe://example.org/x")  # type: ignore[arg-type]

    assert caught.value.reason == "not_a_string"


def test_multibyte_length_is_counted_in_bytes() -> None:
    # 2047 characters but more than 2048 bytes: refused on length first.
    text = "spiffe://example.org/" + "\u00e9" * (2047 - len("spiffe://example.org/"))

    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId.parse(text)

    assert caught.value.reason == "too_long"


def test_spiffe_ids_are_hashable_frozen_values() -> None:
    first = SpiffeId.parse("spiffe://example.org/a")
    second = SpiffeId(TrustDomain("example.org"), "/a")

    assert first == second
    assert len({first, second}) == 1
    with pytest.raises(AttributeError):
        first.path = "/b"  # type: ignore[misc]


def test_direct_construction_is_validated() -> None:
    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId(TrustDomain("example.org"), "/a//b")
    assert caught.value.reason == "empty_segment"

    with pytest.raises(SpiffeIdError) as caught:
        SpiffeId(TrustDomain("example.org"), "a")
    assert caught.value.reason == "path_char"

    with pytest.raises(SpiffeIdError) as caught:
        TrustDomain("Example.org")
    assert caught.value.reason == "trust_domain_char"


def test_member_of() -> None:
    spiffe_id = SpiffeId.parse("spiffe://example.org/a")

    assert spiffe_id.member_of(TrustDomain("example.org"))
    assert not spiffe_id.member_of(TrustDomain("example.com"))


# Trust domains ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["example.org", "spiffe://example.org"], ids=["bare", "spiffe-uri"]
)
def test_trust_domain_parse(text: str) -> None:
    trust_domain = TrustDomain.parse(text)

    assert trust_domain == TrustDomain("example.org")
    assert str(trust_domain) == "example.org"
    assert trust_domain.id == "spiffe://example.org"
    assert {trust_domain: 1}[TrustDomain("example.org")] == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Example.org", "trust_domain_char"),
        ("spiffe://example.org/workload", "trust_domain_path"),
        ("spiffe://example.org/", "trailing_slash"),
        ("SPIFFE://example.org", "scheme"),
        ("https://example.org", "scheme"),
        ("example.org:8443", "port"),
        ("", "empty_trust_domain"),
        ("example.org/x", "trust_domain_char"),
        ("t" * 256, "trust_domain_too_long"),
    ],
    ids=[
        "uppercase",
        "with-path",
        "trailing-slash",
        "uppercase-scheme",
        "https",
        "port",
        "empty",
        "bare-with-path",
        "too-long",
    ],
)
def test_invalid_trust_domains(text: str, reason: str) -> None:
    with pytest.raises(SpiffeIdError) as caught:
        TrustDomain.parse(text)

    assert caught.value.reason == reason


# Patterns --------------------------------------------------------------------

PATTERN_VECTORS = [
    ("spiffe://e.org/client/*", "spiffe://e.org/client/123", True),
    ("spiffe://e.org/client/*", "spiffe://e.org/client/a/b", True),
    ("spiffe://e.org/client/*", "spiffe://e.org/client123", False),
    ("spiffe://e.org/client/*", "spiffe://e.org/client", False),
    ("spiffe://e.org/client/*", "spiffe://e.org/clients/1", False),
    ("spiffe://e.org/client/*", "spiffe://e.org/other/client/1", False),
    ("spiffe://e.org/client/*", "spiffe://f.org/client/1", False),
    ("spiffe://e.org/client/*", "spiffe://e.org/Client/1", False),
    ("spiffe://e.org/*", "spiffe://e.org/anything", True),
    ("spiffe://e.org/*", "spiffe://e.org/a/b/c", True),
    ("spiffe://e.org/*", "spiffe://e.org", False),
    ("spiffe://e.org/*", "spiffe://e.orgx/a", False),
    ("spiffe://e.org/a/b", "spiffe://e.org/a/b", True),
    ("spiffe://e.org/a/b", "spiffe://e.org/a/b/c", False),
    ("spiffe://e.org/a/b", "spiffe://e.org/a", False),
    ("spiffe://e.org", "spiffe://e.org/a", False),
]


@pytest.mark.parametrize(
    ("pattern", "candidate", "expected"),
    PATTERN_VECTORS,
    ids=[
        "prefix-one-segment",
        "prefix-two-segments",
        "not-mid-segment",
        "not-the-prefix-itself",
        "not-a-longer-segment",
        "not-elsewhere-in-path",
        "not-another-trust-domain",
        "case-sensitive-path",
        "trust-domain-wildcard",
        "trust-domain-wildcard-deep",
        "trust-domain-wildcard-not-root",
        "trust-domain-wildcard-not-similar-td",
        "exact",
        "exact-not-child",
        "exact-not-parent",
        "exact-root-matches-no-workload",
    ],
)
def test_pattern_matching(pattern: str, candidate: str, expected: bool) -> None:
    parsed = SpiffeIdPattern.parse(pattern)

    assert parsed.matches(SpiffeId.parse(candidate)) is expected
    assert str(parsed) == pattern


def test_pattern_attributes() -> None:
    wildcard = SpiffeIdPattern.parse("spiffe://e.org/ns/*")
    exact = SpiffeIdPattern.parse("spiffe://e.org/ns/a")
    domain = SpiffeIdPattern.parse("spiffe://e.org/*")
    root = SpiffeIdPattern.parse("spiffe://e.org")

    assert wildcard.is_wildcard and not wildcard.spiffe_id_is_root
    assert wildcard.spiffe_id == SpiffeId.parse("spiffe://e.org/ns")
    assert not exact.is_wildcard and not exact.spiffe_id_is_root
    assert domain.is_wildcard and domain.spiffe_id_is_root
    assert not root.is_wildcard and root.spiffe_id_is_root


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("spiffe://e.org/client*", "wildcard"),
        ("spiffe://e.org/*/x", "wildcard"),
        ("spiffe://e.org/a/**", "wildcard"),
        ("spiffe://e.org/*/*", "wildcard"),
        ("spiffe://*/x", "wildcard"),
        ("spiffe://e.org//*", "empty_segment"),
        ("spiffe://E.org/*", "trust_domain_char"),
        ("spiffe://e.org/a/", "trailing_slash"),
        ("https://e.org/*", "scheme"),
        ("*", "wildcard"),
        ("/*", "scheme"),
    ],
    ids=[
        "star-in-segment",
        "star-mid-path",
        "double-star",
        "two-wildcards",
        "star-td",
        "empty-segment-before-star",
        "uppercase-td",
        "trailing-slash",
        "wrong-scheme",
        "bare-star",
        "bare-slash-star",
    ],
)
def test_invalid_patterns(text: str, reason: str) -> None:
    with pytest.raises(SpiffeIdError) as caught:
        SpiffeIdPattern.parse(text)

    assert caught.value.reason == reason
    assert str(caught.value).startswith("invalid SPIFFE ID pattern ")
