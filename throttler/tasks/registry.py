"""Task registry: `@task("name")` registers a function the worker may run for a job.

A task is `fn(payload: dict, ctx: TaskContext) -> TaskResult | None`. Returning means success;
raising RetryableTaskError, PermanentTaskError or ThrottledTaskError reports the other outcomes,
InvalidJob says the message can never run; any other exception counts as retryable.

A task may also register a validator, `validate(payload: dict, checks: ValidationContext) -> None`, that raises
InvalidJob with a one-line reason: `parse_job` calls it wherever a job is parsed (producer, throttler, worker),
so a bad payload is dead-lettered by the throttler before any call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests

from throttler.core.clock import Clock
from throttler.tasks.url import AllowList

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


@dataclass
class TaskResult:
    """What a task returns on success.

    `headers`: the response's rate-limit headers (lowercased names: `ratelimit*`, `x-ratelimit*`,
    `x-rate-limit*`, `retry-after`, and the quota item's `cost_header`), for the throttler to read.
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationContext:
    """What a task's validator may check a payload against, the same for producer, throttler and worker."""

    allow_list: AllowList
    secret_header_names: frozenset[str] = frozenset()  # lowercased: headers a message may not set
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # the cap on a response body that is read

    @classmethod
    def build(
        cls,
        allowed_hosts: Iterable[str],
        stage: str,
        secret_header_names: Iterable[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        denied: Iterable[tuple[str, int]] = (),
        in_lambda: bool = False,
    ) -> ValidationContext:
        """From the settings' values; raises ConfigError for a malformed ALLOWED_HOSTS entry."""
        return cls(
            AllowList.parse(allowed_hosts, stage, denied, in_lambda),
            frozenset(name.lower() for name in secret_header_names),
            max_body_bytes,
        )


@dataclass
class TaskContext:
    """What the worker hands a task for one job.

    - `session`: the batch's `requests.Session` (see `throttler.tasks.http.new_session`);
    - `validation`: allow-list, secret header names, body cap (as `parse_job` used them);
    - `not_after`: never start a (re)try after this: the call's slot would no longer be safe;
    - `deadline`: every call ends by this, connect and reading included (epoch seconds on `clock`); it must end
      inside the worker's own timeout;
    - `secret_headers`: the stage's secret headers, loaded once per batch (never logged, never in a reason).
    """

    job_id: str
    group: str
    clock: Clock
    session: requests.Session
    validation: ValidationContext
    not_after: float
    deadline: float
    secret_headers: dict[str, str] = field(default_factory=dict)
    keep_headers: frozenset[str] = frozenset()  # response headers to carry back besides the rate-limit ones (lowercased)

    @property
    def allow_list(self) -> AllowList:
        return self.validation.allow_list

    @property
    def max_body_bytes(self) -> int:
        return self.validation.max_body_bytes


TaskFn = Callable[[dict[str, Any], TaskContext], "TaskResult | None"]
Validator = Callable[[dict[str, Any], ValidationContext], object]


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, TaskFn] = {}
        self._validators: dict[str, Validator] = {}

    def register(self, name: str, fn: TaskFn, validate: Validator | None = None) -> TaskFn:
        """Register `fn` as task `name`, with an optional payload validator (raises InvalidJob)."""
        if not name or len(name) > 128:
            raise ValueError("task names are 1 to 128 characters")
        self._tasks[name] = fn
        if validate is None:
            self._validators.pop(name, None)
        else:
            self._validators[name] = validate
        return fn

    def get(self, name: str) -> TaskFn | None:
        return self._tasks.get(name)

    def validator(self, name: str) -> Validator | None:
        return self._validators.get(name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._tasks)

    def view(self, names: Iterable[str]) -> TaskView:
        """The same tasks and validators, limited to `names` (what a throttler run was told it may accept)."""
        return TaskView(self, frozenset(names))

    def load_module(self, module: str) -> None:
        """Import the user's tasks module (TASKS_MODULE); its decorators register into this registry."""
        if module:
            importlib.import_module(module)


@dataclass(frozen=True)
class TaskView:
    """A registry limited to some task names: what `parse_job` takes as `tasks`."""

    registry: TaskRegistry
    names: frozenset[str]

    def validator(self, name: str) -> Validator | None:
        return self.registry.validator(name) if name in self.names else None


default_registry = TaskRegistry()


def task(name: str, validate: Validator | None = None) -> Callable[[TaskFn], TaskFn]:
    """Register a custom task in the default registry: `@task("send_invoice")`."""

    def decorate(fn: TaskFn) -> TaskFn:
        return default_registry.register(name, fn, validate)

    return decorate
