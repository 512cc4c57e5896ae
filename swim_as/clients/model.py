"""The client as the services see it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# RFC 8705 §2.1 and the OAuth SPIFFE client-auth draft (D2).
TLS_CLIENT_AUTH = "tls_client_auth"
SELF_SIGNED_TLS_CLIENT_AUTH = "self_signed_tls_client_auth"
SPIFFE_X509 = "spiffe_x509"
SPIFFE_JWT = "spiffe_jwt"
PRIVATE_KEY_JWT = "private_key_jwt"
CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 (a method name)
CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 (a method name)

CLIENT_CREDENTIALS = "client_credentials"


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client, immutable; a change makes a new one."""

    client_id: str
    auth_method: str
    spiffe_id: str | None
    metadata: Mapping[str, Any]
    granted_scopes: frozenset[str]
    disabled: bool
    created_at: datetime
    updated_at: datetime
    created_by: str
    # scrypt hash of the client secret (client_secret_* methods only).
    secret_hash: str | None = field(default=None, repr=False, compare=False)

    @property
    def grant_types(self) -> tuple[str, ...]:
        return tuple(self.metadata.get("grant_types", (CLIENT_CREDENTIALS,)))

    @property
    def requires_bound_tokens(self) -> bool:
        """RFC 8705 §3.4 client metadata, as registered.

        Registration always stores it (true by default for the certificate
        methods); a row without it is treated as requiring binding.
        """
        return bool(
            self.metadata.get("tls_client_certificate_bound_access_tokens", True)
        )

    @property
    def registered_scopes(self) -> frozenset[str] | None:
        """The RFC 7591 ``scope`` the client registered, which only narrows."""
        scope = self.metadata.get("scope")
        if scope is None:
            return None
        return frozenset(str(scope).split())
