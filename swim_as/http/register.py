"""Registration endpoints: RFC 7591 §3 and RFC 7592 §2.

``POST /register`` takes a JSON object, from a workload presenting its SVID
over mTLS, or from a controller presenting an initial access token
(``Authorization: Bearer``) or a software statement
(:mod:`swim_as.clients.controlled` decides who may register what). The
client configuration endpoint ``/register/<client_id, percent-encoded>``
answers GET, PUT and DELETE for the holder of the registration access token
(``Authorization: Bearer``, RFC 6750 §2.1) or of the client's own SVID.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from swim_as.clientauth.authenticate import ClientAuthenticator
from swim_as.clients.controlled import ControlledRegistration
from swim_as.clients.registration import (
    ManagementService,
    Manager,
    RegistrationService,
)
from swim_as.errors import InvalidRequest, InvalidToken, NotFound, RequestTooLarge
from swim_as.http.forms import BODY_TIMEOUT_SECONDS
from swim_as.http.middleware import CERTIFICATE, CERTIFICATE_ERROR
from swim_as.http.responses import NO_STORE

log = logging.getLogger("swim_as.registration")

NO_STORE_HEADERS = {k.decode(): v.decode() for k, v in NO_STORE}
PREFIX = "/register/"


class RegistrationRoutes:
    """The handlers, bound to their services."""

    def __init__(
        self,
        registration: RegistrationService,
        management: ManagementService,
        authenticator: ClientAuthenticator,
        *,
        max_body: int,
        controlled: ControlledRegistration | None = None,
    ) -> None:
        self._registration = registration
        self._management = management
        self._authenticator = authenticator
        self._max_body = max_body
        self._controlled = controlled

    async def register(self, request: Request) -> Response:
        """RFC 7591 §3.1: register a client (the caller's own, or others')."""
        if self._controlled is None:
            # The body is size-bounded and parsed strictly, so reading it
            # before the caller is known is safe, and lets a key-based
            # registration learn that only an operator adds such clients.
            body = await self._json_object(request)
            self._registration.refuse_unauthorised(body)
            caller = self._caller_spiffe_id(request, required=True)
            assert caller is not None
            registration = await self._registration.register_self(body, caller)
        else:
            # RFC 7591 §3: an initial access token rides as a Bearer token.
            initial_access_token = _bearer(request)
            body = await self._json_object(request)
            caller = self._caller_spiffe_id(request, required=False)
            registration = await self._controlled.register(
                body,
                caller_spiffe_id=caller,
                initial_access_token=initial_access_token,
            )
        return JSONResponse(
            self._registration.response(registration),
            status_code=201 if registration.created else 200,
            headers=NO_STORE_HEADERS,
        )

    async def read(self, request: Request) -> Response:
        """RFC 7592 §2.1."""
        client_id = _client_id(request)
        body = await self._management.read(client_id, self._manager(request))
        return JSONResponse(body, headers=NO_STORE_HEADERS)

    async def replace(self, request: Request) -> Response:
        """RFC 7592 §2.2."""
        client_id = _client_id(request)
        manager = self._manager(request)
        await self._management.authorise(client_id, manager)
        body = await self._json_object(request)
        updated = await self._management.replace(client_id, body, manager)
        return JSONResponse(updated, headers=NO_STORE_HEADERS)

    async def delete(self, request: Request) -> Response:
        """RFC 7592 §2.3."""
        client_id = _client_id(request)
        await self._management.delete(client_id, self._manager(request))
        return Response(status_code=204, headers=NO_STORE_HEADERS)

    def _manager(self, request: Request) -> Manager:
        token = _bearer(request)
        if token is not None:
            return Manager(registration_access_token=token)
        spiffe_id = self._caller_spiffe_id(request, required=False)
        if spiffe_id is not None:
            return Manager(spiffe_id=spiffe_id)
        raise InvalidToken(missing=True, detail="no registration access token")

    def _caller_spiffe_id(self, request: Request, *, required: bool) -> str | None:
        certificate = request.scope.get(CERTIFICATE)
        if certificate is None:
            if not required and CERTIFICATE_ERROR not in request.scope:
                return None
            if CERTIFICATE_ERROR in request.scope:
                raise InvalidRequest(
                    "client certificate could not be read",
                    detail=request.scope[CERTIFICATE_ERROR],
                )
            raise InvalidRequest(
                "a client certificate is required to register",
                detail="registration without a client certificate",
            )
        svid = self._authenticator.verify_svid(certificate)
        return str(svid.spiffe_id)

    async def _json_object(self, request: Request) -> dict[str, Any]:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip()
        if media.lower() != "application/json":
            raise InvalidRequest("body must be application/json")
        declared = request.headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self._max_body
        ):
            raise RequestTooLarge(detail=f"declared {declared} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self._max_body:
                        raise RequestTooLarge(
                            detail=f"body over {self._max_body} bytes"
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise InvalidRequest(
                "request body not received in time",
                detail=f"body incomplete after {BODY_TIMEOUT_SECONDS} s",
            ) from None
        raw = b"".join(chunks)
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise InvalidRequest(
                "body must be a JSON object", detail=f"got {type(body).__name__}"
            )
        return body


def parse_json(raw: bytes) -> Any:
    """Strict JSON (RFC 8259): UTF-8, no duplicate member names, no lone
    surrogates, bounded nesting.

    Raises:
        InvalidRequest: the body is not such a JSON text.
    """
    try:
        text = raw.decode("utf-8")
        return json.loads(
            text, object_pairs_hook=_unique_members, parse_constant=_no_constant
        )
    except RecursionError:
        raise InvalidRequest(
            "body is not valid JSON", detail="JSON nested too deeply"
        ) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidRequest("body is not valid JSON", detail=str(err)[:300]) from err


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"member {name[:60]!r} appears twice")
        _check_text(name)
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    _check_text(item)
        members[name] = value
    return members


def _check_text(text: str) -> None:
    # json accepts "\ud800", which no UTF-8 database or terminal can hold.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate escape") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _client_id(request: Request) -> str:
    """The client_id from the raw (still percent-encoded) path."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.split(b"?", 1)[0].decode("ascii", "replace")
    if not path.startswith(PREFIX) or len(path) == len(PREFIX):
        raise NotFound()
    encoded = path[len(PREFIX) :]
    if "/" in encoded:
        raise NotFound(detail="client_id must be percent-encoded in the path")
    try:
        return unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        raise NotFound(detail="client_id in the path is not UTF-8") from None


def _bearer(request: Request) -> str | None:
    """RFC 6750 §2.1: ``Authorization: Bearer <token>``."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken(
            "malformed authorization header", detail="not a Bearer credential"
        )
    return token.strip()
