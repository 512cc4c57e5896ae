"""Client metadata rules for registration (RFC 7591 §2, RFC 8705 §2.1.2, D13).

:func:`validate_metadata` turns a registration request's JSON object into the
metadata swim-as stores and echoes back, or raises
:class:`~swim_as.errors.InvalidClientMetadata`. Unknown members are ignored
(RFC 7591 §2); members of flows swim-as does not serve are refused (D13).

Per method:

- SPIFFE methods carry an identity: ``tls_client_auth_san_uri`` (exactly
  that one subject field, RFC 8705 §2.1.2) or ``spiffe_id`` (an exact ID or,
  for ``spiffe_x509`` and ``spiffe_jwt``, a ``/*`` pattern), and no keys;
- key methods (``private_key_jwt``, ``self_signed_tls_client_auth``) carry
  ``jwks`` or ``jwks_uri``, never both and never neither, and no SPIFFE
  identity; a ``jwks`` holds public keys only, and every key of a
  self-signed client carries its certificate in ``x5c``
  (:func:`~swim_as.clientauth.jwk.parse_client_jwks`); a ``jwks_uri`` is
  https and names no forbidden address (the caller's ``check_jwks_uri``);
- secret methods carry neither; the secret is made by the server.

``tls_client_certificate_bound_access_tokens`` (RFC 8705 §3.4) defaults to
true for the certificate methods and to false for ``spiffe_jwt`` and
``private_key_jwt``, whose clients may have no certificate to bind to; it
cannot be true for methods that never see a certificate of the client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from swim_as.clientauth.jwk import JwkError, parse_client_jwks
from swim_as.clients.model import (
    CLIENT_CREDENTIALS,
    CLIENT_SECRET_BASIC,
    CLIENT_SECRET_POST,
    PRIVATE_KEY_JWT,
    SELF_SIGNED_TLS_CLIENT_AUTH,
    SPIFFE_JWT,
    SPIFFE_X509,
    TLS_CLIENT_AUTH,
)
from swim_as.errors import InvalidClientMetadata
from swim_as.spiffe.errors import SpiffeIdError
from swim_as.spiffe.ids import SpiffeIdPattern

SPIFFE_METHODS = frozenset({TLS_CLIENT_AUTH, SPIFFE_X509, SPIFFE_JWT})
KEY_METHODS = frozenset({SELF_SIGNED_TLS_CLIENT_AUTH, PRIVATE_KEY_JWT})
SECRET_METHODS = frozenset({CLIENT_SECRET_BASIC, CLIENT_SECRET_POST})
CERTIFICATE_METHODS = frozenset(
    {TLS_CLIENT_AUTH, SPIFFE_X509, SELF_SIGNED_TLS_CLIENT_AUTH}
)
# Methods whose requests never prove a certificate of the client.
UNBINDABLE_METHODS = frozenset({PRIVATE_KEY_JWT, *SECRET_METHODS})

# RFC 8705 §2.1.2: the subject fields of tls_client_auth; swim-as matches
# SPIFFE IDs, so only the URI SAN is served.
TLS_SUBJECT_FIELDS = (
    "tls_client_auth_subject_dn",
    "tls_client_auth_san_dns",
    "tls_client_auth_san_uri",
    "tls_client_auth_san_ip",
    "tls_client_auth_san_email",
)

_STRING_MEMBERS = (
    "client_name",
    "client_uri",
    "logo_uri",
    "tos_uri",
    "policy_uri",
    "software_id",
    "software_version",
    "spiffe_bundle_endpoint",
)


@dataclass(frozen=True, slots=True)
class ValidatedMetadata:
    """Registration metadata that passed every rule.

    ``metadata`` is what is stored and echoed (RFC 7591 §3.2.1), with
    defaults filled in; ``spiffe_id`` is the identity the client will
    authenticate as (exact or ``/*`` pattern), if it is a SPIFFE client.
    """

    auth_method: str
    spiffe_id: str | None
    metadata: dict[str, Any]


def validate_metadata(
    body: Mapping[str, Any],
    *,
    enabled_methods: frozenset[str],
    caller_spiffe_id: str | None,
    check_jwks_uri: Callable[[str], None] | None = None,
) -> ValidatedMetadata:
    """Check a registration request (RFC 7591 §2) and fill in defaults.

    Args:
        body: the request's JSON object.
        enabled_methods: token endpoint auth methods this server serves.
        caller_spiffe_id: the SPIFFE ID of the caller's verified SVID, used
            as the default identity (D13).
        check_jwks_uri: refuses a ``jwks_uri`` naming a forbidden address
            (raises InvalidClientMetadata).

    Raises:
        InvalidClientMetadata: a member is malformed, contradictory or
            belongs to a flow swim-as does not serve.
    """
    try:
        # Statement claims join the body after its own parse: check again.
        json.dumps(dict(body), ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError:
        raise InvalidClientMetadata(
            "metadata holds invalid Unicode", detail="a lone surrogate escape"
        ) from None
    out: dict[str, Any] = {}
    _refuse_other_flows(body)
    out["grant_types"] = _grant_types(body)

    method = body.get("token_endpoint_auth_method")
    if method is None:
        if caller_spiffe_id is None:
            raise InvalidClientMetadata(
                "token_endpoint_auth_method is required",
                detail="no method given and no SVID to default from",
            )
        method = TLS_CLIENT_AUTH
    if not isinstance(method, str):
        raise InvalidClientMetadata("token_endpoint_auth_method must be a string")
    if method not in enabled_methods:
        raise InvalidClientMetadata(
            "token_endpoint_auth_method is not supported",
            detail=f"method {method!r} not enabled",
        )
    out["token_endpoint_auth_method"] = method

    spiffe_id = _identity(body, method, caller_spiffe_id, out)
    _key_material(body, method, out, check_jwks_uri)
    out["tls_client_certificate_bound_access_tokens"] = _bound(body, method)

    scope = body.get("scope")
    if scope is not None:
        tokens = parse_scope(scope) if isinstance(scope, str) else None
        if tokens is None:
            raise InvalidClientMetadata("scope must be a space-separated string")
        out["scope"] = " ".join(dict.fromkeys(tokens))

    for member in _STRING_MEMBERS:
        value = body.get(member)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > 2048:
            raise InvalidClientMetadata(f"{member} must be a string")
        if member.endswith("_uri") or member == "spiffe_bundle_endpoint":
            _require_https_uri(member, value)
        out[member] = value
    contacts = body.get("contacts")
    if contacts is not None:
        if not isinstance(contacts, list) or not all(
            isinstance(c, str) and len(c) <= 320 for c in contacts
        ):
            raise InvalidClientMetadata("contacts must be a list of strings")
        out["contacts"] = contacts
    return ValidatedMetadata(method, spiffe_id, out)


def _refuse_other_flows(body: Mapping[str, Any]) -> None:
    # D13: swim-as serves client_credentials only; redirect-based metadata
    # would advertise a flow that does not exist here. Empty lists say
    # "none", which is true, and are accepted.
    for member in ("redirect_uris", "response_types"):
        value = body.get(member)
        if value is None:
            continue
        if not isinstance(value, list):
            raise InvalidClientMetadata(f"{member} must be a list")
        if value:
            raise InvalidClientMetadata(
                f"{member} is not supported: swim-as serves client_credentials only"
            )


def _grant_types(body: Mapping[str, Any]) -> list[str]:
    grant_types = body.get("grant_types", [CLIENT_CREDENTIALS])
    if not isinstance(grant_types, list) or not all(
        isinstance(g, str) for g in grant_types
    ):
        raise InvalidClientMetadata("grant_types must be a list of strings")
    unsupported = sorted(set(grant_types) - {CLIENT_CREDENTIALS})
    if unsupported:
        raise InvalidClientMetadata(
            "grant_types may hold only client_credentials",
            detail=f"unsupported grant types {unsupported}",
        )
    return [CLIENT_CREDENTIALS]


def _identity(
    body: Mapping[str, Any],
    method: str,
    caller_spiffe_id: str | None,
    out: dict[str, Any],
) -> str | None:
    """The SPIFFE ID a SPIFFE client authenticates as (D2, D13)."""
    spiffe_id = _optional_string(body, "spiffe_id")
    if method == TLS_CLIENT_AUTH:
        given = [f for f in TLS_SUBJECT_FIELDS if body.get(f) is not None]
        if any(f != "tls_client_auth_san_uri" for f in given):
            raise InvalidClientMetadata(
                "only tls_client_auth_san_uri is supported as the subject",
                detail=f"subject fields given: {given}",
            )
        san_uri = _optional_string(body, "tls_client_auth_san_uri")
        if san_uri is None:
            san_uri = spiffe_id or caller_spiffe_id
        if san_uri is None:
            raise InvalidClientMetadata("tls_client_auth_san_uri is required")
        if spiffe_id is not None and spiffe_id != san_uri:
            raise InvalidClientMetadata(
                "spiffe_id and tls_client_auth_san_uri must be equal"
            )
        _parse_pattern("tls_client_auth_san_uri", san_uri, wildcard=False)
        out["tls_client_auth_san_uri"] = san_uri
        return san_uri
    for field in TLS_SUBJECT_FIELDS:
        if body.get(field) is not None:
            raise InvalidClientMetadata(
                f"{field} belongs to tls_client_auth",
                detail=f"{field} sent with method {method}",
            )
    if method in (SPIFFE_X509, SPIFFE_JWT):
        if spiffe_id is None:
            spiffe_id = caller_spiffe_id
        if spiffe_id is None:
            raise InvalidClientMetadata("spiffe_id is required")
        # D1: an X.509-SVID client's client_id is its exact SPIFFE ID; only
        # JWT-SVID clients may stand for a group of workloads ("/*").
        _parse_pattern("spiffe_id", spiffe_id, wildcard=method == SPIFFE_JWT)
        out["spiffe_id"] = spiffe_id
        return spiffe_id
    if spiffe_id is not None:
        raise InvalidClientMetadata(
            "spiffe_id belongs to the spiffe_x509 and spiffe_jwt methods"
        )
    return None


def _key_material(
    body: Mapping[str, Any],
    method: str,
    out: dict[str, Any],
    check_jwks_uri: Callable[[str], None] | None,
) -> None:
    jwks, jwks_uri = body.get("jwks"), body.get("jwks_uri")
    if jwks is not None and jwks_uri is not None:
        raise InvalidClientMetadata("jwks and jwks_uri must not both be present")
    if method not in KEY_METHODS:
        if jwks is not None or jwks_uri is not None:
            raise InvalidClientMetadata(f"jwks and jwks_uri are not used by {method}")
        return
    if jwks is None and jwks_uri is None:
        raise InvalidClientMetadata(f"{method} needs jwks or jwks_uri")
    if jwks is not None:
        try:
            parse_client_jwks(jwks, require_x5c=method == SELF_SIGNED_TLS_CLIENT_AUTH)
        except JwkError as err:
            raise InvalidClientMetadata(str(err), detail=f"{method}: {err}") from err
        out["jwks"] = jwks
    else:
        if not isinstance(jwks_uri, str) or len(jwks_uri) > 2048:
            raise InvalidClientMetadata("jwks_uri must be a string")
        _require_https_uri("jwks_uri", jwks_uri)
        if check_jwks_uri is not None:
            check_jwks_uri(jwks_uri)
        out["jwks_uri"] = jwks_uri


def _bound(body: Mapping[str, Any], method: str) -> bool:
    """RFC 8705 §3.4, with swim-as's per-method default (see above)."""
    bound = body.get("tls_client_certificate_bound_access_tokens")
    if bound is None:
        return method in CERTIFICATE_METHODS
    if not isinstance(bound, bool):
        raise InvalidClientMetadata(
            "tls_client_certificate_bound_access_tokens must be a boolean"
        )
    if bound and method in UNBINDABLE_METHODS:
        raise InvalidClientMetadata(
            f"{method} clients present no certificate; "
            "tls_client_certificate_bound_access_tokens must be false",
        )
    return bound


def _optional_string(body: Mapping[str, Any], member: str) -> str | None:
    value = body.get(member)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidClientMetadata(f"{member} must be a string")
    return value


def _parse_pattern(member: str, value: str, *, wildcard: bool) -> SpiffeIdPattern:
    try:
        pattern = SpiffeIdPattern.parse(value)
    except SpiffeIdError as err:
        raise InvalidClientMetadata(
            f"{member} is not a valid SPIFFE ID", detail=str(err)
        ) from err
    if pattern.is_wildcard and not wildcard:
        raise InvalidClientMetadata(f"{member} must be an exact SPIFFE ID")
    if not pattern.is_wildcard and pattern.spiffe_id_is_root:
        raise InvalidClientMetadata(
            f"{member} must name a workload, not a trust domain"
        )
    return pattern


def _require_https_uri(member: str, value: str) -> None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (parses the port; raises on garbage)
    except ValueError:
        raise InvalidClientMetadata(f"{member} must be an https URL") from None
    if parts.scheme != "https" or not parts.hostname or parts.fragment:
        raise InvalidClientMetadata(f"{member} must be an https URL")


def parse_scope(value: str) -> list[str] | None:
    """RFC 6749 §3.3: ``scope-token *( SP scope-token )``, or None.

    Only a single space separates tokens; a tab, a double space or any
    character outside %x21 / %x23-5B / %x5D-7E makes the value malformed.
    """
    tokens = value.split(" ")
    if all(_is_scope_token(t) for t in tokens):
        return tokens
    return None


def _is_scope_token(token: str) -> bool:
    # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    return bool(token) and all(
        c == "\x21" or "\x23" <= c <= "\x5b" or "\x5d" <= c <= "\x7e" for c in token
    )
