"""The settings tree: every option swim-as reads, with its default and meaning.

Settings come from one TOML file (``--config FILE``) and from environment
variables named ``SWIM_AS_<SECTION>__<KEY>`` (``__`` separates nesting levels),
which override the file. They are loaded once, by the CLI, and passed down; no
module reads the environment on its own.

This module is the reference for the configuration; the README's table is
derived from the field descriptions below.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "SWIM_AS_"
# Clock difference tolerated between swim-as and the verifiers of its tokens.
CLOCK_LEEWAY_SECONDS = 60
# Every replica re-reads the signing keys at least this often, whether or not
# a PostgreSQL notification arrived (D7, D11); its JWKS document is cached in
# memory for one more second. A key change therefore reaches every replica's
# signer and JWKS within KEY_RELOAD_SECONDS + 1 s.
KEY_RELOAD_SECONDS = 5


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


CertificateSource = Literal["tls", "xfcc", "rfc9440", "nginx", "none"]
# Sources that read the client certificate from a proxy's header (D5).
FORWARDED_SOURCES = ("xfcc", "rfc9440", "nginx")
# Header each forwarded source reads unless mesh.header says otherwise.
DEFAULT_FORWARD_HEADERS = {
    "xfcc": "x-forwarded-client-cert",
    "nginx": "x-ssl-client-cert",
    "rfc9440": "client-cert",
}


def _https_base(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{name} must be an https URL")
    if parts.query or parts.fragment or "#" in value or "?" in value:
        raise ValueError(f"{name} must have no query and no fragment")
    return value.rstrip("/")


class MtlsListenerSettings(_Section):
    """A second listener, served by the same process, that asks every client
    for a certificate; discovery then names it in ``mtls_endpoint_aliases``
    (RFC 8705 §5). It uses the server certificate of ``[tls]``."""

    host: str = Field("127.0.0.1", description="Address of the mTLS listener.")
    port: int = Field(ge=0, le=65535, description="Port of the mTLS listener.")
    base_url: str = Field(
        description=(
            "https URL at which clients reach this listener; the aliases in "
            "discovery are built from it, never from Host."
        )
    )

    @field_validator("base_url")
    @classmethod
    def _base_is_https(cls, value: str) -> str:
        return _https_base(value, "server.mtls.base_url")


class ServerSettings(_Section):
    """Where and how swim-as listens."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8443, ge=0, le=65535, description="HTTPS port.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes. All of them sign with the same key.",
    )
    access_log: bool = Field(
        False, description="Log every request (costs throughput on the token path)."
    )
    max_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request body accepted on /token and /register.",
    )
    client_certificate_source: CertificateSource = Field(
        "tls",
        description=(
            "Where the client certificate comes from (D5): 'tls', the handshake "
            "swim-as terminates; 'xfcc', 'rfc9440' or 'nginx', a header set by "
            "a trusted proxy (mesh mode, configured in [mesh]); 'none', no "
            "client certificate on this listener (use server.mtls for mTLS "
            "clients). Never two sources on one listener."
        ),
    )
    mtls: MtlsListenerSettings | None = Field(
        None,
        description="A separate listener for mTLS clients (RFC 8705 §5 aliases).",
    )


class TlsSettings(_Section):
    """The server's own certificate. Client certificates are asked for, not
    required; which client CAs are accepted follows from ``trust_domains``."""

    cert_file: Path | None = Field(
        None, description="PEM file: server certificate followed by its chain."
    )
    key_file: Path | None = Field(None, description="PEM file: the server's key.")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version.")
    source: Literal["files", "workload_api"] = Field(
        "files",
        description=(
            "files: cert_file and key_file, reloaded when they change; "
            "workload_api: swim-as's own X.509-SVID from [workload_api] socket."
        ),
    )
    spiffe_id: str | None = Field(
        None,
        description=(
            "With source = workload_api: which SVID to serve when the Workload "
            "API offers several (default: the first, the default SVID)."
        ),
    )

    @model_validator(mode="after")
    def _source_fits(self) -> TlsSettings:
        if self.source == "workload_api" and (self.cert_file or self.key_file):
            raise ValueError(
                "tls.cert_file and tls.key_file are not read with "
                "tls.source = workload_api"
            )
        if self.source == "files" and self.spiffe_id is not None:
            raise ValueError("tls.spiffe_id needs tls.source = workload_api")
        return self


class WorkloadApiSettings(_Section):
    """The SPIFFE Workload API (SPIRE agent) swim-as may take bundles and its
    own certificate from."""

    socket: str | None = Field(
        None,
        description=(
            "The agent's socket, e.g. unix:///run/spire/sockets/agent.sock; the "
            "default for trust domains with workload_api = true and for "
            "tls.source = workload_api."
        ),
    )
    timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "How long start-up waits for the first answer of the Workload API."
        ),
    )


class MeshSettings(_Section):
    """Mesh mode: the client certificate arrives in a header from a proxy
    (Envoy/Istio sidecar, nginx) that terminated the client's mTLS (D5).

    The header is honoured only from a trusted proxy: the peer address must
    be in ``trusted_proxies`` and, when ``proxy_spiffe_ids`` is set, the
    peer must present one of those X.509-SVIDs in its own handshake with
    swim-as. From anyone else it is dropped and the attempt logged.
    """

    trusted_proxies: list[IPvAnyNetwork] = Field(
        min_length=1,
        description=(
            "Addresses (CIDR) the proxy connects from, e.g. 127.0.0.1/32 for a "
            "sidecar in the same pod."
        ),
    )
    proxy_spiffe_ids: list[str] = Field(
        default_factory=list,
        description=(
            "SPIFFE IDs the proxy's own certificate may carry, when it connects "
            "to swim-as over mTLS. That certificate identifies the proxy, never "
            "the client. Needs [tls]."
        ),
    )
    header: str | None = Field(
        None,
        description=(
            "Header to read: default x-forwarded-client-cert (xfcc) or "
            "x-ssl-client-cert (nginx). Not settable for rfc9440."
        ),
    )
    expected_by: str | None = Field(
        None,
        description=(
            "xfcc only: the 'By' value (URI SAN of the certificate the proxy "
            "showed the client, i.e. swim-as's own identity) the element must "
            "carry."
        ),
    )
    proxy_validates: bool = Field(
        False,
        description=(
            "xfcc only: the proxy verifies client certificates against the "
            "right bundles itself, so an element with a URI but no Cert may "
            "authenticate; such tokens carry no certificate binding."
        ),
    )
    allow_plaintext: bool = Field(
        False,
        description=(
            "Allow plain HTTP (no [tls]) on an address that is not loopback. "
            "Without it, plain HTTP is served only on 127.0.0.1, ::1 or localhost."
        ),
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=256 * 1024, description="Largest header accepted."
    )
    max_elements: int = Field(
        16, ge=1, le=64, description="Most XFCC elements (proxy hops) accepted."
    )
    max_chain_length: int = Field(
        8, ge=1, le=16, description="Most certificates in a forwarded chain."
    )

    @field_validator("proxy_spiffe_ids")
    @classmethod
    def _strict_ids(cls, values: list[str]) -> list[str]:
        from swim_as.spiffe.errors import SpiffeIdError
        from swim_as.spiffe.ids import SpiffeId

        for value in values:
            try:
                SpiffeId.parse(value)
            except SpiffeIdError as err:
                raise ValueError(f"mesh.proxy_spiffe_ids: {err}") from err
        return values

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None:
            if not value or not all(c.isalnum() or c in "-_" for c in value):
                raise ValueError(f"mesh.header {value!r} is not a header name")
            return value.lower()
        return value

    @model_validator(mode="after")
    def _not_everyone(self) -> MeshSettings:
        if not self.proxy_spiffe_ids and any(
            n.prefixlen == 0 for n in self.trusted_proxies
        ):
            raise ValueError(
                "mesh.trusted_proxies trusts every address: anyone who reaches "
                "swim-as could forge a client certificate; list the proxy's "
                "addresses, or also set mesh.proxy_spiffe_ids"
            )
        return self


class DatabaseSettings(_Section):
    """Where clients, keys and audit records live."""

    url: str = Field(
        "sqlite+aiosqlite:///swim-as.db",
        description=(
            "SQLAlchemy URL: postgresql+asyncpg://user@host/db in production, "
            "sqlite+aiosqlite:///path for single-node trials."
        ),
    )
    pool_size: int = Field(10, ge=1, description="Connections per worker (PostgreSQL).")
    echo: bool = Field(False, description="Log every SQL statement (debugging only).")

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(
                "database.url must start with postgresql+asyncpg:// or "
                "sqlite+aiosqlite://"
            )
        return value


class TrustDomainSettings(_Section):
    """One trust domain whose workloads may authenticate (D3)."""

    name: str = Field(description="Trust domain name, e.g. prod.example.")
    bundle_file: Path | None = Field(
        None,
        description=(
            "X.509 bundle: PEM CA certificates, or a SPIFFE bundle JSON document "
            "(which may hold JWT-SVID keys too)."
        ),
    )
    jwt_bundle_file: Path | None = Field(
        None, description="JWT-SVID keys as a JWK Set (SPIFFE bundle JSON)."
    )
    bundle_endpoint_url: str | None = Field(
        None,
        description=(
            "A SPIFFE bundle endpoint (https) to poll for this trust domain's "
            "bundle; bundle_file is then the initial (bootstrap) bundle."
        ),
    )
    bundle_endpoint_profile: Literal["https_web", "https_spiffe"] = Field(
        "https_web",
        description=(
            "https_web: the endpoint has a Web PKI certificate; https_spiffe: it "
            "presents the X.509-SVID bundle_endpoint_spiffe_id."
        ),
    )
    bundle_endpoint_spiffe_id: str | None = Field(
        None, description="https_spiffe: the SPIFFE ID the endpoint must present."
    )
    bundle_endpoint_ca_file: Path | None = Field(
        None,
        description=(
            "https_web: PEM CA certificates to verify the endpoint with instead "
            "of the system trust store."
        ),
    )
    bundle_endpoint_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="Time limit of one whole fetch."
    )
    bundle_endpoint_max_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest bundle accepted from the endpoint."
    )
    workload_api: bool = Field(
        False,
        description=(
            "Take this trust domain's bundles from the Workload API "
            "([workload_api] socket, or workload_api_socket)."
        ),
    )
    workload_api_socket: str | None = Field(
        None,
        description="The Workload API socket for this trust domain (implies "
        "workload_api = true).",
    )
    max_bundle_age_seconds: int = Field(
        86400,
        ge=1,
        description=(
            "A bundle that could not be refreshed for this long stops being "
            "trusted; its SVIDs are refused and /readyz reports it."
        ),
    )

    @property
    def uses_workload_api(self) -> bool:
        return self.workload_api or self.workload_api_socket is not None

    @property
    def source(self) -> Literal["file", "bundle_endpoint", "workload_api"]:
        if self.bundle_endpoint_url is not None:
            return "bundle_endpoint"
        if self.uses_workload_api:
            return "workload_api"
        return "file"

    @model_validator(mode="after")
    def _has_a_source(self) -> TrustDomainSettings:
        name = self.name
        files = self.bundle_file is not None or self.jwt_bundle_file is not None
        endpoint = self.bundle_endpoint_url is not None
        if endpoint and self.uses_workload_api:
            raise ValueError(
                f"trust domain {name!r}: bundle_endpoint_url and the Workload API "
                "exclude each other"
            )
        if self.uses_workload_api and files:
            raise ValueError(
                f"trust domain {name!r}: bundle files and the Workload API "
                "exclude each other"
            )
        if not (files or endpoint or self.uses_workload_api):
            raise ValueError(
                f"trust domain {name!r}: set bundle_file or jwt_bundle_file, "
                "bundle_endpoint_url, or workload_api"
            )
        if endpoint:
            self._check_endpoint()
        elif (
            self.bundle_endpoint_spiffe_id is not None
            or self.bundle_endpoint_ca_file is not None
        ):
            raise ValueError(
                f"trust domain {name!r}: bundle_endpoint_* settings need "
                "bundle_endpoint_url"
            )
        return self

    def _check_endpoint(self) -> None:
        from swim_as.spiffe.errors import SpiffeIdError
        from swim_as.spiffe.ids import SpiffeId

        name, url = self.name, self.bundle_endpoint_url or ""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(
                f"trust domain {name!r}: bundle_endpoint_url must be https"
            )
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise ValueError(
                f"trust domain {name!r}: bundle_endpoint_url must have no userinfo "
                "and no fragment"
            )
        if self.jwt_bundle_file is not None:
            raise ValueError(
                f"trust domain {name!r}: with a bundle endpoint, JWT keys come "
                "from the endpoint; drop jwt_bundle_file"
            )
        if self.bundle_endpoint_profile == "https_web":
            if self.bundle_endpoint_spiffe_id is not None:
                raise ValueError(
                    f"trust domain {name!r}: bundle_endpoint_spiffe_id is for the "
                    "https_spiffe profile"
                )
            return
        if self.bundle_endpoint_ca_file is not None:
            raise ValueError(
                f"trust domain {name!r}: bundle_endpoint_ca_file is for the "
                "https_web profile"
            )
        if self.bundle_endpoint_spiffe_id is None:
            raise ValueError(
                f"trust domain {name!r}: https_spiffe needs bundle_endpoint_spiffe_id"
            )
        try:
            endpoint_id = SpiffeId.parse(self.bundle_endpoint_spiffe_id)
        except SpiffeIdError as err:
            raise ValueError(f"trust domain {name!r}: {err}") from err
        if endpoint_id.trust_domain.name == name and self.bundle_file is None:
            raise ValueError(
                f"trust domain {name!r}: an https_spiffe endpoint of the trust "
                "domain itself needs bundle_file, the bootstrap bundle"
            )


class KeySettings(_Section):
    """Signing keys (D7). Private parts are stored encrypted under the
    key-encryption key (KEK): 32 random bytes, base64 text."""

    encryption_key_file: Path | None = Field(
        None, description="File holding the KEK as base64 text (32 bytes)."
    )
    encryption_key: str | None = Field(
        None,
        description=(
            "The KEK itself as base64 text; for environments that pass secrets "
            "as variables (SWIM_AS_KEYS__ENCRYPTION_KEY). Prefer the file."
        ),
        repr=False,
    )
    algorithm: Literal["ES256", "RS256", "PS256", "EdDSA"] = Field(
        "ES256", description="JWS algorithm of new signing keys."
    )
    rotate_every_seconds: int = Field(
        30 * 86400,
        ge=0,
        description="Rotate the signing key this often (0: only on demand).",
    )
    publish_lead_seconds: int = Field(
        900,
        ge=0,
        description="A new key is in the JWKS this long before it signs.",
    )
    retire_after_seconds: int | None = Field(
        None,
        ge=0,
        description=(
            "A replaced key stays in the JWKS this long after its last "
            "signature; default: the token lifetime plus 60 s of leeway."
        ),
    )
    jwks_max_age_seconds: int = Field(
        300,
        ge=0,
        description="Cache-Control max-age of the JWKS; at most the lead time.",
    )

    def retain_seconds(self, token_lifetime: int) -> int:
        """How long a replaced key stays published (D7)."""
        if self.retire_after_seconds is not None:
            return self.retire_after_seconds
        return token_lifetime + CLOCK_LEEWAY_SECONDS

    @field_validator("encryption_key_file", "encryption_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # SWIM_AS_KEYS__ENCRYPTION_KEY_FILE= (empty) clears the file setting.
        return None if value == "" else value

    def load_kek(self) -> bytes:
        """Return the 32-byte KEK.

        ``encryption_key`` wins over ``encryption_key_file`` when both are
        set, so that SWIM_AS_KEYS__ENCRYPTION_KEY overrides a KEK file named
        in the configuration file.
        """
        if self.encryption_key is not None:
            text, source = self.encryption_key, "keys.encryption_key"
        elif self.encryption_key_file is not None:
            path = self.encryption_key_file.resolve()
            text = path.read_text(encoding="ascii")
            source = f"keys.encryption_key_file {path}"
        else:
            raise ValueError(
                "no key-encryption key: set keys.encryption_key_file "
                "(or SWIM_AS_KEYS__ENCRYPTION_KEY)"
            )
        try:
            kek = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"{source}: the KEK is not base64 text") from err
        if len(kek) != 32:
            raise ValueError(f"{source}: the KEK must be 32 bytes, found {len(kek)}")
        return kek


class TokenSettings(_Section):
    """Access tokens (D6)."""

    default_audience: str = Field(
        description="`aud` of tokens requested without a `resource`."
    )
    lifetime_seconds: int = Field(
        300, ge=10, le=86400, description="Longest access-token lifetime."
    )


class RegistrationSettings(_Section):
    """Dynamic client registration (RFC 7591)."""

    self_registration: bool = Field(
        True, description="A workload may register its own SPIFFE ID over mTLS."
    )


# Token endpoint authentication methods (D2). The two client secret methods
# exist only to migrate clients away from secrets and are off unless listed.
AuthMethod = Literal[
    "tls_client_auth",
    "spiffe_x509",
    "spiffe_jwt",
    "self_signed_tls_client_auth",
    "private_key_jwt",
    "client_secret_basic",
    "client_secret_post",
]
DEFAULT_AUTH_METHODS: tuple[AuthMethod, ...] = (
    "tls_client_auth",
    "spiffe_x509",
    "spiffe_jwt",
    "self_signed_tls_client_auth",
    "private_key_jwt",
)


class ClientAuthSettings(_Section):
    """How clients authenticate at the token endpoint (issue 3, D2, D13)."""

    methods: list[AuthMethod] = Field(
        default_factory=lambda: list(DEFAULT_AUTH_METHODS),
        min_length=1,
        description=(
            "Token endpoint auth methods served, in discovery order. "
            "client_secret_basic and client_secret_post exist only to migrate "
            "clients away from secrets: off unless listed here, and every use "
            "is logged as a warning. spiffe_jwt is advertised only while a "
            "trust domain has JWT-SVID keys."
        ),
    )
    assertion_max_lifetime_seconds: int = Field(
        600,
        ge=1,
        le=3600,
        description=(
            "A client assertion (JWT-SVID or private_key_jwt) whose exp is "
            "further ahead than this is refused (D13)."
        ),
    )
    assertion_leeway_seconds: int = Field(
        30,
        ge=0,
        le=300,
        description="Clock skew tolerated on an assertion's exp and nbf.",
    )
    key_refresh_interval_seconds: float = Field(
        30.0,
        ge=1.0,
        description=(
            "An unknown kid reloads a trust domain's JWT bundle (or refetches "
            "a client's jwks_uri) at most once per this interval."
        ),
    )
    jwks_uri_cache_seconds: int = Field(
        300, ge=1, description="How long a fetched client jwks_uri document is used."
    )
    jwks_uri_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Time limit of one jwks_uri fetch (connect, TLS, body).",
    )
    jwks_uri_max_bytes: int = Field(
        65536, ge=1024, description="Largest jwks_uri response body accepted."
    )
    jwks_uri_allowed_networks: list[str] = Field(
        default_factory=list,
        description=(
            "CIDR blocks a jwks_uri may resolve to although they are not "
            "public (loopback, private, link-local). Cloud metadata, "
            "unspecified and multicast addresses stay refused."
        ),
    )
    jwks_uri_ca_file: Path | None = Field(
        None,
        description=(
            "PEM CA certificates for verifying jwks_uri servers; default: the "
            "system trust store."
        ),
    )

    @field_validator("methods")
    @classmethod
    def _no_duplicates(cls, value: list[AuthMethod]) -> list[AuthMethod]:
        if len(set(value)) != len(value):
            raise ValueError("client_auth.methods lists a method twice")
        return value

    @field_validator("jwks_uri_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=True)
            except ValueError as err:
                raise ValueError(f"not a CIDR block: {network!r} ({err})") from err
        return value

    @property
    def client_secrets_enabled(self) -> bool:
        return bool({"client_secret_basic", "client_secret_post"} & set(self.methods))


class PolicySettings(_Section):
    """Which workload may get which scopes, audiences and lifetime (D8)."""

    file: Path | None = Field(
        None,
        description=(
            "TOML policy file (format in the README). Without one, clients get "
            "only operator-granted scopes and tokens.default_audience. Reloaded "
            "when it changes; a bad file keeps the last good policy."
        ),
    )


class LifecycleSettings(_Section):
    """Idle clients are disabled, then deleted, by a background job."""

    disable_after_seconds: int = Field(
        0,
        ge=0,
        description=(
            "Disable a client that obtained no token (and was not changed) for "
            "this long; 0: never. At least 600 when set."
        ),
    )
    delete_after_seconds: int = Field(
        0,
        ge=0,
        description=(
            "Delete a client this long after the job disabled it; 0: never. "
            "Clients an operator disabled are left alone."
        ),
    )
    check_every_seconds: int = Field(
        60, ge=1, description="How often the job looks for idle clients."
    )
    seen_flush_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="How often token use is written to the database (batched).",
    )

    @model_validator(mode="after")
    def _long_enough(self) -> LifecycleSettings:
        # Token use reaches the database in batches (up to a minute late),
        # so a shorter idle time could disable a client that is in use.
        if 0 < self.disable_after_seconds < 600:
            raise ValueError("lifecycle.disable_after_seconds must be 0 or >= 600")
        return self


class SoftwareStatementIssuerSettings(_Section):
    """An issuer whose software statements (RFC 7591 §2.3) are accepted."""

    issuer: str = Field(description="The statement's `iss`, compared exactly.")
    jwks_file: Path = Field(description="The issuer's public keys as a JWK Set.")
    spiffe_id_patterns: list[str] = Field(
        default_factory=list,
        description=(
            "SPIFFE IDs or `/*` patterns its statements may register; empty: any."
        ),
    )


class LoggingSettings(_Section):
    """Operator logs (the `swim_as.*` loggers)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = Field(
        "json", description="json: one object per line; text: for a terminal."
    )


class Settings(BaseSettings):
    """The whole configuration of one swim-as deployment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    issuer: str = Field(
        description=(
            "The issuer identifier (RFC 8414 §2): https URL, no query or fragment. "
            "Every endpoint URL in discovery is built from it, never from Host."
        )
    )
    server: ServerSettings = ServerSettings()
    tls: TlsSettings = TlsSettings()
    database: DatabaseSettings = DatabaseSettings()
    trust_domains: list[TrustDomainSettings] = Field(default_factory=list)
    workload_api: WorkloadApiSettings = WorkloadApiSettings()
    keys: KeySettings = KeySettings()
    tokens: TokenSettings
    mesh: MeshSettings | None = None
    registration: RegistrationSettings = RegistrationSettings()
    client_auth: ClientAuthSettings = ClientAuthSettings()
    logging: LoggingSettings = LoggingSettings()
    policy: PolicySettings = PolicySettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    software_statement_issuers: list[SoftwareStatementIssuerSettings] = Field(
        default_factory=list
    )

    @field_validator("issuer")
    @classmethod
    def _issuer_is_https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError("issuer must be an https URL")
        if parts.query or parts.fragment or "#" in value or "?" in value:
            raise ValueError("issuer must have no query and no fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _keys_outlive_tokens(self) -> Settings:
        # D7: a replaced key must stay published until every token it signed
        # has expired, and a cached JWKS must already hold the next key when
        # that key starts signing.
        keys, lifetime = self.keys, self.tokens.lifetime_seconds
        if keys.retain_seconds(lifetime) < lifetime + CLOCK_LEEWAY_SECONDS:
            raise ValueError(
                "keys.retire_after_seconds must be at least tokens.lifetime_seconds "
                f"+ {CLOCK_LEEWAY_SECONDS} s, or tokens would outlive their key"
            )
        spread = KEY_RELOAD_SECONDS + 1 if keys.publish_lead_seconds else 0
        if keys.jwks_max_age_seconds + spread > keys.publish_lead_seconds:
            raise ValueError(
                "keys.jwks_max_age_seconds plus the key reload bound "
                f"({KEY_RELOAD_SECONDS + 1} s) must not exceed "
                "keys.publish_lead_seconds, or a cached JWKS could miss a key "
                "that already signs"
            )
        return self

    @model_validator(mode="after")
    def _unique_trust_domains(self) -> Settings:
        names = [td.name for td in self.trust_domains]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"trust domain listed twice: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _one_certificate_source(self) -> Settings:
        # D5: one source per listener, and no settings that would silently
        # do nothing.
        source, mesh = self.server.client_certificate_source, self.mesh
        if source in FORWARDED_SOURCES and mesh is None:
            raise ValueError(
                f"server.client_certificate_source = {source!r} reads a header "
                "from a proxy: add a [mesh] section with trusted_proxies"
            )
        if source not in FORWARDED_SOURCES and mesh is not None:
            raise ValueError(
                f"[mesh] is set but server.client_certificate_source is "
                f"{source!r}: forwarded headers would be ignored; set the source "
                "to 'xfcc', 'rfc9440' or 'nginx', or remove [mesh]"
            )
        if mesh is not None:
            if source != "xfcc" and mesh.expected_by is not None:
                raise ValueError(
                    f"mesh.expected_by applies to XFCC only, not to {source!r}"
                )
            if source != "xfcc" and mesh.proxy_validates:
                raise ValueError(
                    "mesh.proxy_validates applies to XFCC only (an identity "
                    f"without a certificate), not to {source!r}"
                )
            if source == "rfc9440" and mesh.header is not None:
                raise ValueError(
                    "mesh.header cannot be set for rfc9440: the headers are "
                    "Client-Cert and Client-Cert-Chain"
                )
        mtls = self.server.mtls
        if mtls is not None:
            if mtls.base_url == self.issuer:
                raise ValueError(
                    "server.mtls.base_url must differ from the issuer: an alias "
                    "to the same URL is no alias"
                )
            if (mtls.host, mtls.port) == (self.server.host, self.server.port) and (
                mtls.port != 0
            ):
                raise ValueError(
                    "server.mtls listens on the same address and port as server"
                )
        return self

    def forward_header(self) -> str | None:
        """The header mesh mode reads, or None outside mesh mode."""
        source = self.server.client_certificate_source
        if source not in FORWARDED_SOURCES or self.mesh is None:
            return None
        return self.mesh.header or DEFAULT_FORWARD_HEADERS[source]

    def plaintext(self) -> bool:
        """True when the main listener serves plain HTTP (mesh mode, no
        [tls] certificate and no certificate from the Workload API)."""
        return (
            self.tls.source == "files"
            and self.tls.cert_file is None
            and self.tls.key_file is None
        )

    def serving_problems(self) -> list[str]:
        """What stops this configuration from serving (checked at start-up,
        not at load: other commands need no listener)."""
        problems: list[str] = []
        tls, server, mesh = self.tls, self.server, self.mesh
        if (tls.cert_file is None) != (tls.key_file is None):
            problems.append("set both tls.cert_file and tls.key_file, or neither")
            return problems
        if not self.plaintext():
            return problems
        if server.client_certificate_source not in FORWARDED_SOURCES:
            problems.append(
                "tls.cert_file and tls.key_file are required to serve HTTPS "
                "(plain HTTP only in mesh mode, behind a proxy that terminates TLS)"
            )
            return problems
        assert mesh is not None
        if server.mtls is not None:
            problems.append("server.mtls needs tls.cert_file and tls.key_file")
        if mesh.proxy_spiffe_ids:
            problems.append(
                "mesh.proxy_spiffe_ids needs TLS between the proxy and swim-as: "
                "set tls.cert_file and tls.key_file"
            )
        if not mesh.allow_plaintext and not is_loopback(server.host):
            problems.append(
                f"refusing plain HTTP on {server.host}, which is not a loopback "
                "address: bind 127.0.0.1 (the sidecar's side of the pod), set "
                "[tls], or set mesh.allow_plaintext = true if the network between "
                "the proxy and swim-as is protected"
            )
        return problems

    @model_validator(mode="after")
    def _sources_resolve(self) -> Settings:
        # Every Workload API user needs a socket; an https_spiffe endpoint
        # is authenticated with the bundle of its SPIFFE ID's trust domain,
        # which must be configured (SPIFFE Federation §5.2.2).
        names = {td.name for td in self.trust_domains}
        for td in self.trust_domains:
            if td.uses_workload_api and not (
                td.workload_api_socket or self.workload_api.socket
            ):
                raise ValueError(
                    f"trust domain {td.name!r}: set workload_api.socket or "
                    "workload_api_socket"
                )
            if td.bundle_endpoint_spiffe_id is not None:
                endpoint_td = urlsplit(td.bundle_endpoint_spiffe_id).netloc
                if endpoint_td not in names:
                    raise ValueError(
                        f"trust domain {td.name!r}: the endpoint's trust domain "
                        f"{endpoint_td!r} is not configured, so its SVID cannot "
                        "be verified"
                    )
        if self.tls.source == "workload_api" and not self.workload_api.socket:
            raise ValueError("tls.source = workload_api needs workload_api.socket")
        return self

    @model_validator(mode="after")
    def _unique_statement_issuers(self) -> Settings:
        names = [i.issuer for i in self.software_statement_issuers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"software statement issuer listed twice: {', '.join(duplicates)}"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Constructor values (the TOML file, read by `load`) are overridden by
        # the environment; no .env files and no secrets directories.
        return (env_settings, init_settings)

    def endpoint(self, path: str) -> str:
        """An absolute URL under the issuer (RFC 8414 §3)."""
        return f"{self.issuer}{path}"


def is_loopback(host: str) -> bool:
    """True for a loopback literal or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(path: Path | None) -> Settings:
    """Read the TOML file (if any) and the SWIM_AS_* variables, once.

    Relative paths inside the file are resolved against the file's folder, so
    a configuration keeps working whatever the current directory is.
    """
    data: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        _resolve_paths(data, path.parent)
    return Settings(**data)


_PATH_KEYS = {
    "tls": ("cert_file", "key_file"),
    "keys": ("encryption_key_file",),
    "client_auth": ("jwks_uri_ca_file",),
    "policy": ("file",),
}
_TRUST_PATH_KEYS = ("bundle_file", "jwt_bundle_file", "bundle_endpoint_ca_file")


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def fix(section: dict[str, Any], keys: tuple[str, ...]) -> None:
        for key in keys:
            value = section.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value):
                section[key] = str(base / value)

    for name, keys in _PATH_KEYS.items():
        section = data.get(name)
        if isinstance(section, dict):
            fix(section, keys)
    for domain in data.get("trust_domains") or []:
        if isinstance(domain, dict):
            fix(domain, _TRUST_PATH_KEYS)
    for issuer in data.get("software_statement_issuers") or []:
        if isinstance(issuer, dict):
            fix(issuer, ("jwks_file",))
    database = data.get("database")
    if isinstance(database, dict):
        url = database.get("url")
        prefix = "sqlite+aiosqlite:///"
        if isinstance(url, str) and url.startswith(prefix):
            rest = url[len(prefix) :]
            if rest and not rest.startswith("/") and not rest.startswith(":memory:"):
                database["url"] = prefix + str(base / rest)
