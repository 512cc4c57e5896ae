"""Strict base64url without padding (RFC 7515 §2, RFC 4648 §5).

JWS compact serialization and JWK members use this encoding. The decoder
refuses padding, whitespace and characters outside the URL-safe alphabet
rather than skipping them as the standard library does.
"""

from __future__ import annotations

import base64
import re

_ALPHABET_RE = re.compile(r"[A-Za-z0-9_-]*")


def decode(text: str) -> bytes:
    """Decode unpadded base64url.

    Raises:
        ValueError: the text is not unpadded base64url.
    """
    if _ALPHABET_RE.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(data: bytes) -> str:
    """Encode as unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
