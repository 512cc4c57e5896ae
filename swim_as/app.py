"""The application factory: settings in, ASGI application out.

:func:`create_app` wires the services from one :class:`Settings` value; no
module keeps global state. Start-up work (loading bundles and keys, listening
for changes) runs in the lifespan, so importing swim-as never touches the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
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

from swim_as.clientauth.authenticate import ClientAuthenticator
from swim_as.clientauth.base import Credential, Finder, MethodAuthenticator
from swim_as.clientauth.client_keys import ClientKeys
from swim_as.clientauth.client_secret import ClientSecretAuthenticator
from swim_as.clientauth.jwk import ASYMMETRIC_ALGORITHMS
from swim_as.clientauth.jwks_fetch import (
    AddressPolicy,
    DestinationRefused,
    JwksFetcher,
    check_url,
)
from swim_as.clientauth.presented import CertificateParser
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
from swim_as.grants.decision import OperatorGrants
from swim_as.http.discovery import (
    JWKS_PATH,
    METADATA_PATH,
    OPENID_PATH,
    REGISTER_PATH,
    TOKEN_PATH,
    DiscoveryRoutes,
    build_metadata,
)
from swim_as.http.middleware import PresentedCertificateMiddleware
from swim_as.http.register import RegistrationRoutes
from swim_as.http.responses import error_parts, log_refusal
from swim_as.http.token import TokenEndpoint
from swim_as.keys.keyring import Keyring, KeyRotator, RotationPolicy, follow_keys
from swim_as.observability.audit import AuditBuffer
from swim_as.settings import Settings
from swim_as.spiffe.ids import TrustDomain
from swim_as.spiffe.jwtsvid import ALGORITHMS as JWT_SVID_ALGORITHMS
from swim_as.storage.assertions import SqlAssertionLog
from swim_as.storage.clients import SqlClientRepository
from swim_as.storage.db import Database
from swim_as.tokens.minter import TokenMinter
from swim_as.trust.files import FileBundleSource
from swim_as.trust.refresh import JwtBundleRefresher
from swim_as.trust.store import TrustStore

log = logging.getLogger("swim_as.app")

# How often bundle files are checked for a change.
BUNDLE_POLL_SECONDS = 1.0
# How often keys are re-read even without a notification (D11 bound).
KEY_POLL_SECONDS = 5.0
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
    """The TLS layer's view: which client CAs new handshakes accept."""

    def update(self, *, client_authorities: list[x509.Certificate]) -> None: ...


class HandshakeStore:
    """Everything a client certificate may chain to in the handshake.

    The roots of every trust domain and every registered self-signed client
    certificate (RFC 8705 §2.2); the handshake only pre-filters, each
    method verifies again. :meth:`push` hands a new list to the TLS layer.
    """

    def __init__(self, trust: TrustStore) -> None:
        self._trust = trust
        self._extra: list[Callable[[], list[x509.Certificate]]] = []
        self.tls: HandshakeTrust | None = None

    def include(self, certificates: Callable[[], list[x509.Certificate]]) -> None:
        """Add a source of client certificates accepted as they are."""
        self._extra.append(certificates)

    def push(self) -> None:
        if self.tls is not None:
            authorities = self._trust.x509_authorities()
            for source in self._extra:
                authorities.extend(source())
            self.tls.update(client_authorities=authorities)


@dataclass
class Services:
    """Every long-lived object of one process, wired once."""

    settings: Settings
    clock: Clock
    db: Database
    trust: TrustStore
    bundle_sources: list[FileBundleSource]
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
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


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
    sources = []
    for domain in settings.trust_domains:
        td = TrustDomain.parse(domain.name)
        trust.add_domain(td)
        sources.append(FileBundleSource(td, domain.bundle_file, domain.jwt_bundle_file))
    refresher = JwtBundleRefresher(
        trust,
        {source.trust_domain: source for source in sources},
        clock,
        interval=auth.key_refresh_interval_seconds,
    )
    kek = settings.keys.load_kek()
    keyring = Keyring(db, kek, clock)
    rotator = KeyRotator(db, kek, clock, rotation_policy(settings))
    repository = SqlClientRepository(db)
    directory = ClientDirectory(repository, clock, watched=lambda: db.listening)
    db.subscribe(directory.on_change)
    wildcards = WildcardDirectory(repository, clock, watched=lambda: db.listening)
    db.subscribe(wildcards.on_change)
    audit = AuditBuffer(db, clock)
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
    )
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
    return Services(
        settings=settings,
        clock=clock,
        db=db,
        trust=trust,
        bundle_sources=sources,
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
    )


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
    return ClientAuthenticator(trust, directory.get, methods=methods, finders=finders)


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
    )


async def start(services: Services, tls: HandshakeTrust | None = None) -> None:
    """Load bundles and keys, then follow changes in the background."""
    settings = services.settings
    services.handshake.tls = tls

    def bundles_changed(_: TrustDomain) -> None:
        services.handshake.push()
        services.metadata = discovery_document(settings, services.trust)

    services.trust.on_change(bundles_changed)
    for source in services.bundle_sources:
        source.load_into(services.trust, initial=True)
    self_signed = SELF_SIGNED_TLS_CLIENT_AUTH in settings.client_auth.methods
    if self_signed:
        # Inline certificates at once; jwks_uri ones in the background task.
        await services.self_signed.load_all(fetch=False)
    services.handshake.push()
    if settings.client_auth.client_secrets_enabled:
        log.warning(
            "client secret methods are enabled; use them only to migrate clients "
            "to keys or SVIDs",
            extra={
                "event": "server.client_secrets_enabled",
                "methods": sorted(SECRET_METHODS & set(settings.client_auth.methods)),
            },
        )
    await services.rotator.ensure_initial_key()
    await services.keyring.load()
    services.db.subscribe(_key_listener(services))
    await services.db.start_listening()
    stop = services.stop
    services.tasks = [
        asyncio.create_task(_watch_bundles(services), name="swim-as-bundles"),
        asyncio.create_task(
            follow_keys(
                services.keyring,
                services.rotator,
                poll_seconds=KEY_POLL_SECONDS,
                stop=stop,
            ),
            name="swim-as-keys",
        ),
        asyncio.create_task(services.audit.run(stop), name="swim-as-audit"),
        asyncio.create_task(_purge_assertions(services), name="swim-as-assertions"),
    ]
    if self_signed:
        services.tasks.append(
            asyncio.create_task(
                services.self_signed.run(stop), name="swim-as-self-signed"
            )
        )
    log.info(
        "swim-as ready",
        extra={
            "event": "server.ready",
            "issuer": services.settings.issuer,
            "trust_domains": [str(s.trust_domain) for s in services.trust.domains()],
        },
    )


async def stop(services: Services) -> None:
    services.stop.set()
    for task in services.tasks:
        if task.get_name() == "swim-as-audit":
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
            services.tasks.append(
                asyncio.get_running_loop().create_task(services.keyring.load())
            )

    return on_change


async def _watch_bundles(services: Services) -> None:
    while not services.stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(services.stop.wait(), timeout=BUNDLE_POLL_SECONDS)
        for source in services.bundle_sources:
            if source.changed():
                source.load_into(services.trust)


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
    """What ``/readyz`` reports: database, signing key, bundles."""
    problems: list[str] = []
    try:
        await asyncio.wait_for(services.db.ping(), timeout=2)
    except Exception as err:
        problems.append(f"database unreachable: {type(err).__name__}")
    if not services.keyring.has_signer():
        problems.append("no active signing key")
    domains = {}
    for state in services.trust.domains():
        fine = not state.expired and (state.x509 is not None or state.jwt is not None)
        domains[str(state.trust_domain)] = {
            "ok": fine,
            "error": state.error,
            "generation": state.generation,
        }
        if not fine:
            problems.append(
                f"trust domain {state.trust_domain}: {state.error or 'no bundle'}"
            )
    return {"ready": not problems, "problems": problems, "trust_domains": domains}


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


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    tls: HandshakeTrust | None = None,
    services: Services | None = None,
) -> Any:
    """Build the ASGI application of one swim-as process."""
    services = services or build_services(settings, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start(services, tls)
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
    decider = OperatorGrants(
        settings.tokens.default_audience, settings.tokens.lifetime_seconds
    )
    minter = TokenMinter(settings.issuer, services.keyring, services.clock)
    token = TokenEndpoint(
        services.authenticator,
        ClientCredentialsGrant(decider, minter),
        services.audit,
        max_body=settings.server.max_body_bytes,
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
    app = PresentedCertificateMiddleware(_FastPath(token, api), services.parser)
    return app


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
    api.add_exception_handler(Exception, unexpected)


def _endpoint(request: Request) -> str:
    path = request.url.path
    if path.startswith(REGISTER_PATH):
        return "registration"
    return path.strip("/").replace("/", ".") or "root"
