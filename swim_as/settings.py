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
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "SWIM_AS_"
# Clock difference tolerated between swim-as and the verifiers of its tokens.
CLOCK_LEEWAY_SECONDS = 60


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class TlsSettings(_Section):
    """The server's own certificate. Client certificates are asked for, not
    required; which client CAs are accepted follows from ``trust_domains``."""

    cert_file: Path | None = Field(
        None, description="PEM file: server certificate followed by its chain."
    )
    key_file: Path | None = Field(None, description="PEM file: the server's key.")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version.")


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

    @model_validator(mode="after")
    def _has_a_source(self) -> TrustDomainSettings:
        if self.bundle_file is None and self.jwt_bundle_file is None:
            raise ValueError(
                f"trust domain {self.name!r}: set bundle_file or jwt_bundle_file"
            )
        return self


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

    def load_kek(self) -> bytes:
        """Return the 32-byte KEK, read from the file or the variable."""
        if self.encryption_key_file is not None:
            text = self.encryption_key_file.read_text(encoding="ascii")
            source = str(self.encryption_key_file)
        elif self.encryption_key is not None:
            text, source = self.encryption_key, "keys.encryption_key"
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
    keys: KeySettings = KeySettings()
    tokens: TokenSettings
    registration: RegistrationSettings = RegistrationSettings()
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
        if keys.jwks_max_age_seconds > keys.publish_lead_seconds:
            raise ValueError(
                "keys.jwks_max_age_seconds must not exceed keys.publish_lead_seconds, "
                "or a cached JWKS could miss a key that already signs"
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
    "policy": ("file",),
}
_TRUST_PATH_KEYS = ("bundle_file", "jwt_bundle_file")


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
