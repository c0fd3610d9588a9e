"""The regression set: seeds that once broke a promise, and one seed per break of issue 11 that its
checks cover. `make test` runs them (tests/sim/test_regression_seeds.py); `python -m throttler sim
--regression` does too."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    seed: int
    profile: str
    why: str
    days: float = 1.0
    jobs: int | None = None
    scale: float = 0.05


REGRESSION: tuple[Case, ...] = ()
