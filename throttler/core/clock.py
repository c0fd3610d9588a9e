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


class SteppedClock:
    """Virtual time shared by several threads (overlap tests): a sleeping thread wakes only when
    every participant sleeps and its wake-up time is the earliest, so each step runs alone and
    every timestamp is exact. Each participating thread calls `leave()` when it is done."""

    def __init__(self, start: float, parties: int, on_advance: Callable[[float], None] | None = None):
        import threading

        self._now = start
        self._parties = parties
        self._on_advance = on_advance
        self._sleepers: dict[int, float] = {}
        self._cond = threading.Condition()

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        import threading

        if seconds <= 0:
            return
        me = threading.get_ident()
        with self._cond:
            self._sleepers[me] = self._now + seconds
            self._cond.notify_all()
            while True:
                wake = self._sleepers[me]
                earliest = min(self._sleepers.items(), key=lambda kv: (kv[1], kv[0]))
                if len(self._sleepers) >= self._parties and earliest[0] == me:
                    del self._sleepers[me]
                    if wake > self._now:
                        delta, self._now = wake - self._now, wake
                        if self._on_advance is not None:
                            self._on_advance(delta)
                    return
                self._cond.wait(timeout=5)

    def leave(self) -> None:
        with self._cond:
            self._parties -= 1
            self._cond.notify_all()
