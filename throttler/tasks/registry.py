"""Task registry: `@task("name")` registers a function the worker may run for a job.

A task is `fn(payload: dict, ctx: TaskContext) -> TaskResult | None`. Returning means success;
raising RetryableTaskError, PermanentTaskError or ThrottledTaskError reports the other outcomes;
any other exception counts as retryable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from throttler.core.clock import Clock


@dataclass
class TaskResult:
    status: int | None = None
    rate_remaining: int | None = None
    rate_reset_at: float | None = None


@dataclass
class TaskContext:
    job_id: str
    group: str
    clock: Clock
    session: requests.Session
    allowed_hosts: tuple[str, ...]
    not_after: float  # never start a (re)try after this: the call's slot would no longer be safe
    secret_headers: Callable[[], dict[str, str]] = field(default=dict)


TaskFn = Callable[[dict[str, Any], TaskContext], "TaskResult | None"]


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, TaskFn] = {}

    def register(self, name: str, fn: TaskFn) -> TaskFn:
        if not name or len(name) > 128:
            raise ValueError("task names are 1 to 128 characters")
        self._tasks[name] = fn
        return fn

    def get(self, name: str) -> TaskFn | None:
        return self._tasks.get(name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._tasks)

    def load_module(self, module: str) -> None:
        """Import the user's tasks module (TASKS_MODULE); its decorators register into this registry."""
        if module:
            importlib.import_module(module)


default_registry = TaskRegistry()


def task(name: str) -> Callable[[TaskFn], TaskFn]:
    """Register a custom task in the default registry: `@task("send_invoice")`."""

    def decorate(fn: TaskFn) -> TaskFn:
        return default_registry.register(name, fn)

    return decorate
