"""Time, injected wherever expiry, rotation or caching depends on it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """The current time, as seconds since the epoch and as an aware datetime."""

    def time(self) -> float: ...

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that moves only when told to; for tests and `policy explain`."""

    def __init__(self, at: float) -> None:
        self._at = at

    def time(self) -> float:
        return self._at

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._at, UTC)

    def advance(self, seconds: float) -> None:
        self._at += seconds
