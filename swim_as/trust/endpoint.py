"""Bundles fetched from a SPIFFE bundle endpoint (SPIFFE Federation §4-§5, D3).

The endpoint is configured per trust domain, never learnt from a client
(D3): URL, profile and, for ``https_spiffe``, the SPIFFE ID the endpoint must
present. Every fetch:

- is one HTTPS GET with TLS verification always on, a time limit on the
  whole exchange (connect, headers and body, redirects included) and a
  limit on the body size; no proxy from the environment is used;
- follows at most three temporary redirects (302, 303, 307), each to an
  ``https`` URL without userinfo and checked like the first (§5.2.1; the
  target is never remembered); any other redirect, and any redirect to
  ``http``, is refused;
- must return 200 with a SPIFFE bundle (JSON); its ``spiffe_sequence``
  orders it against the bundle in force (through :class:`BundleUpdates`).

``https_web`` (§5.2.1) verifies the server's certificate and host name with
the system trust store, or the CA file configured for the endpoint.

``https_spiffe`` (§5.2.2): Python's ``ssl`` has no certificate verification
callback, so the check is done in two steps. The handshake verifies the
server's chain against the X.509 authorities of the endpoint SPIFFE ID's
trust domain only (no host name check, the system store never loaded), so
nothing else completes a handshake. Then, before the response is read, the
chain the server sent is verified again as an X.509-SVID with swim-as's own
verifier (SPIFFE X509-SVID §5, at the injected clock), and its SPIFFE ID
must equal the configured one; otherwise the response is dropped unread.
The request itself carries nothing secret. The authorities used are the
latest bundle held for that trust domain: first the operator's bootstrap
bundle (``bundle_file``), then each bundle fetched, even one past its
maximum age, so that an endpoint that was down can be reached again.

The next fetch is due after the bundle's ``spiffe_refresh_hint`` (300 s
without one), clamped to [5 s, 3600 s] and to a quarter of the trust
domain's maximum age, so several attempts fall inside it. After a failure
the next attempt comes sooner: 5 s, doubling, never later than the normal
interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from swim_as.clock import Clock
from swim_as.spiffe.bundle import X509Bundle, parse_bundle
from swim_as.spiffe.errors import BundleError, SpiffeError
from swim_as.spiffe.ids import SpiffeId, TrustDomain
from swim_as.spiffe.x509svid import verify_x509_svid
from swim_as.tls import CLIENT_VERIFY_FLAGS, client_chain_der
from swim_as.trust.files import read_bundle_files
from swim_as.trust.updates import BundleUpdates

log = logging.getLogger("swim_as.trust")

Profile = Literal["https_web", "https_spiffe"]

DEFAULT_REFRESH_SECONDS = 300.0
MIN_REFRESH_SECONDS = 5.0
MAX_REFRESH_SECONDS = 3600.0
FIRST_RETRY_SECONDS = 5.0
MAX_REDIRECTS = 3
_TEMPORARY_REDIRECTS = frozenset({302, 303, 307})


class EndpointFailure(Exception):
    """One fetch failed; ``reason`` is a short stable label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """How to reach and authenticate one bundle endpoint (Federation §5.1)."""

    url: str
    profile: Profile
    spiffe_id: SpiffeId | None = None
    ca_file: Path | None = None
    timeout: float = 10.0
    max_bytes: int = 1024 * 1024


def check_url(url: str) -> str:
    """An endpoint URL must be ``https`` with a host and no userinfo.

    Raises:
        ValueError: it is not.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"bundle endpoint URL must be an https URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("bundle endpoint URL must not carry userinfo")
    if parts.fragment:
        raise ValueError("bundle endpoint URL must not have a fragment")
    return url


class BundleEndpointSource:
    """Polls one trust domain's bundle endpoint."""

    def __init__(
        self,
        trust_domain: TrustDomain,
        config: EndpointConfig,
        updates: BundleUpdates,
        clock: Clock,
        *,
        bootstrap_file: Path | None = None,
    ) -> None:
        if config.profile == "https_spiffe" and config.spiffe_id is None:
            raise ValueError("https_spiffe needs the endpoint's SPIFFE ID")
        self.trust_domain = trust_domain
        self.config = config
        self.updates = updates
        self.clock = clock
        self.bootstrap_file = bootstrap_file
        self.failures = 0

    @property
    def origin(self) -> str:
        return self.config.url

    def load_initial(self) -> None:
        """Install the operator's bootstrap bundle, if one is configured.

        Raises:
            BundleError: the bootstrap file is missing or invalid.
        """
        if self.bootstrap_file is None:
            return
        x509_bundle, jwt_bundle = read_bundle_files(
            self.trust_domain, self.bootstrap_file, None
        )
        self.updates.apply(
            self.trust_domain,
            x509=x509_bundle,
            jwt=jwt_bundle,
            origin=str(self.bootstrap_file),
        )

    async def refresh(self) -> bool:
        """Fetch the bundle once; apply it or refuse it. True on success."""
        try:
            body = await self._fetch()
            if not body.lstrip().startswith(b"{"):
                raise EndpointFailure(
                    "format", "the response is not a SPIFFE bundle (JSON)"
                )
            x509_bundle, jwt_bundle = parse_bundle(body, self.trust_domain)
        except EndpointFailure as err:
            return self._failed(err.reason, str(err))
        except BundleError as err:
            return self._failed(err.reason, str(err))
        accepted = self.updates.apply(
            self.trust_domain, x509=x509_bundle, jwt=jwt_bundle, origin=self.origin
        )
        state = self.updates.store.state(self.trust_domain)
        if not accepted and state is not None and state.failures:
            self.failures += 1  # refused (a lower spiffe_sequence)
            return False
        self.failures = 0
        return True

    def _failed(self, reason: str, message: str) -> bool:
        self.failures += 1
        self.updates.refuse(self.trust_domain, reason, message, origin=self.origin)
        return False

    def interval(self) -> float:
        """Seconds until the next regular fetch."""
        state = self.updates.store.state(self.trust_domain)
        hint: float | None = None
        if state is not None:
            for bundle in (state.x509, state.jwt):
                if bundle is not None and bundle.refresh_hint is not None:
                    hint = float(bundle.refresh_hint)
                    break
        seconds = min(
            max(hint if hint is not None else DEFAULT_REFRESH_SECONDS, 0.0),
            MAX_REFRESH_SECONDS,
        )
        if state is not None and state.max_age is not None:
            seconds = min(seconds, state.max_age / 4)
        return max(seconds, MIN_REFRESH_SECONDS)

    def next_delay(self) -> float:
        """Seconds until the next attempt, shorter after failures."""
        regular = self.interval()
        if not self.failures:
            return regular
        backoff = FIRST_RETRY_SECONDS * float(2 ** min(self.failures - 1, 10))
        return min(backoff, regular)

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: fetch at the refresh hint until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.next_delay())
            if stop.is_set():
                return
            try:
                await self.refresh()
            except Exception as err:  # never let the task die
                log.exception(
                    "bundle endpoint refresh crashed",
                    extra={"event": "bundle.refresh_crashed", "origin": self.origin},
                )
                self._failed("internal", f"unexpected error: {type(err).__name__}")

    # -- one fetch ---------------------------------------------------------

    async def _fetch(self) -> bytes:
        try:
            async with asyncio.timeout(self.config.timeout):
                return await self._fetch_following()
        except TimeoutError as err:
            raise EndpointFailure(
                "timeout", f"no complete answer within {self.config.timeout:g} s"
            ) from err
        except httpx.TimeoutException as err:
            raise EndpointFailure(
                "timeout", f"no complete answer within {self.config.timeout:g} s"
            ) from err
        except httpx.HTTPError as err:
            raise EndpointFailure("transport", _describe(err)) from err
        except (OSError, ssl.SSLError) as err:
            raise EndpointFailure("transport", _describe(err)) from err

    async def _fetch_following(self) -> bytes:
        url = self.config.url
        for _ in range(MAX_REDIRECTS + 1):
            context = self._ssl_context()
            async with (
                httpx.AsyncClient(
                    verify=context,
                    trust_env=False,
                    follow_redirects=False,
                    timeout=httpx.Timeout(self.config.timeout),
                ) as client,
                client.stream(
                    "GET", url, headers={"Accept": "application/json"}
                ) as response,
            ):
                if self.config.profile == "https_spiffe":
                    self._check_peer(response)
                if response.status_code in _TEMPORARY_REDIRECTS:
                    url = self._redirect_target(url, response)
                    continue
                if response.status_code != 200:
                    raise EndpointFailure(
                        "http_status",
                        f"HTTP {response.status_code} from {_show_url(url)}",
                    )
                return await self._read_limited(response)
        raise EndpointFailure("redirect", f"more than {MAX_REDIRECTS} redirects")

    def _redirect_target(self, url: str, response: httpx.Response) -> str:
        location = response.headers.get("location")
        if not location:
            raise EndpointFailure("redirect", "a redirect without a Location")
        target = urljoin(url, location)
        try:
            return check_url(target)
        except ValueError as err:
            raise EndpointFailure(
                "redirect", f"redirect to {_show_url(target)} refused: {err}"
            ) from err

    async def _read_limited(self, response: httpx.Response) -> bytes:
        limit = self.config.max_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise EndpointFailure(
                "too_large", f"the bundle is {declared} bytes, more than {limit}"
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise EndpointFailure(
                    "too_large", f"the bundle is more than {limit} bytes"
                )
        return bytes(body)

    def _ssl_context(self) -> ssl.SSLContext:
        if self.config.profile == "https_web":
            # Web PKI: the system store, or the operator's CA file; host
            # names checked (RFC 6125).
            context = ssl.create_default_context(
                cafile=str(self.config.ca_file) if self.config.ca_file else None
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            return context
        authorities = self._endpoint_authorities()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The SVID names the endpoint, not a DNS name; it is checked after
        # the handshake (see the module docstring).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        # As for client certificates: bundle authorities are anchors on
        # their own, and validity dates are checked by the SVID verifier at
        # the injected clock.
        context.verify_flags = CLIENT_VERIFY_FLAGS
        context.load_verify_locations(
            cadata=b"".join(c.public_bytes(Encoding.DER) for c in authorities)
        )
        return context

    def _endpoint_authorities(self) -> tuple[x509.Certificate, ...]:
        assert self.config.spiffe_id is not None
        td = self.config.spiffe_id.trust_domain
        bundle = self.updates.store.last_known_x509_bundle(td)
        if bundle is None or not bundle.authorities:
            raise EndpointFailure(
                "no_bundle",
                f"no X.509 bundle of {td.name} to authenticate the endpoint with",
            )
        return bundle.authorities

    def _check_peer(self, response: httpx.Response) -> None:
        """Verify the endpoint's X.509-SVID and its SPIFFE ID (§5.2.2)."""
        assert self.config.spiffe_id is not None
        expected = self.config.spiffe_id
        stream = response.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream else None
        chain = client_chain_der(ssl_object) if ssl_object is not None else ()
        if not chain:
            raise EndpointFailure("spiffe_id", "the endpoint sent no certificate")
        certificates = [x509.load_der_x509_certificate(der) for der in chain]

        def bundle_for(td: TrustDomain) -> X509Bundle | None:
            # Only the endpoint SPIFFE ID's own trust domain can vouch for it.
            if td != expected.trust_domain:
                return None
            return self.updates.store.last_known_x509_bundle(td)

        try:
            svid = verify_x509_svid(
                certificates[0], tuple(certificates[1:]), bundle_for, self.clock.now()
            )
        except SpiffeError as err:
            raise EndpointFailure(
                "spiffe_id", f"the endpoint's certificate is not accepted: {err}"
            ) from err
        if svid.spiffe_id != expected:
            raise EndpointFailure(
                "spiffe_id",
                f"the endpoint presented {svid.spiffe_id}, expected {expected}",
            )


def _show_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    cause = err.__cause__ or err.__context__
    if isinstance(cause, ssl.SSLError) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text[:300]
