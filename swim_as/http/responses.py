"""Raw ASGI responses for the hot path, and OAuth error rendering (D9).

Every OAuth error is JSON (RFC 6749 §5.2) with ``Cache-Control: no-store``;
the public description is sent, the detail is logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.types import Send

from swim_as.errors import OAuthError, status_of

log = logging.getLogger("swim_as.http")

# A refusal's detail is logged, not its whole input: the input may be large.
MAX_DETAIL = 600

NO_STORE = [
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
]
JSON_TYPE = (b"content-type", b"application/json")


async def send_json(
    send: Send,
    status: int,
    body: Mapping[str, Any] | bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete JSON response."""
    data = body if isinstance(body, bytes) else json_bytes(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                JSON_TYPE,
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def json_bytes(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def error_parts(error: OAuthError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and headers of an OAuth error response."""
    headers = list(NO_STORE)
    headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers().items())
    body = error.body()
    return status_of(error), json_bytes(body) if body else b"", headers


async def send_error(send: Send, error: OAuthError) -> None:
    status, body, headers = error_parts(error)
    if body:
        await send_json(send, status, body, headers)
        return
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", b"0"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def log_refusal(endpoint: str, error: OAuthError, **fields: Any) -> None:
    """One log line per refused request, with the internal detail."""
    level = logging.ERROR if status_of(error) >= 500 else logging.INFO
    detail = error.detail
    if len(detail) > MAX_DETAIL:
        detail = detail[:MAX_DETAIL] + f"... ({len(error.detail)} characters)"
    log.log(
        level,
        "%s refused: %s",
        endpoint,
        detail,
        extra={"event": f"{endpoint}.error", "error": error.error, **fields},
    )
