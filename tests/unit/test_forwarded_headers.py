"""Forwarded-certificate headers: Envoy XFCC, RFC 9440 and nginx (D5).

The parsers are pure; certificates are real, made for the module. Every bad
input must raise ForwardedHeaderError (which the middleware turns into
``invalid_client``), never anything else.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography import x509

from swim_as.clientauth.forwarded import (
    ForwardedHeaderError,
    HeaderLimits,
    XfccElement,
    check_agreement,
    header_text,
    parse_client_cert,
    parse_client_cert_chain,
    parse_escaped_pem,
    parse_xfcc,
    xfcc_chain,
)
from swim_as.clientauth.mesh import (
    ForwardedCertificateReader,
    ForwardOptions,
    TrustedProxies,
)
from swim_as.clientauth.presented import (
    CertificateParser,
    ForwardedIdentity,
    PresentedCertificate,
    thumbprint_of,
)
from tests.support.forwarding import byte_sequence, der, escaped_pem, xfcc_element
from tests.support.pki import Authority, Svid

TD = "spiffe://example.org"
WORKER = f"{TD}/ns/prod/sa/worker"
ADMIN = f"{TD}/ns/platform/sa/admin"
SWIM_AS = f"{TD}/ns/auth/sa/swim-as"


class Certs:
    def __init__(self, folder: Path) -> None:
        self.ca = Authority(folder / "ca", "ca", "example.org")
        self.mid = Authority(folder / "mid", "mid", "example.org", parent=self.ca)
        self.worker = self.ca.issue("worker", [WORKER], dns=["worker.example.org"])
        self.admin = self.ca.issue("admin", [ADMIN])
        self.chained = self.mid.issue("chained", [WORKER])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("forwarded"))


def sha256_hex(svid: Svid) -> str:
    return hashlib.sha256(der(svid.cert)).hexdigest()


# -- XFCC syntax -----------------------------------------------------------------


def test_xfcc_envoy_shape() -> None:
    digest = "ab" * 32
    [element] = parse_xfcc(
        f'By={SWIM_AS};Hash={digest};Subject="O=Acme, Inc.,CN=worker";URI={WORKER}'
    )
    assert element == XfccElement(
        by=(SWIM_AS,), hash=digest, subject="O=Acme, Inc.,CN=worker", uri=(WORKER,)
    )


@pytest.mark.parametrize(
    "header,subject",
    [
        ('Subject="CN=a,O=b;OU=c=d";URI=x', "CN=a,O=b;OU=c=d"),
        ('Subject="CN=\\"quoted\\" name";URI=x', 'CN="quoted" name'),
        ('Subject="back\\\\slash";URI=x', "back\\slash"),
        ('Subject="CN=a\\,b";URI=x', "CN=a\\,b"),
        ('Subject="";URI=x', None),
        (
            'Subject="a, URI=spiffe://example.org/evil";URI=x',
            "a, URI=spiffe://example.org/evil",
        ),
    ],
    ids=[
        "separators-in-quotes",
        "escaped-quotes",
        "escaped-backslash",
        "rfc2253-escape-kept",
        "empty-subject",
        "fake-pair-in-quotes",
    ],
)
def test_xfcc_quoted_values_hide_separators(header: str, subject: str | None) -> None:
    elements = parse_xfcc(header)
    assert len(elements) == 1
    assert elements[0].subject == subject
    assert elements[0].uri == ("x",)


def test_xfcc_keys_are_case_insensitive_values_are_not() -> None:
    [element] = parse_xfcc(
        f"by={SWIM_AS};BY=spiffe://Other/Thing;HASH={'AB' * 32};"
        f"uri={WORKER};Uri=a;dns=D"
    )
    assert element.by == (SWIM_AS, "spiffe://Other/Thing")
    assert element.hash == "ab" * 32
    assert element.uri == (WORKER, "a")
    assert element.dns == ("D",)


def test_xfcc_several_elements_in_order() -> None:
    elements = parse_xfcc(f"URI={ADMIN};By=a , URI={WORKER};By=b,\tURI=c")
    assert [e.uri for e in elements] == [(ADMIN,), (WORKER,), ("c",)]
    assert [e.by for e in elements] == [("a",), ("b",), ()]


def test_xfcc_only_separators_need_quotes() -> None:
    # Only , ; = " \ and blanks must be quoted; '?', '/', ':' and '%' need not.
    assert parse_xfcc("URI=spiffe://a/b?c%20d")[0].uri == ("spiffe://a/b?c%20d",)


def test_xfcc_empty_values_and_unknown_keys() -> None:
    [element] = parse_xfcc('URI=;DNS=;Subject="";Future="x,y";By=b')
    assert element == XfccElement(by=("b",))
    assert not element.has_certificate


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "URI",
        "=x",
        "URI=a;",
        "URI=a,",
        ";URI=a",
        "URI=a,,URI=b",
        "URI=a;;DNS=b",
        'Subject="unterminated',
        'Subject="a"b;URI=x',
        'Subject="a" "b"',
        'URI=a"b',
        "URI=a=b",
        "URI=a\\b",
        "URI=a b",
        'Subject="line\nbreak"',
        "URI=\x00",
        "Hash=xyz",
        f"Hash={'a' * 63}",
        f"Hash={'a' * 64};Hash={'b' * 64}",
        "Cert=",
        'Cert=""',
        "Chain=",
        'Subject="a";Subject="b"',
        "By=",
        "Ke y=v",
    ],
    ids=[
        "empty",
        "blank",
        "key-only",
        "no-key",
        "trailing-semicolon",
        "trailing-comma",
        "leading-semicolon",
        "empty-element",
        "empty-pair",
        "unbalanced-quote",
        "text-after-quote",
        "two-quoted-strings",
        "quote-in-bare-value",
        "equals-in-bare-value",
        "backslash-in-bare-value",
        "space-in-bare-value",
        "newline-in-quotes",
        "nul",
        "hash-not-hex",
        "hash-short",
        "hash-twice",
        "cert-empty",
        "cert-empty-quoted",
        "chain-empty",
        "subject-twice",
        "by-empty",
        "space-in-key",
    ],
)
def test_xfcc_garbage_refused(header: str) -> None:
    with pytest.raises(ForwardedHeaderError):
        parse_xfcc(header)


def test_xfcc_bounds() -> None:
    limits = HeaderLimits(max_bytes=2048, max_elements=3, max_chain=2)
    assert len(parse_xfcc("URI=a,URI=b,URI=c", limits)) == 3
    with pytest.raises(ForwardedHeaderError, match="more than 3 elements"):
        parse_xfcc("URI=a,URI=b,URI=c,URI=d", limits)
    with pytest.raises(ForwardedHeaderError, match="over the limit"):
        parse_xfcc("URI=" + "a" * 2048, limits)
    with pytest.raises(ForwardedHeaderError, match="over the limit"):
        header_text([b"URI=" + b"a" * 1100, b"URI=" + b"b" * 1100], "XFCC", limits)


def test_header_lines_join_as_a_list() -> None:
    text = header_text([b"URI=a", b"URI=b"], "XFCC", HeaderLimits())
    assert [e.uri for e in parse_xfcc(text)] == [("a",), ("b",)]
    with pytest.raises(ForwardedHeaderError, match="not ASCII"):
        header_text(["URI=é".encode()], "XFCC", HeaderLimits())


# -- XFCC certificates -------------------------------------------------------------


def test_xfcc_cert_and_chain(certs: Certs) -> None:
    leaf, mid = certs.chained.cert, certs.mid.cert
    only_cert = parse_xfcc(xfcc_element(leaf))[0]
    assert xfcc_chain(only_cert) == (der(leaf),)
    both = parse_xfcc(xfcc_element(leaf, chain=[mid], with_chain=True))[0]
    assert xfcc_chain(both) == (der(leaf), der(mid))
    only_chain = parse_xfcc(
        xfcc_element(leaf, chain=[mid], with_cert=False, with_chain=True)
    )[0]
    assert xfcc_chain(only_chain) == (der(leaf), der(mid))
    assert xfcc_chain(parse_xfcc(f"URI={WORKER}")[0]) == ()


def test_xfcc_unquoted_escaped_cert_is_fine(certs: Certs) -> None:
    # Fully URL-encoded PEM holds no separator, so quoting is optional.
    [element] = parse_xfcc(f"Cert={escaped_pem(certs.worker.cert)}")
    assert xfcc_chain(element) == (der(certs.worker.cert),)


def test_xfcc_chain_must_start_with_cert(certs: Certs) -> None:
    element = XfccElement(
        cert=escaped_pem(certs.worker.cert),
        chain=escaped_pem(certs.admin.cert, certs.ca.cert),
    )
    with pytest.raises(ForwardedHeaderError, match="does not start with 'Cert'"):
        xfcc_chain(element)


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda c: XfccElement(cert=escaped_pem(c.worker.cert, c.admin.cert)),
            "more than 1",
        ),
        (lambda c: XfccElement(cert="%ZZ" + escaped_pem(c.worker.cert)), "percent"),
        (lambda c: XfccElement(cert="%C3%A9" + escaped_pem(c.worker.cert)), "ASCII"),
        (lambda c: XfccElement(cert="junk" + escaped_pem(c.worker.cert)), "outside"),
        (lambda c: XfccElement(cert=escaped_pem(c.worker.cert) + "junk"), "outside"),
        (lambda c: XfccElement(cert="%20%0A"), "no PEM"),
        (
            lambda c: XfccElement(
                cert="-----BEGIN CERTIFICATE-----%0AAAA*%0A-----END CERTIFICATE-----"
            ),
            "outside",
        ),
        (
            lambda c: XfccElement(
                cert="-----BEGIN CERTIFICATE-----%0AAAA%0A-----END CERTIFICATE-----"
            ),
            "base64",
        ),
        (
            lambda c: XfccElement(
                cert="-----BEGIN CERTIFICATE-----%0A-----END CERTIFICATE-----"
            ),
            "empty",
        ),
        (
            lambda c: XfccElement(
                chain=escaped_pem(c.chained.cert, c.mid.cert, c.ca.cert)
            ),
            "more than 2",
        ),
    ],
    ids=[
        "two-certs-in-cert",
        "bad-percent",
        "non-ascii",
        "text-before",
        "text-after",
        "no-pem",
        "bad-base64-char",
        "bad-base64-length",
        "empty-block",
        "chain-too-long",
    ],
)
def test_xfcc_bad_certificates(certs: Certs, make: object, message: str) -> None:
    element = make(certs)  # type: ignore[operator]
    with pytest.raises(ForwardedHeaderError, match=message):
        xfcc_chain(element, HeaderLimits(max_chain=2))


def test_agreement(certs: Certs) -> None:
    leaf = certs.worker
    agreeing = XfccElement(
        hash=sha256_hex(leaf), uri=(WORKER,), dns=("worker.example.org",)
    )
    check_agreement(agreeing, der(leaf.cert), leaf.cert)


@pytest.mark.parametrize(
    "element,message",
    [
        (XfccElement(hash="00" * 32), "'Hash'"),
        (XfccElement(uri=(ADMIN,)), "'URI'"),
        (XfccElement(uri=(WORKER, ADMIN)), "'URI'"),
        (XfccElement(dns=("admin.example.org",)), "'DNS'"),
    ],
    ids=["hash", "uri-of-another", "extra-uri", "dns"],
)
def test_disagreement_refused(certs: Certs, element: XfccElement, message: str) -> None:
    leaf = certs.worker
    with pytest.raises(ForwardedHeaderError, match=message):
        check_agreement(element, der(leaf.cert), leaf.cert)


# -- RFC 9440 ----------------------------------------------------------------------


def test_rfc9440_client_cert(certs: Certs) -> None:
    data = der(certs.worker.cert)
    assert parse_client_cert(byte_sequence(data)) == data
    assert parse_client_cert(" " + byte_sequence(data) + " ") == data
    unpadded = ":" + base64.b64encode(data).decode().rstrip("=") + ":"
    assert parse_client_cert(unpadded) == data


def test_rfc9440_chain(certs: Certs) -> None:
    mid, root = der(certs.mid.cert), der(certs.ca.cert)
    value = f"{byte_sequence(mid)}, {byte_sequence(root)}"
    assert parse_client_cert_chain(value) == (mid, root)
    with pytest.raises(ForwardedHeaderError, match="more than 1"):
        parse_client_cert_chain(value, HeaderLimits(max_chain=2))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "::",
        "abc",
        ":abc",
        "abc:",
        ":a*c:",
        ":YWJj:;param=1",
        ":YWJj: :YWJj:",
        '"YWJj"',
        ":YWJj===:",
        ":Y:",
    ],
    ids=[
        "empty",
        "empty-bytes",
        "bare",
        "open",
        "close",
        "bad-char",
        "parameter",
        "two-items",
        "string",
        "too-much-padding",
        "bad-length",
    ],
)
def test_rfc9440_garbage_refused(value: str) -> None:
    with pytest.raises(ForwardedHeaderError):
        parse_client_cert(value)


def test_rfc9440_chain_garbage_refused() -> None:
    for value in (":YWJj:,", ",:YWJj:", ":YWJj:, x", ""):
        with pytest.raises(ForwardedHeaderError):
            parse_client_cert_chain(value)


# -- nginx -------------------------------------------------------------------------


def test_nginx_escaped_pem(certs: Certs) -> None:
    leaf = certs.worker.cert
    assert parse_escaped_pem(escaped_pem(leaf), "x-ssl-client-cert") == der(leaf)
    with pytest.raises(ForwardedHeaderError, match="more than 1"):
        parse_escaped_pem(escaped_pem(leaf, certs.ca.cert), "x-ssl-client-cert")
    with pytest.raises(ForwardedHeaderError, match="no PEM"):
        parse_escaped_pem("", "x-ssl-client-cert")


# -- the reader: what the middleware gets from a trusted proxy's header ----------


def reader(source: str = "xfcc", **options: object) -> ForwardedCertificateReader:
    header = {"xfcc": "x-forwarded-client-cert", "nginx": "x-ssl-client-cert"}
    return ForwardedCertificateReader(
        ForwardOptions(
            source=source,  # type: ignore[arg-type]
            header=header.get(source, "client-cert"),
            **options,  # type: ignore[arg-type]
        ),
        CertificateParser(),
    )


def read_xfcc(r: ForwardedCertificateReader, header: str) -> object:
    return r.read([[header.encode()]])


def test_only_the_last_element_counts(certs: Certs) -> None:
    """An earlier element naming a privileged workload is not the client."""
    earlier = xfcc_element(certs.admin.cert, by=["spiffe://example.org/ns/edge/sa/gw"])
    last = xfcc_element(certs.worker.cert, by=[SWIM_AS])
    got = read_xfcc(reader(expected_by=SWIM_AS), f"{earlier},{last}")
    assert isinstance(got, PresentedCertificate)
    assert got.leaf == certs.worker.cert
    assert got.thumbprint == thumbprint_of(der(certs.worker.cert)) == certs.worker.x5t
    assert got.source == "xfcc" and got.proven


def test_privileged_workload_last_but_by_elsewhere(certs: Certs) -> None:
    """An element another proxy wrote (its own By) is refused when swim-as
    knows its own identity."""
    forged = xfcc_element(certs.admin.cert, by=["spiffe://example.org/ns/edge/sa/gw"])
    with pytest.raises(ForwardedHeaderError, match="'By'"):
        read_xfcc(reader(expected_by=SWIM_AS), forged)
    with pytest.raises(ForwardedHeaderError, match="'By' is none"):
        read_xfcc(reader(expected_by=SWIM_AS), xfcc_element(certs.worker.cert))


def test_by_may_repeat(certs: Certs) -> None:
    element = xfcc_element(
        certs.worker.cert, by=["spiffe://example.org/other", SWIM_AS]
    )
    assert isinstance(
        read_xfcc(reader(expected_by=SWIM_AS), element), PresentedCertificate
    )


def test_forwarded_chain_keeps_intermediates(certs: Certs) -> None:
    element = xfcc_element(certs.chained.cert, chain=[certs.mid.cert], with_chain=True)
    got = read_xfcc(reader(), element)
    assert isinstance(got, PresentedCertificate)
    assert got.intermediates == (certs.mid.cert,)
    assert got.cache_key == (der(certs.chained.cert), der(certs.mid.cert))


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda c: xfcc_element(c.worker.cert, uri=[ADMIN]), "'URI'"),
        (lambda c: xfcc_element(c.worker.cert, hash_hex=sha256_hex(c.admin)), "'Hash'"),
        (
            lambda c: (
                f'Cert="{escaped_pem(c.worker.cert)}";'
                f'Chain="{escaped_pem(c.admin.cert)}"'
            ),
            "'Chain'",
        ),
        # The PEM without its END line (a fixed cut: a cut inside a %-escape
        # would fail for another reason).
        (
            lambda c: 'Cert="' + escaped_pem(c.worker.cert).split("-----END")[0] + '"',
            "PEM|outside",
        ),
    ],
    ids=["uri", "hash", "chain-leaf", "truncated"],
)
def test_cert_uri_hash_disagree(certs: Certs, build: object, message: str) -> None:
    with pytest.raises(ForwardedHeaderError, match=message):
        read_xfcc(reader(), build(certs))  # type: ignore[operator]


def test_unparsable_der_is_a_header_error() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    from urllib.parse import quote

    with pytest.raises(ForwardedHeaderError, match="does not parse"):
        read_xfcc(reader(), f'Cert="{quote(pem, safe="")}"')


def test_identity_only_needs_a_validating_proxy(certs: Certs) -> None:
    element = f"By={SWIM_AS};Hash={sha256_hex(certs.worker)};URI={WORKER}"
    with pytest.raises(ForwardedHeaderError, match="not marked as validating"):
        read_xfcc(reader(), element)
    got = read_xfcc(reader(proxy_validates=True), element)
    assert got == ForwardedIdentity(
        spiffe_id=WORKER, source="xfcc", sha256_hex=sha256_hex(certs.worker)
    )
    assert isinstance(got, ForwardedIdentity) and not got.proven


@pytest.mark.parametrize(
    "element,message",
    [
        (f"By={SWIM_AS}", "neither a certificate nor a URI"),
        (f"URI={WORKER};URI={ADMIN}", "exactly one"),
        ("URI=https://example.org/x", "not a SPIFFE ID"),
        ("URI=spiffe://Example.org/x", "not a SPIFFE ID"),
    ],
    ids=["nothing", "two-uris", "not-spiffe", "not-canonical"],
)
def test_identity_only_refusals(element: str, message: str) -> None:
    with pytest.raises(ForwardedHeaderError, match=message):
        read_xfcc(reader(proxy_validates=True), element)


def test_reader_caches_per_header_value(certs: Certs) -> None:
    r = reader()
    element = xfcc_element(certs.worker.cert)
    assert read_xfcc(r, element) is read_xfcc(r, element)


def test_rfc9440_reader(certs: Certs) -> None:
    r = reader("rfc9440")
    leaf, mid = der(certs.chained.cert), der(certs.mid.cert)
    got = r.read([[byte_sequence(leaf).encode()], [byte_sequence(mid).encode()]])
    assert isinstance(got, PresentedCertificate)
    assert got.source == "client-cert" and got.intermediates == (certs.mid.cert,)
    assert r.read([[], []]) is None
    with pytest.raises(ForwardedHeaderError, match="without Client-Cert"):
        r.read([[], [byte_sequence(mid).encode()]])
    with pytest.raises(ForwardedHeaderError, match="exactly one"):
        r.read([[byte_sequence(leaf).encode()] * 2, []])


def test_nginx_reader(certs: Certs) -> None:
    r = reader("nginx")
    got = r.read([[escaped_pem(certs.worker.cert).encode()]])
    assert isinstance(got, PresentedCertificate) and got.source == "nginx"
    assert r.read([[b""]]) is None
    with pytest.raises(ForwardedHeaderError, match="exactly one"):
        r.read([[escaped_pem(certs.worker.cert).encode()] * 2])


# -- trusted proxies by address ----------------------------------------------------


@pytest.mark.parametrize(
    "peer,trusted",
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("::1", True),
        ("10.2.0.1", False),
        ("192.0.2.1", False),
        ("localhost", False),
        (None, False),
    ],
    ids=[
        "loopback",
        "in-network",
        "v4-mapped",
        "v6",
        "outside",
        "elsewhere",
        "name",
        "unknown",
    ],
)
def test_trusted_proxy_addresses(peer: str | None, trusted: bool) -> None:
    import ipaddress

    proxies = TrustedProxies(
        [
            ipaddress.ip_network("127.0.0.1/32"),
            ipaddress.ip_network("10.1.0.0/16"),
            ipaddress.ip_network("::1/128"),
        ]
    )
    assert (proxies.refusal(peer, None) is None) is trusted


def test_proxy_spiffe_ids_need_a_certificate() -> None:
    import ipaddress

    with pytest.raises(ValueError, match="verifier"):
        TrustedProxies([ipaddress.ip_network("127.0.0.1/32")], spiffe_ids=[SWIM_AS])
    proxies = TrustedProxies(
        [ipaddress.ip_network("127.0.0.1/32")],
        spiffe_ids=[SWIM_AS],
        parser=CertificateParser(),
        verify_svid=lambda presented: (_ for _ in ()).throw(AssertionError()),
    )
    assert "no certificate" in (proxies.refusal("127.0.0.1", None) or "")
    assert "not a trusted proxy" in (proxies.refusal("127.0.0.2", ["x"]) or "")


def test_x509_names_unused(certs: Certs) -> None:
    # The Subject is carried but never compared (its text form varies).
    element = XfccElement(subject="CN=someone else", uri=(WORKER,))
    check_agreement(element, der(certs.worker.cert), certs.worker.cert)
    assert isinstance(certs.worker.cert, x509.Certificate)
