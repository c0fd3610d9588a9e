"""The one time seam: everything that needs 'now' or a pause gets a Clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a no-op for zero or less)."""


class SystemClock:
    """Wall-clock time for Lambda, the local stack and the demo."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """Virtual time: sleeping advances the clock at once (unit tests, benchmarks).

    `on_advance` lets a test move another clock along (freezegun's `tick`), so that moto's
    visibility timeouts follow the same virtual time.
    """

    def __init__(self, start: float = 1_767_225_600.0, on_advance: Callable[[float], None] | None = None):
        self._now = start
        self._on_advance = on_advance

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds
            if self._on_advance is not None:
                self._on_advance(seconds)

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)
