"""Strict parsing of form-encoded request bodies (RFC 6749 §3.2, App. B).

* The body must be ``application/x-www-form-urlencoded``.
* A parameter sent without a value is treated as omitted (RFC 6749 §3.1).
* A parameter may not be sent twice (RFC 6749 §3.1), except those a later
  specification makes repeatable, such as ``resource`` (RFC 8707 §2).
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote_plus

from starlette.types import Receive, Scope

from swim_as.errors import InvalidRequest, RequestTooLarge

FORM_TYPE = b"application/x-www-form-urlencoded"


def content_type_is(scope: Scope, expected: bytes) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media: bytes = value.split(b";", 1)[0].strip().lower()
            return media == expected
    return False


# A client that trickles its body holds a connection and a task: bound it.
BODY_TIMEOUT_SECONDS = 10.0


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes or a body
    that takes longer than :data:`BODY_TIMEOUT_SECONDS` to arrive."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            return await _read_body(scope, receive, limit)
    except TimeoutError:
        raise InvalidRequest(
            "request body not received in time",
            detail=f"body incomplete after {BODY_TIMEOUT_SECONDS} s",
        ) from None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise InvalidRequest("invalid content-length") from None
            if declared > limit:
                raise RequestTooLarge(detail=f"declared {declared} bytes > {limit}")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(detail=f"body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def parse_form(
    body: bytes, repeatable: frozenset[str] = frozenset()
) -> dict[str, list[str]]:
    """Parse a form body into name → values, enforcing RFC 6749 §3.1.

    Raises:
        InvalidRequest: the body is not valid form encoding, not UTF-8, or
            repeats a parameter that may appear once.
    """
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest(
            "body is not form-encoded", detail="non-ASCII bytes in a form body"
        ) from None
    params: dict[str, list[str]] = {}
    if not text:
        return params
    for pair in text.split("&"):
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        try:
            name = unquote_plus(name, errors="strict")
            value = unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            raise InvalidRequest(
                "body is not form-encoded", detail="percent-encoding is not UTF-8"
            ) from None
        if not value:
            continue  # RFC 6749 §3.1: no value means omitted
        values = params.setdefault(name, [])
        if values and name not in repeatable:
            raise InvalidRequest(
                f"parameter {name} is repeated"
                if _printable(name)
                else "a parameter is repeated",
                detail=f"repeated parameter {name!r}",
            )
        values.append(value)
    return params


def _printable(name: str) -> bool:
    return len(name) <= 40 and all(
        c == "_" or c == "-" or c.isascii() and c.isalnum() for c in name
    )
