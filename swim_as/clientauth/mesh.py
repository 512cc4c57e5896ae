"""Mesh mode: which proxies may forward a client certificate, and what their
header says (D5; STANDARDS.md §12; RFC 9700 §4.13).

Two pieces, both used by the mesh-mode ASGI middleware:

* :class:`TrustedProxies` decides whether the peer of a connection is a
  proxy swim-as trusts: its address must be in a configured network and,
  when SPIFFE IDs are configured, the certificate it showed in its own
  handshake with swim-as must be an X.509-SVID with one of them. That
  certificate identifies the proxy; it is never taken for the client's.
* :class:`ForwardedCertificateReader` turns a trusted proxy's header into
  the same :class:`PresentedCertificate` a direct handshake produces (so it
  goes through the same X.509-SVID verification, and ``cnf.x5t#S256`` is
  the client leaf's thumbprint), or, for a validating proxy that sends an
  identity without a certificate, a :class:`ForwardedIdentity`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

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
from swim_as.clientauth.presented import (
    CertificateParser,
    ForwardedIdentity,
    PresentedCertificate,
)
from swim_as.spiffe.errors import SpiffeIdError, X509SvidError
from swim_as.spiffe.ids import SpiffeId
from swim_as.spiffe.x509svid import VerifiedX509Svid

log = logging.getLogger("swim_as.mesh")

ForwardSource = Literal["xfcc", "rfc9440", "nginx"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Verifies a presented chain as an X.509-SVID (TrustStore.verify_x509_svid).
SvidVerifier = Callable[[PresentedCertificate], VerifiedX509Svid]

CLIENT_CERT = "client-cert"
CLIENT_CERT_CHAIN = "client-cert-chain"
XFCC = "x-forwarded-client-cert"
# Every header that may carry a forwarded certificate. In mesh mode all of
# them are removed from the request before the application sees it, whoever
# sent them, so nothing downstream can mistake one for a verified value.
KNOWN_FORWARD_HEADERS = frozenset({XFCC, CLIENT_CERT, CLIENT_CERT_CHAIN})


class TrustedProxies:
    """The proxies whose forwarded-certificate headers swim-as honours."""

    def __init__(
        self,
        networks: Iterable[IpNetwork],
        *,
        spiffe_ids: Iterable[str] = (),
        parser: CertificateParser | None = None,
        verify_svid: SvidVerifier | None = None,
    ) -> None:
        self._networks = tuple(networks)
        self._spiffe_ids = frozenset(spiffe_ids)
        if self._spiffe_ids and (parser is None or verify_svid is None):
            raise ValueError("proxy SPIFFE IDs need a parser and an SVID verifier")
        self._parser = parser
        self._verify_svid = verify_svid
        self._addresses: OrderedDict[str, bool] = OrderedDict()

    def refusal(
        self, peer_host: str | None, tls_chain: Sequence[str] | None
    ) -> str | None:
        """Why this peer is not a trusted proxy, or ``None`` if it is.

        ``tls_chain`` is the PEM chain the peer sent in its handshake with
        swim-as (the ASGI TLS extension), if any.
        """
        if peer_host is None:
            return "no peer address"
        if not self._address_trusted(peer_host):
            return f"address {peer_host} is not a trusted proxy"
        if not self._spiffe_ids:
            return None
        if not tls_chain:
            return "the peer showed no certificate, and proxy SPIFFE IDs are required"
        assert self._parser is not None and self._verify_svid is not None
        try:
            presented = self._parser.from_pem_chain(tuple(tls_chain), "tls")
            spiffe_id = str(self._verify_svid(presented).spiffe_id)
        except (ValueError, X509SvidError) as err:
            return f"the peer's certificate is not a valid X.509-SVID: {err}"
        if spiffe_id not in self._spiffe_ids:
            return f"the peer's SPIFFE ID {spiffe_id!r} is not a trusted proxy"
        return None

    def _address_trusted(self, host: str) -> bool:
        known = self._addresses.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            trusted = False
        else:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            trusted = any(address in network for network in self._networks)
        self._addresses[host] = trusted
        if len(self._addresses) > 1024:
            self._addresses.popitem(last=False)
        return trusted


@dataclass(frozen=True, slots=True)
class ForwardOptions:
    """How the trusted proxy forwards, from ``[mesh]``."""

    source: ForwardSource
    header: str
    expected_by: str | None = None
    proxy_validates: bool = False
    limits: HeaderLimits = HeaderLimits()


Forwarded = PresentedCertificate | ForwardedIdentity


class ForwardedCertificateReader:
    """Reads a trusted proxy's header into what the routes use.

    Results are remembered per header value: behind a sidecar every request
    of a keep-alive connection repeats the same header.
    """

    def __init__(
        self, options: ForwardOptions, parser: CertificateParser, cache_size: int = 256
    ) -> None:
        self.options = options
        self._parser = parser
        self._cache: OrderedDict[tuple[tuple[bytes, ...], ...], Forwarded | None] = (
            OrderedDict()
        )
        self._cache_size = cache_size
        if options.source == "rfc9440":
            self.header_names: tuple[str, ...] = (CLIENT_CERT, CLIENT_CERT_CHAIN)
        else:
            self.header_names = (options.header,)

    def read(self, values: Sequence[Sequence[bytes]]) -> Forwarded | None:
        """Decode the headers, one sequence of lines per name in
        :attr:`header_names`.

        Returns ``None`` when the proxy forwarded no client certificate.

        Raises:
            ForwardedHeaderError: malformed, oversized, contradictory, an
                identity without a certificate from a proxy that is not
                marked as validating, or an unexpected ``By``.
        """
        key = tuple(tuple(lines) for lines in values)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        source = self.options.source
        if source == "xfcc":
            result = self._from_xfcc(values[0])
        elif source == "rfc9440":
            result = self._from_rfc9440(values[0], values[1])
        else:
            result = self._from_nginx(values[0])
        self._cache[key] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def _from_xfcc(self, lines: Sequence[bytes]) -> Forwarded | None:
        limits = self.options.limits
        if not lines:
            return None
        elements = parse_xfcc(header_text(lines, "XFCC", limits), limits)
        # Only the last element was appended by the proxy swim-as trusts;
        # earlier ones came from hops (or clients) before it.
        element = elements[-1]
        if len(elements) > 1:
            log.debug(
                "XFCC with %d elements: using the last",
                len(elements),
                extra={"event": "mesh.xfcc_elements", "elements": len(elements)},
            )
        self._check_by(element)
        chain = xfcc_chain(element, limits)
        if not chain:
            return self._identity_only(element)
        presented = self._presented(chain, "xfcc")
        check_agreement(element, chain[0], presented.leaf)
        return presented

    def _check_by(self, element: XfccElement) -> None:
        expected = self.options.expected_by
        if expected is not None and expected not in element.by:
            shown = ", ".join(repr(b[:200]) for b in element.by) or "none"
            raise ForwardedHeaderError(
                f"XFCC: 'By' is {shown}, not swim-as's identity {expected!r}"
            )

    def _identity_only(self, element: XfccElement) -> ForwardedIdentity:
        if not element.uri:
            raise ForwardedHeaderError(
                "XFCC: the element has neither a certificate nor a URI"
            )
        if not self.options.proxy_validates:
            raise ForwardedHeaderError(
                "XFCC: identity without a certificate, and the proxy is not "
                "marked as validating (mesh.proxy_validates)"
            )
        if len(element.uri) != 1:
            raise ForwardedHeaderError(
                f"XFCC: {len(element.uri)} URIs; an identity needs exactly one"
            )
        try:
            spiffe_id = SpiffeId.parse(element.uri[0])
        except SpiffeIdError as err:
            raise ForwardedHeaderError(
                f"XFCC: 'URI' is not a SPIFFE ID: {err}"
            ) from err
        return ForwardedIdentity(
            spiffe_id=str(spiffe_id), source="xfcc", sha256_hex=element.hash
        )

    def _from_rfc9440(
        self, leaf_lines: Sequence[bytes], chain_lines: Sequence[bytes]
    ) -> PresentedCertificate | None:
        limits = self.options.limits
        if not leaf_lines:
            if chain_lines:
                raise ForwardedHeaderError(
                    "Client-Cert-Chain without Client-Cert (RFC 9440 §2.3)"
                )
            return None
        if len(leaf_lines) != 1:
            raise ForwardedHeaderError(
                f"Client-Cert sent {len(leaf_lines)} times; exactly one expected"
            )
        leaf = parse_client_cert(header_text(leaf_lines, "Client-Cert", limits))
        rest: tuple[bytes, ...] = ()
        if chain_lines:
            rest = parse_client_cert_chain(
                header_text(chain_lines, "Client-Cert-Chain", limits), limits
            )
        return self._presented((leaf, *rest), "client-cert")

    def _from_nginx(self, lines: Sequence[bytes]) -> PresentedCertificate | None:
        name = self.options.header
        if not lines or (len(lines) == 1 and not lines[0].strip()):
            # nginx sends an empty value when the client showed no certificate.
            return None
        if len(lines) != 1:
            raise ForwardedHeaderError(
                f"{name} sent {len(lines)} times; exactly one expected"
            )
        text = header_text(lines, name, self.options.limits)
        return self._presented((parse_escaped_pem(text, name),), "nginx")

    def _presented(
        self, chain: tuple[bytes, ...], source: Literal["xfcc", "client-cert", "nginx"]
    ) -> PresentedCertificate:
        # The proxy terminated the client's handshake, so possession of the
        # key was proven to it: the certificate counts as proven here.
        try:
            return self._parser.from_der_chain(chain, source, proven=True)
        except ValueError as err:
            raise ForwardedHeaderError(
                f"{source}: a forwarded certificate does not parse: {err}"
            ) from err
