"""The application factory: settings in, ASGI application out.

:func:`create_app` wires the services from one :class:`Settings` value; no
module keeps global state. Start-up work (loading bundles and keys, listening
for changes) runs in the lifespan, so importing swim-as never touches the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from cryptography import x509
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from swim_as.clientauth.authenticate import ClientAuthenticator, MissingClientHook
from swim_as.clientauth.base import Credential, Finder, MethodAuthenticator
from swim_as.clientauth.client_keys import ClientKeys
from swim_as.clientauth.client_secret import ClientSecretAuthenticator
from swim_as.clientauth.forwarded import HeaderLimits
from swim_as.clientauth.forwarded_identity import authenticate_forwarded_identity
from swim_as.clientauth.jwk import ASYMMETRIC_ALGORITHMS
from swim_as.clientauth.jwks_fetch import (
    AddressPolicy,
    DestinationRefused,
    JwksFetcher,
    check_url,
)
from swim_as.clientauth.mesh import (
    ForwardedCertificateReader,
    ForwardOptions,
    TrustedProxies,
)
from swim_as.clientauth.presented import CertificateParser, PresentedCertificate
from swim_as.clientauth.private_key_jwt import PrivateKeyJwtAuthenticator
from swim_as.clientauth.self_signed import (
    SelfSignedAuthenticator,
    SelfSignedCertificates,
)
from swim_as.clientauth.spiffe_jwt import SpiffeJwtAuthenticator
from swim_as.clientauth.x509 import X509_SVID_METHODS, X509SvidAuthenticator
from swim_as.clients.directory import ClientDirectory, WildcardDirectory
from swim_as.clients.metadata import SECRET_METHODS
from swim_as.clients.model import (
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_POST,
    PRIVATE_KEY_JWT,
    SELF_SIGNED_TLS_CLIENT_AUTH,
    SPIFFE_JWT,
)
from swim_as.clients.registration import ManagementService, RegistrationService
from swim_as.clock import Clock, SystemClock
from swim_as.errors import (
    InvalidClientMetadata,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
)
from swim_as.grants.client_credentials import ClientCredentialsGrant
from swim_as.http.discovery import (
    JWKS_PATH,
    METADATA_PATH,
    OPENID_PATH,
    REGISTER_PATH,
    TOKEN_PATH,
    DiscoveryRoutes,
    build_metadata,
)
from swim_as.http.middleware import (
    ForwardedCertificateMiddleware,
    PresentedCertificateMiddleware,
)
from swim_as.http.register import RegistrationRoutes
from swim_as.http.responses import error_parts, log_refusal
from swim_as.http.token import TokenEndpoint
from swim_as.keys.crypto import KeyDecryptionError
from swim_as.keys.keyring import Keyring, KeyRotator, RotationPolicy, follow_keys
from swim_as.lifecycle import SEEN_TASK, Lifecycle, build_lifecycle, start_lifecycle
from swim_as.observability.audit import AuditBuffer
from swim_as.serving_cert import ServingCertificate
from swim_as.settings import FORWARDED_SOURCES, KEY_RELOAD_SECONDS, Settings
from swim_as.spiffe.ids import TrustDomain
from swim_as.spiffe.jwtsvid import ALGORITHMS as JWT_SVID_ALGORITHMS
from swim_as.spiffe.x509svid import VerifiedX509Svid
from swim_as.storage.assertions import SqlAssertionLog
from swim_as.storage.clients import SqlClientRepository
from swim_as.storage.db import Database
from swim_as.tokens.minter import TokenMinter
from swim_as.trust.refresh import JwtBundleRefresher
from swim_as.trust.sources import TrustSources, build_trust_sources
from swim_as.trust.store import TrustStore

log = logging.getLogger("swim_as.app")

# How often keys are re-read even without a notification (D11 bound).
KEY_POLL_SECONDS = float(KEY_RELOAD_SECONDS)
# How often rows of expired private_key_jwt assertions are deleted.
ASSERTION_PURGE_SECONDS = 60.0
# The order JWS algorithms are listed in discovery.
_ALG_ORDER = (
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
    "RS256",
    "RS384",
    "RS512",
    "EdDSA",
)


class HandshakeTrust(Protocol):
    """The TLS layer's view: the serving certificate and which client CAs
    new handshakes accept (:class:`swim_as.tls.TlsContextManager`)."""

    def update(
        self,
        *,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        client_authorities: Sequence[x509.Certificate] | None = None,
    ) -> None: ...


class HandshakeStore:
    """Everything a client certificate may chain to in the handshake.

    The roots of every trust domain and every registered self-signed client
    certificate (RFC 8705 §2.2); the handshake only pre-filters, each
    method verifies again. :meth:`push` hands a new list to the TLS layer.
    """

    def __init__(self, trust: TrustStore) -> None:
        self._trust = trust
        self._extra: list[Callable[[], list[x509.Certificate]]] = []
        self._push: Callable[[], None] | None = None

    def include(self, certificates: Callable[[], list[x509.Certificate]]) -> None:
        """Add a source of client certificates accepted as they are."""
        self._extra.append(certificates)

    def authorities(self) -> list[x509.Certificate]:
        """Trust-domain authorities plus certificates accepted as they are."""
        authorities = self._trust.x509_authorities()
        for source in self._extra:
            authorities.extend(source())
        return authorities

    def attach(self, tls: HandshakeTrust, serving: ServingCertificate | None) -> None:
        """Send future lists to ``tls``; through the serving certificate's
        follower when there is one, which hands both to the TLS layer."""
        if serving is not None:
            serving.attach(tls, self.authorities)
            self._push = serving.push_authorities
        else:
            self._push = lambda: tls.update(client_authorities=self.authorities())

    def push(self) -> None:
        if self._push is not None:
            self._push()


@dataclass
class Services:
    """Every long-lived object of one process, wired once."""

    settings: Settings
    clock: Clock
    db: Database
    trust: TrustStore
    trust_sources: TrustSources
    keyring: Keyring
    rotator: KeyRotator
    clients: SqlClientRepository
    directory: ClientDirectory
    authenticator: ClientAuthenticator
    registration: RegistrationService
    management: ManagementService
    audit: AuditBuffer
    parser: CertificateParser
    metadata: dict[str, Any]
    wildcards: WildcardDirectory
    jwt_refresher: JwtBundleRefresher
    fetcher: JwksFetcher
    self_signed: SelfSignedCertificates
    handshake: HandshakeStore
    assertions: SqlAssertionLog
    lifecycle: Lifecycle
    serving_cert: ServingCertificate | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by key change notifications; the key follower reloads once per set.
    key_changes: asyncio.Event = field(default_factory=asyncio.Event)


def rotation_policy(settings: Settings) -> RotationPolicy:
    keys = settings.keys
    return RotationPolicy(
        algorithm=keys.algorithm,
        publish_lead=timedelta(seconds=keys.publish_lead_seconds),
        retain=timedelta(seconds=keys.retain_seconds(settings.tokens.lifetime_seconds)),
        rotate_every=(
            timedelta(seconds=keys.rotate_every_seconds)
            if keys.rotate_every_seconds
            else None
        ),
    )


def build_services(settings: Settings, *, clock: Clock | None = None) -> Services:
    """Construct the services; nothing runs until :func:`start` is awaited."""
    clock = clock or SystemClock()
    auth = settings.client_auth
    db = Database(
        settings.database.url,
        pool_size=settings.database.pool_size,
        echo=settings.database.echo,
    )
    trust = TrustStore(clock)
    audit = AuditBuffer(db, clock)
    trust_sources = build_trust_sources(settings, trust, audit, clock)
    refresher = JwtBundleRefresher(
        trust,
        trust_sources.reloaders(),
        clock,
        interval=auth.key_refresh_interval_seconds,
    )
    kek = settings.keys.load_kek()
    keyring = Keyring(db, kek, clock, audit=audit)
    rotator = KeyRotator(db, kek, clock, rotation_policy(settings))
    repository = SqlClientRepository(db)
    directory = ClientDirectory(repository, clock, watched=lambda: db.listening)
    db.subscribe(directory.on_change)
    wildcards = WildcardDirectory(repository, clock, watched=lambda: db.listening)
    db.subscribe(wildcards.on_change)
    fetcher = JwksFetcher(
        AddressPolicy.from_strings(auth.jwks_uri_allowed_networks),
        clock,
        timeout=auth.jwks_uri_timeout_seconds,
        max_bytes=auth.jwks_uri_max_bytes,
        cache_seconds=auth.jwks_uri_cache_seconds,
        retry_seconds=auth.key_refresh_interval_seconds,
        ca_file=auth.jwks_uri_ca_file,
    )
    client_keys = ClientKeys(fetcher)
    assertions = SqlAssertionLog(db)
    handshake = HandshakeStore(trust)
    self_signed = SelfSignedCertificates(
        repository,
        client_keys,
        on_change=handshake.push,
        refresh_seconds=auth.jwks_uri_cache_seconds,
    )
    if SELF_SIGNED_TLS_CLIENT_AUTH in auth.methods:
        handshake.include(self_signed.certificates)
        db.subscribe(self_signed.on_change)

    check_jwks_uri, check_destination = _jwks_uri_checks(fetcher)
    registration = RegistrationService(
        db,
        repository,
        clock,
        issuer=settings.issuer,
        enabled_methods=frozenset(enabled_methods(settings)),
        self_registration=settings.registration.self_registration,
        check_jwks_uri=check_jwks_uri,
        check_destination=check_destination,
    )
    lifecycle = build_lifecycle(
        settings,
        db=db,
        clock=clock,
        repository=repository,
        registration=registration,
        lookup=directory.get,
    )
    authenticator = _client_authenticator(
        settings,
        clock,
        trust,
        directory,
        wildcards,
        refresher,
        client_keys,
        assertions,
        audit,
        on_missing_client=lifecycle.jit,
    )
    return Services(
        settings=settings,
        clock=clock,
        db=db,
        trust=trust,
        trust_sources=trust_sources,
        keyring=keyring,
        rotator=rotator,
        clients=repository,
        directory=directory,
        authenticator=authenticator,
        registration=registration,
        management=ManagementService(registration),
        audit=audit,
        parser=CertificateParser(),
        metadata=discovery_document(settings, trust),
        wildcards=wildcards,
        jwt_refresher=refresher,
        fetcher=fetcher,
        self_signed=self_signed,
        handshake=handshake,
        assertions=assertions,
        serving_cert=serving_certificate(settings, trust_sources),
        lifecycle=lifecycle,
    )


def mtls_aliases(settings: Settings) -> dict[str, str] | None:
    """RFC 8705 §5 aliases: only when a separate mTLS listener is configured
    (D10), built from its configured base URL, never from Host."""
    mtls = settings.server.mtls
    if mtls is None:
        return None
    return {
        "token_endpoint": mtls.base_url + TOKEN_PATH,
        "registration_endpoint": mtls.base_url + REGISTER_PATH,
    }


def serving_certificate(
    settings: Settings, trust_sources: TrustSources
) -> ServingCertificate | None:
    """swim-as's own certificate source, or None when TLS is not configured."""
    tls = settings.tls
    if tls.source == "workload_api":
        assert settings.workload_api.socket is not None
        return ServingCertificate(
            "workload_api",
            watcher=trust_sources.watchers[settings.workload_api.socket],
            spiffe_id=tls.spiffe_id,
            timeout=settings.workload_api.timeout_seconds,
        )
    if tls.cert_file is None or tls.key_file is None:
        return None
    return ServingCertificate("files", cert_file=tls.cert_file, key_file=tls.key_file)


def _client_authenticator(
    settings: Settings,
    clock: Clock,
    trust: TrustStore,
    directory: ClientDirectory,
    wildcards: WildcardDirectory,
    refresher: JwtBundleRefresher,
    client_keys: ClientKeys,
    assertions: SqlAssertionLog,
    audit: AuditBuffer,
    *,
    on_missing_client: MissingClientHook | None = None,
) -> ClientAuthenticator:
    """One authenticator per enabled method, in a registry by method name."""
    auth = settings.client_auth
    enabled = set(enabled_methods(settings))
    methods: list[MethodAuthenticator] = []
    finders: dict[Credential, Finder] = {}
    if enabled & X509_SVID_METHODS:
        methods.append(X509SvidAuthenticator(trust, enabled & X509_SVID_METHODS))
    if SELF_SIGNED_TLS_CLIENT_AUTH in enabled:
        methods.append(SelfSignedAuthenticator(client_keys, clock))
    if SPIFFE_JWT in enabled:
        spiffe_jwt = SpiffeJwtAuthenticator(
            trust,
            clock,
            lookup=directory.get,
            patterns=wildcards.best_match,
            reload=refresher.unknown_kid,
            audience=settings.issuer,
            max_lifetime=auth.assertion_max_lifetime_seconds,
            leeway=auth.assertion_leeway_seconds,
        )
        methods.append(spiffe_jwt)
        finders[Credential.JWT_SPIFFE] = spiffe_jwt.find
    if PRIVATE_KEY_JWT in enabled:
        private_key_jwt = PrivateKeyJwtAuthenticator(
            client_keys,
            assertions,
            clock,
            lookup=directory.get,
            audience=settings.issuer,
            max_lifetime=auth.assertion_max_lifetime_seconds,
            leeway=auth.assertion_leeway_seconds,
        )
        methods.append(private_key_jwt)
        finders[Credential.JWT_BEARER] = private_key_jwt.find
    for method in (CLIENT_SECRET_BASIC, CLIENT_SECRET_POST):
        if method in enabled:
            methods.append(ClientSecretAuthenticator(method, audit))
    return ClientAuthenticator(
        trust,
        directory.get,
        methods=methods,
        finders=finders,
        on_missing_client=on_missing_client,
    )


def _jwks_uri_checks(
    fetcher: JwksFetcher,
) -> tuple[Callable[[str], None], Callable[[str], Awaitable[None]]]:
    """The registration's jwks_uri checks (D13): without and with DNS."""

    def check_jwks_uri(uri: str) -> None:
        try:
            check_url(uri, fetcher.policy)
        except DestinationRefused as err:
            raise InvalidClientMetadata(
                str(err), detail=f"jwks_uri {uri[:200]!r}"
            ) from err

    async def check_destination(uri: str) -> None:
        try:
            await fetcher.check_destination(uri)
        except DestinationRefused as err:
            raise InvalidClientMetadata(
                str(err), detail=f"jwks_uri {uri[:200]!r}"
            ) from err

    return check_jwks_uri, check_destination


def enabled_methods(settings: Settings) -> list[str]:
    """Token endpoint auth methods the operator turned on (D2)."""
    return list(settings.client_auth.methods)


def advertised_methods(settings: Settings, trust: TrustStore) -> list[str]:
    """Enabled methods that can succeed now (D13): ``spiffe_jwt`` needs a
    trust domain with JWT-SVID keys."""
    return [
        method
        for method in enabled_methods(settings)
        if method != SPIFFE_JWT or trust.has_jwt_keys()
    ]


def signing_algorithms(methods: list[str]) -> list[str]:
    """RFC 8414 §2 ``token_endpoint_auth_signing_alg_values_supported``."""
    algs: set[str] = set()
    if PRIVATE_KEY_JWT in methods:
        algs |= ASYMMETRIC_ALGORITHMS
    if SPIFFE_JWT in methods:
        algs |= JWT_SVID_ALGORITHMS
    return [alg for alg in _ALG_ORDER if alg in algs]


def discovery_document(settings: Settings, trust: TrustStore) -> dict[str, Any]:
    """The RFC 8414 document for the bundles loaded now."""
    methods = advertised_methods(settings, trust)
    return build_metadata(
        settings.issuer,
        auth_methods=methods,
        auth_signing_algs=signing_algorithms(methods),
        mtls_aliases=mtls_aliases(settings),
    )


async def start(services: Services, tls: HandshakeTrust | None = None) -> None:
    """Load bundles and keys, then follow changes in the background.

    Raises:
        BundleError: a bundle file or bootstrap bundle does not load.
        KeyDecryptionError: the KEK does not open the stored signing keys.
    """
    settings = services.settings
    if tls is not None:
        services.handshake.attach(tls, services.serving_cert)

    def bundles_changed(_: TrustDomain) -> None:
        services.handshake.push()
        services.metadata = discovery_document(settings, services.trust)

    services.trust.on_change(bundles_changed)
    services.tasks = [
        asyncio.create_task(services.audit.run(services.stop), name="swim-as-audit")
    ]
    try:
        await _start_following(services, tls)
    except BaseException:
        # Nothing keeps running after a failed start; what was audited so
        # far is still written.
        await stop(services)
        raise
    if settings.client_auth.client_secrets_enabled:
        log.warning(
            "client secret methods are enabled; use them only to migrate clients "
            "to keys or SVIDs",
            extra={
                "event": "server.client_secrets_enabled",
                "methods": sorted(SECRET_METHODS & set(settings.client_auth.methods)),
            },
        )
    # Everything built so far lives as long as the process: moving it out of
    # the collector's reach keeps full collections short (measured under
    # load: about 90 ms → 11 ms, a quarter off the p99 latency).
    gc.collect()
    gc.freeze()
    log.info(
        "swim-as ready",
        extra={
            "event": "server.ready",
            "issuer": services.settings.issuer,
            "trust_domains": [str(s.trust_domain) for s in services.trust.domains()],
        },
    )


async def _start_following(services: Services, tls: HandshakeTrust | None) -> None:
    stop = services.stop
    serving = services.serving_cert
    services.trust_sources.load_initial()
    self_signed = SELF_SIGNED_TLS_CLIENT_AUTH in services.settings.client_auth.methods
    if self_signed:
        # Inline certificates at once; jwks_uri ones in the background task.
        await services.self_signed.load_all(fetch=False)
    services.handshake.push()
    services.tasks += [
        asyncio.create_task(work, name=name)
        for name, work in services.trust_sources.tasks(stop)
    ]
    if tls is not None and serving is not None:
        services.tasks.append(
            asyncio.create_task(serving.run(stop), name="swim-as-serving-cert")
        )
    if self_signed:
        services.tasks.append(
            asyncio.create_task(
                services.self_signed.run(stop), name="swim-as-self-signed"
            )
        )
    services.tasks.append(
        asyncio.create_task(_purge_assertions(services), name="swim-as-assertions")
    )
    await services.trust_sources.first_refresh()
    await services.rotator.ensure_initial_key()
    try:
        await services.keyring.load()
    except KeyDecryptionError as err:
        log.critical(
            "swim-as cannot start: %s; keys.encryption_key_file (or "
            "SWIM_AS_KEYS__ENCRYPTION_KEY) is not the key-encryption key the "
            "signing keys in the database were stored with",
            err,
            extra={"event": "keys.load_failed", "reason": "kek"},
        )
        raise
    services.db.subscribe(_key_listener(services))
    await services.db.start_listening()
    services.tasks.append(
        asyncio.create_task(
            follow_keys(
                services.keyring,
                services.rotator,
                poll_seconds=KEY_POLL_SECONDS,
                stop=stop,
                wake=services.key_changes,
            ),
            name="swim-as-keys",
        ),
    )
    services.tasks += await start_lifecycle(services.lifecycle, services.settings, stop)


async def stop(services: Services) -> None:
    services.stop.set()
    services.key_changes.set()
    for task in services.tasks:
        # These write what is still queued when they see the stop.
        if task.get_name() in ("swim-as-audit", SEEN_TASK):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=5)
        task.cancel()
    for task in services.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await services.db.close()


def _key_listener(services: Services) -> Any:
    def on_change(topic: str, key: str) -> None:
        if topic in ("keys", "*"):
            services.key_changes.set()

    return on_change


async def _purge_assertions(services: Services) -> None:
    """Delete the rows of expired private_key_jwt assertions, now and then."""
    while not services.stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                services.stop.wait(), timeout=ASSERTION_PURGE_SECONDS
            )
        try:
            await services.assertions.purge(services.clock.now())
        except Exception as err:  # retried at the next round
            log.warning(
                "expired assertions not purged",
                extra={"event": "assertions.purge_failed", "reason": repr(err)},
            )


async def readiness(services: Services) -> dict[str, Any]:
    """What ``/readyz`` reports: database, signing key, bundles.

    Ready means: the database answers, a signing key is active, the keys
    reloaded without error, and every trust domain has a bundle within its
    maximum age. A failed refresh whose bundle is still young is reported
    (``error``) without making the replica unready.
    """
    problems: list[str] = []
    database: dict[str, Any] = {"ok": True}
    try:
        await asyncio.wait_for(services.db.ping(), timeout=2)
    except Exception as err:
        database = {"ok": False, "error": type(err).__name__}
        problems.append(f"database unreachable: {type(err).__name__}")

    keyring = services.keyring
    signer = None
    with contextlib.suppress(LookupError):
        signer = keyring.signer().kid
    if signer is None:
        problems.append("no active signing key")
    if keyring.last_error:
        problems.append(f"signing keys not reloaded: {keyring.last_error}")
    keys = {"ok": signer is not None and not keyring.last_error, "signing_kid": signer}
    if keyring.last_error:
        keys["error"] = keyring.last_error

    services.trust_sources.updates.check_ages()
    now = services.clock.time()
    domains = {}
    for state in services.trust.domains():
        loaded = state.x509 is not None or state.jwt is not None
        fine = loaded and state.trusted(now)
        bundle = state.x509 or state.jwt
        domains[str(state.trust_domain)] = {
            "ok": fine,
            "source": state.source,
            "origin": state.origin,
            "error": state.error,
            "expired": state.expired,
            "generation": state.generation,
            "sequence": bundle.sequence if bundle else None,
            "x509_authorities": len(state.x509.authorities) if state.x509 else 0,
            "jwt_keys": len(state.jwt.keys) if state.jwt else 0,
            "age_seconds": (
                round(now - state.refreshed_at, 1) if state.refreshed_at else None
            ),
            "max_age_seconds": state.max_age,
            "failures": state.failures,
        }
        if not fine:
            why = state.error if loaded else "no bundle yet"
            problems.append(f"trust domain {state.trust_domain}: {why or 'expired'}")
    return {
        "ready": not problems,
        "problems": problems,
        "database": database,
        "signing_key": keys,
        "trust_domains": domains,
    }


class _FastPath:
    """Sends ``/token`` straight to its endpoint, the rest to FastAPI.

    It is also the last line of defence: an exception that escapes the
    application is logged here once, with its trace, and never reaches the
    client (D9); FastAPI has already answered with a JSON server_error.
    """

    def __init__(self, token: TokenEndpoint, app: Any) -> None:
        self._token = token
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == TOKEN_PATH:
            await self._token(scope, receive, send)
            return
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        try:
            await self._app(scope, receive, send)
        except Exception:
            log.error(
                "unexpected error",
                exc_info=True,
                extra={"event": "server.error", "path": scope.get("path")},
            )


class _EveryListener:
    """Hands bundle changes to the TLS contexts of every listener."""

    def __init__(self, listeners: list[HandshakeTrust]) -> None:
        self._listeners = listeners

    def update(
        self,
        *,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        client_authorities: Sequence[x509.Certificate] | None = None,
    ) -> None:
        for listener in self._listeners:
            listener.update(
                cert_file=cert_file,
                key_file=key_file,
                client_authorities=client_authorities,
            )


@dataclass(frozen=True)
class ListenerApps:
    """The ASGI applications of one process, one per listener, sharing the
    services and the routes (and one lifespan, run by ``main``)."""

    main: Any
    mtls: Any | None


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    tls: HandshakeTrust | None = None,
    services: Services | None = None,
) -> Any:
    """Build the ASGI application of one swim-as process (main listener)."""
    return create_listener_apps(settings, clock=clock, tls=tls, services=services).main


def create_listener_apps(
    settings: Settings,
    *,
    clock: Clock | None = None,
    tls: HandshakeTrust | None = None,
    mtls_tls: HandshakeTrust | None = None,
    services: Services | None = None,
) -> ListenerApps:
    """Build the applications of the main listener and, when
    ``server.mtls`` is configured, of the mTLS listener (RFC 8705 §5).

    The main listener takes the client certificate from the configured
    source (D5); the mTLS listener always from its own handshake.
    """
    services = services or build_services(settings, clock=clock)
    handshakes = [t for t in (tls, mtls_tls) if t is not None]
    trust_sink: HandshakeTrust | None = None
    if handshakes:
        trust_sink = (
            handshakes[0] if len(handshakes) == 1 else _EveryListener(handshakes)
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_exception_handler(quiet_handshake_failures)
        await start(services, trust_sink)
        try:
            yield
        finally:
            await stop(services)

    api = FastAPI(
        title="swim-as",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    api.state.services = services
    # The policy decider when a policy file is configured, else the
    # operator's grants (D8).
    decider = services.lifecycle.decider
    minter = TokenMinter(settings.issuer, services.keyring, services.clock)
    token = TokenEndpoint(
        services.authenticator,
        ClientCredentialsGrant(decider, minter),
        services.audit,
        max_body=settings.server.max_body_bytes,
        forwarded_identity=(
            functools.partial(
                authenticate_forwarded_identity,
                trust=services.trust,
                lookup=services.directory.get,
            )
            if settings.mesh is not None and settings.mesh.proxy_validates
            else None
        ),
        on_issued=services.lifecycle.seen.record,
    )
    discovery = DiscoveryRoutes(
        lambda: services.metadata,
        services.keyring.jwks,
        lambda: readiness(services),
        jwks_max_age=settings.keys.jwks_max_age_seconds,
    )
    registration = RegistrationRoutes(
        services.registration,
        services.management,
        services.authenticator,
        max_body=settings.server.max_body_bytes,
        controlled=services.lifecycle.controlled,
    )
    api.add_route(METADATA_PATH, discovery.metadata, methods=["GET"])
    api.add_route(OPENID_PATH, discovery.metadata, methods=["GET"])
    api.add_route(JWKS_PATH, discovery.jwks, methods=["GET"])
    api.add_route("/healthz", discovery.healthz, methods=["GET"])
    api.add_route("/readyz", discovery.readyz, methods=["GET"])
    api.add_route(REGISTER_PATH, registration.register, methods=["POST"])
    api.add_route(REGISTER_PATH + "/{rest:path}", registration.read, methods=["GET"])
    api.add_route(REGISTER_PATH + "/{rest:path}", registration.replace, methods=["PUT"])
    api.add_route(
        REGISTER_PATH + "/{rest:path}", registration.delete, methods=["DELETE"]
    )
    _install_error_handlers(api)
    routes = _FastPath(token, api)
    direct = PresentedCertificateMiddleware(routes, services.parser)
    main: Any = direct
    if settings.server.client_certificate_source in FORWARDED_SOURCES:
        main = mesh_middleware(settings, services, routes)
        log.info(
            "mesh mode: client certificates from %s headers of trusted proxies",
            settings.server.client_certificate_source,
            extra={
                "event": "mesh.configured",
                "source": settings.server.client_certificate_source,
                "header": settings.forward_header(),
            },
        )
    return ListenerApps(
        main=main, mtls=direct if settings.server.mtls is not None else None
    )


def mesh_middleware(
    settings: Settings, services: Services, app: Any
) -> ForwardedCertificateMiddleware:
    """The mesh-mode middleware for ``[mesh]`` (D5)."""
    mesh = settings.mesh
    source = settings.server.client_certificate_source
    header = settings.forward_header()
    assert mesh is not None and header is not None
    assert source in ("xfcc", "rfc9440", "nginx")
    trust = services.trust

    def verify_proxy(presented: PresentedCertificate) -> VerifiedX509Svid:
        return trust.verify_x509_svid(
            presented.leaf, presented.intermediates, presented.cache_key
        )

    reader = ForwardedCertificateReader(
        ForwardOptions(
            source=source,
            header=header,
            expected_by=mesh.expected_by,
            proxy_validates=mesh.proxy_validates,
            limits=HeaderLimits(
                max_bytes=mesh.max_header_bytes,
                max_elements=mesh.max_elements,
                max_chain=mesh.max_chain_length,
            ),
        ),
        services.parser,
    )
    proxies = TrustedProxies(
        mesh.trusted_proxies,
        spiffe_ids=mesh.proxy_spiffe_ids,
        parser=services.parser,
        verify_svid=verify_proxy,
    )
    return ForwardedCertificateMiddleware(app, reader, proxies)


def quiet_handshake_failures(
    loop: asyncio.AbstractEventLoop, context: dict[str, Any]
) -> None:
    """Log refused TLS handshakes as one line, not as a traceback.

    A peer that sends garbage, or a certificate OpenSSL or the ssl module
    cannot handle, is refused during the handshake; that is an event for the
    operator's log, not a server error. Everything else goes to the loop's
    default handler.
    """
    message = str(context.get("message", ""))
    error = context.get("exception")
    if "handshake" in message.lower() and isinstance(error, Exception):
        log.info(
            "TLS handshake refused: %s",
            type(error).__name__,
            extra={"event": "tls.handshake_refused", "reason": str(error)[:300]},
        )
        return
    loop.default_exception_handler(context)


def _install_error_handlers(api: FastAPI) -> None:
    async def oauth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OAuthError)
        log_refusal(
            _endpoint(request),
            exc,
            peer=request.client.host if request.client else None,
        )
        status, body, headers = error_parts(exc)
        return Response(
            body,
            status_code=status,
            media_type="application/json" if body else None,
            headers={k.decode(): v.decode() for k, v in headers},
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else "invalid_request"
        return JSONResponse(
            {"error": code, "error_description": str(exc.detail).lower()},
            status_code=exc.status_code,
            headers={**(exc.headers or {}), "Cache-Control": "no-store"},
        )

    async def database_error(request: Request, exc: Exception) -> Response:
        return await oauth_error(
            request, TemporarilyUnavailable(detail=f"database: {type(exc).__name__}")
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Logged once, with the trace, by _FastPath when it re-raises.
        status, body, headers = error_parts(ServerError())
        return Response(
            body,
            status_code=status,
            media_type="application/json",
            headers={k.decode(): v.decode() for k, v in headers},
        )

    api.add_exception_handler(OAuthError, oauth_error)
    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(OperationalError, database_error)
    api.add_exception_handler(DBAPIError, database_error)
    # A refused or dropped database connection surfaces as an OSError.
    api.add_exception_handler(OSError, database_error)
    api.add_exception_handler(Exception, unexpected)


def _endpoint(request: Request) -> str:
    path = request.url.path
    if path.startswith(REGISTER_PATH):
        return "registration"
    return path.strip("/").replace("/", ".") or "root"
