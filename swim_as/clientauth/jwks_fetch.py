"""Fetching a client's ``jwks_uri`` without letting it reach into the network.

A ``jwks_uri`` is chosen by whoever registers the client, so fetching it is
a request swim-as makes on someone else's behalf (server-side request
forgery, RFC 9700 §4.15-adjacent; D13). The rules:

- https only, with a host, without userinfo or fragment;
- the host is resolved here, every address it resolves to is checked, and
  the connection goes to a checked address itself (the name still serves
  for SNI, certificate verification and ``Host``), so a name cannot resolve
  to a public address for the check and to an internal one for the
  connection (DNS rebinding);
- refused: loopback, link-local, private (RFC 1918, RFC 4193), shared
  (RFC 6598), unspecified, multicast and other non-public addresses, unless
  the operator allowed their network (``client_auth.jwks_uri_allowed_networks``);
  cloud metadata addresses, unspecified and multicast are refused even then;
- no redirects, no proxies from the environment, a time limit on the whole
  fetch and a size limit on the body;
- the check runs at registration and again at every fetch, since a name
  can resolve differently later.

Fetched documents are cached for ``jwks_uri_cache_seconds``; a failure is
remembered for the refresh interval, so a broken ``jwks_uri`` is not
fetched on every request, and no stale document outlives its cache time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import ssl
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx

from swim_as.clock import Clock

log = logging.getLogger("swim_as.clientauth")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata and platform services of the large clouds. Most sit in
# link-local or unique-local space anyway; they are listed so that allowing
# such a network never opens them.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer (a public address)
    )
)
MAX_CACHED = 1024


class DestinationRefused(ValueError):
    """The URL, or an address its host resolves to, is not allowed.

    ``str(err)`` is short and safe to send as an ``error_description``.
    """


class FetchFailed(Exception):
    """The document could not be fetched or is not JSON."""


class _Unreachable(FetchFailed):
    """No connection to one address (the next one may work)."""


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses a ``jwks_uri`` may lead to."""

    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, networks: list[str]) -> AddressPolicy:
        return cls(tuple(ipaddress.ip_network(n) for n in networks))

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or ``None`` when it is allowed."""
        if isinstance(address, ipaddress.IPv6Address):
            # An IPv4 address in IPv6 clothing is judged as the IPv4 one:
            # mapped (::ffff:0:0/96), 6to4, NAT64 (RFC 6052, where a
            # translator reaches the IPv4 address, private ones included)
            # and the deprecated IPv4-compatible form (::/96).
            embedded = address.ipv4_mapped or address.sixtofour
            packed = int(address)
            if embedded is None and address in _NAT64_WELL_KNOWN:
                embedded = ipaddress.IPv4Address(packed & 0xFFFFFFFF)
            if embedded is None and packed >> 32 == 0 and packed > 1:
                embedded = ipaddress.IPv4Address(packed)
            if embedded is not None:
                return self.refusal(embedded)
            if address.teredo is not None:
                return "a tunnelled"
            if address in _NAT64_LOCAL or address.is_site_local:
                return "a non-public"
        if address in METADATA_ADDRESSES:
            return "a cloud metadata"
        if address.is_unspecified:
            return "an unspecified"
        if address.is_multicast:
            return "a multicast"
        if any(address in network for network in self.allowed_networks):
            return None
        if address.is_loopback:
            return "a loopback"
        if address.is_link_local:
            return "a link-local"
        if address.is_private:
            return "a private"
        if not address.is_global:
            return "a non-public"
        return None


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 8215: local-use translation prefix, may reach any IPv4 network.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def check_url(url: str, policy: AddressPolicy) -> SplitResult:
    """The URL rules that need no DNS (D13: checked at registration).

    Raises:
        DestinationRefused: not https, no host, userinfo, a fragment, or a
            literal address the policy refuses.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise DestinationRefused("jwks_uri is not a valid URL") from err
    if parts.scheme != "https" or not parts.hostname:
        raise DestinationRefused("jwks_uri must be an https URL")
    if "@" in parts.netloc:
        raise DestinationRefused("jwks_uri must not carry userinfo")
    if parts.fragment or "#" in url:
        raise DestinationRefused("jwks_uri must not have a fragment")
    if port == 0:
        raise DestinationRefused("jwks_uri has an invalid port")
    literal = _literal(parts.hostname)
    if literal is not None:
        reason = policy.refusal(literal)
        if reason is not None:
            raise DestinationRefused(f"jwks_uri names {reason} address")
    return parts


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass
class _Entry:
    fetched_at: float
    document: object | None = None
    error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JwksFetcher:
    """Fetches and caches ``jwks_uri`` documents under the rules above."""

    def __init__(
        self,
        policy: AddressPolicy,
        clock: Clock,
        *,
        timeout: float = 5.0,
        max_bytes: int = 65536,
        cache_seconds: float = 300.0,
        retry_seconds: float = 30.0,
        ca_file: Path | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._cache_seconds = cache_seconds
        self._retry_seconds = retry_seconds
        self._ca_file = ca_file
        self._ssl: ssl.SSLContext | None = None
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # Counts fetches that reached the network, for tests and operators.
        self.fetches = 0

    async def check_destination(self, url: str) -> None:
        """The full check, DNS included, without fetching (registration).

        Raises:
            DestinationRefused: the URL or one of its addresses is refused.
        """
        parts = check_url(url, self.policy)
        assert parts.hostname is not None
        await self._resolve(parts.hostname, parts.port or 443)

    async def get(self, url: str, *, refresh: bool = False) -> object:
        """The parsed JSON document at ``url``, from the cache when fresh.

        ``refresh`` asks for a new fetch (an unknown ``kid``); it is honoured
        at most once per retry interval.

        Raises:
            DestinationRefused: the destination is not allowed.
            FetchFailed: the fetch failed now or within the retry interval.
        """
        entry = self._entries.get(url)
        if entry is None:
            entry = _Entry(fetched_at=float("-inf"))
            self._entries[url] = entry
            if len(self._entries) > MAX_CACHED:
                self._entries.popitem(last=False)
        self._entries.move_to_end(url)
        async with entry.lock:
            now = self._clock.time()
            age = now - entry.fetched_at
            if entry.error is None and entry.document is not None:
                if age < self._cache_seconds and not (
                    refresh and age >= self._retry_seconds
                ):
                    return entry.document
            elif entry.error is not None and age < self._retry_seconds:
                raise FetchFailed(entry.error)
            try:
                document = await self._fetch(url)
            except (FetchFailed, DestinationRefused) as err:
                entry.fetched_at, entry.document, entry.error = now, None, str(err)
                log.warning(
                    "jwks_uri fetch failed",
                    extra={"event": "client_keys.fetch_failed", "reason": str(err)},
                )
                raise
            entry.fetched_at, entry.document, entry.error = now, document, None
            return document

    async def _fetch(self, url: str) -> object:
        parts = check_url(url, self.policy)
        host = parts.hostname
        assert host is not None
        port = parts.port or 443
        try:
            async with asyncio.timeout(self._timeout):
                addresses = await self._resolve(host, port)
                body = await self._download_any(parts, host, port, addresses)
        except TimeoutError as err:
            raise FetchFailed(
                f"{_shown(url)}: no answer within {self._timeout} s"
            ) from err
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as err:
            raise FetchFailed(f"{_shown(url)}: the body is not JSON") from err

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of ``host``, each allowed by the policy.

        Raises:
            DestinationRefused: an address is refused, or none is found.
        """
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            except OSError as err:
                raise DestinationRefused("jwks_uri host does not resolve") from err
            addresses = list(
                dict.fromkeys(
                    ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                    for info in infos
                )
            )
        if not addresses:
            raise DestinationRefused("jwks_uri host does not resolve")
        for address in addresses:
            reason = self.policy.refusal(address)
            if reason is not None:
                log.warning(
                    "jwks_uri refused",
                    extra={
                        "event": "client_keys.destination_refused",
                        "host": host[:253],
                        "address": str(address),
                        "reason": reason,
                    },
                )
                raise DestinationRefused(f"jwks_uri resolves to {reason} address")
        return addresses

    async def _download_any(
        self, parts: SplitResult, host: str, port: int, addresses: list[IPAddress]
    ) -> bytes:
        """Try the checked addresses in order until one connects."""
        failure: FetchFailed | None = None
        for address in addresses:
            try:
                return await self._download(parts, host, port, address)
            except _Unreachable as err:
                failure = err
        assert failure is not None
        raise failure

    async def _download(
        self, parts: SplitResult, host: str, port: int, address: IPAddress
    ) -> bytes:
        shown = f"[{address}]" if address.version == 6 else str(address)
        target = urlunsplit(
            ("https", f"{shown}:{port}", parts.path or "/", parts.query, "")
        )
        netloc = host if port == 443 else f"{host}:{port}"
        if ":" in host:
            netloc = f"[{host}]" if port == 443 else f"[{host}]:{port}"
        self.fetches += 1
        try:
            async with (
                httpx.AsyncClient(
                    verify=self._context(),
                    trust_env=False,
                    follow_redirects=False,
                    timeout=self._timeout,
                ) as client,
                client.stream(
                    "GET",
                    target,
                    headers={
                        "host": netloc,
                        "accept": "application/jwk-set+json, application/json",
                    },
                    extensions={"sni_hostname": host},
                ) as response,
            ):
                if response.status_code != 200:
                    raise FetchFailed(
                        f"{host}: status {response.status_code} (redirects are "
                        "not followed)"
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_bytes:
                    raise FetchFailed(f"{host}: body over {self._max_bytes} bytes")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise FetchFailed(f"{host}: body over {self._max_bytes} bytes")
                return bytes(body)
        except httpx.ConnectError as err:
            raise _Unreachable(f"{host}: ConnectError: {err}"[:300]) from err
        except httpx.HTTPError as err:
            raise FetchFailed(f"{host}: {type(err).__name__}: {err}"[:300]) from err

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            try:
                self._ssl = ssl.create_default_context(
                    cafile=str(self._ca_file) if self._ca_file else None
                )
            except (OSError, ssl.SSLError) as err:
                raise FetchFailed(
                    f"client_auth.jwks_uri_ca_file cannot be used: {err}"
                ) from err
        return self._ssl


def _shown(url: str) -> str:
    return repr(url[:200])
