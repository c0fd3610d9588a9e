"""Faults around a throttler run, injected by the seed: AWS requests that fail, and processes that die.

`Faulty` wraps the state store or the job queue a run uses. Each request may fail before it happens
(DynamoDB throttling, an SQS 5xx, once botocore's retries are spent) or after it happened (the answer
was lost: the caller never learned). Either way the error escapes the run's step, which is what a real
run does with an error it does not expect: the Lambda invocation fails, and the schedule's retry policy
(NONE) leaves the next minute's run to carry on. Hooks see every request, before and after, and may
raise `ProcessDied` to kill the run exactly there (the reliability tests crash a run at each point).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from throttler.core.errors import StoreError
from throttler.queue.base import QueueError


class ProcessDied(BaseException):
    """The simulated process is gone. A BaseException, like SystemExit, so that no `except Exception`
    in the code under test swallows it: the run stops exactly where a real crash would stop it."""


Hook = Callable[[str, str], None]  # (op "store.commit_usage", phase "before" | "after")
Observer = Callable[[str, tuple[Any, ...], Any], None]  # (op, args, result) of a request that succeeded


@dataclass
class RunFaults:
    """What can go wrong around the throttler's runs (probabilities, per request or per step)."""

    store_error: float = 0.0  # a state-table request fails before it happens
    store_error_after: float = 0.0  # ... or after it happened
    queue_error: float = 0.0  # an SQS request fails before it happens
    queue_error_after: float = 0.0  # ... or after it happened
    crash: float = 0.0  # the run's process dies between two steps
    stall: float = 0.0  # the run freezes (a long GC pause, a hung request) and wakes up later
    stall_s: tuple[float, float] = (35.0, 80.0)  # longer than the lease: another run takes over meanwhile
    skip: float = 0.0  # a scheduled run never starts
    late: float = 0.0  # a scheduled run starts much later than its minute
    late_s: tuple[float, float] = (5.0, 50.0)


STORE_READS_ONLY = frozenset({"read_control", "load_usage", "load_key_meters", "get_attempts", "done_ids", "read_batches"})


class Faulty:
    """A proxy that makes a share of requests fail (see the module docstring). Attributes that are not
    methods, and private ones, pass through untouched."""

    def __init__(self, target: Any, name: str, rng: random.Random, before: float = 0.0, after: float = 0.0,
                 error: type[Exception] = StoreError, hooks: list[Hook] | None = None, only: frozenset[str] | None = None):
        self._target = target
        self._name = name
        self._rng = rng
        self.before = before
        self.after = after
        self._error = error
        self.hooks: list[Hook] = hooks if hooks is not None else []
        self.observers: list[Observer] = []
        self._only = only
        self.failures = 0

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._target, attr)
        if attr.startswith("_") or not callable(value):
            return value
        op = f"{self._name}.{attr}"
        eligible = self._only is None or attr in self._only

        def call(*args: Any, **kwargs: Any) -> Any:
            for hook in self.hooks:
                hook(op, "before")
            if eligible and self.before and self._rng.random() < self.before:
                self.failures += 1
                raise self._error(f"{op} failed (simulated)")
            result = value(*args, **kwargs)
            for observer in self.observers:
                observer(op, args, result)
            for hook in self.hooks:
                hook(op, "after")
            if eligible and self.after and self._rng.random() < self.after:
                self.failures += 1
                raise self._error(f"{op} failed after it happened (simulated)")
            return result

        return call


def crash_at(op: str, occurrence: int = 1, phase: str = "after") -> Hook:
    """A hook that kills the process making the n-th `op` request, just `phase` it (the world then never
    steps that run again: a dead process makes no more requests)."""
    seen = [0]

    def hook(name: str, when: str) -> None:
        if name == op and when == phase:
            seen[0] += 1
            if seen[0] == occurrence:
                raise ProcessDied(f"died {phase} {op} #{occurrence}")

    return hook


EXPECTED_RUN_ERRORS: tuple[type[BaseException], ...] = (StoreError, QueueError, ProcessDied)
