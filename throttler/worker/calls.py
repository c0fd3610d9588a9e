"""One job's call: validate the message again, run its task, and classify what happened (no state kept)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from throttler.core import ratelimit
from throttler.core.clock import Clock
from throttler.core.envelope import parse_job
from throttler.core.errors import InvalidJob, PermanentTaskError, RetryableTaskError, ThrottledTaskError
from throttler.core.outcome import JobResult, Outcome
from throttler.core.protocol import JobSpec
from throttler.tasks.registry import TaskContext, TaskRegistry, ValidationContext

logger = logging.getLogger(__name__)


@dataclass
class CallSetup:
    """What every call of one batch shares: the tasks, the stage's rules, the secrets and the session."""

    registry: TaskRegistry
    clock: Clock
    session: Any
    validation: ValidationContext
    secret_headers: Mapping[str, str] = field(default_factory=dict)
    max_message_bytes: int = 256 * 1024
    cost_header: str | None = None
    call_timeout_s: float = 30.0  # no call runs longer than this (and never past the worker's own deadline)


def call_job(spec: JobSpec, setup: CallSetup, deadline: float) -> JobResult:
    """Run one job now; every failure is a result, never an exception (the batch must go on)."""
    clock = setup.clock
    try:
        job = parse_job(
            spec.body, spec.group, spec.id, tasks=setup.registry, validation=setup.validation, max_bytes=setup.max_message_bytes
        )
    except InvalidJob as exc:
        return JobResult(spec.id, Outcome.INVALID, str(exc))
    fn = setup.registry.get(job.task)
    if fn is None:
        return JobResult(spec.id, Outcome.INVALID, f"unknown task {job.task!r}")
    ctx = TaskContext(
        job_id=job.job_id,
        group=job.group,
        clock=clock,
        session=setup.session,
        validation=setup.validation,
        not_after=spec.not_after,
        deadline=min(deadline, clock.now() + setup.call_timeout_s),
        secret_headers=dict(setup.secret_headers),
        keep_headers=frozenset({setup.cost_header.lower()}) if setup.cost_header else frozenset(),
    )
    sent_at = clock.now()
    try:
        out = fn(job.payload, ctx)
    except ThrottledTaskError as exc:
        return _result(spec, Outcome.THROTTLED, exc, sent_at, clock, getattr(exc, "headers", None), setup, exc.retry_after_s)
    except PermanentTaskError as exc:
        return _result(spec, Outcome.PERMANENT, exc, sent_at, clock, getattr(exc, "headers", None), setup)
    except RetryableTaskError as exc:
        return _result(spec, Outcome.RETRYABLE, exc, sent_at, clock, getattr(exc, "headers", None), setup)
    except InvalidJob as exc:
        return JobResult(spec.id, Outcome.INVALID, str(exc))
    except Exception as exc:  # noqa: BLE001 - a custom task's bug is a retryable failure, not a crash
        logger.warning("task raised", extra={"job_id": spec.id, "task": job.task, "error": type(exc).__name__})
        return _result(
            spec, Outcome.RETRYABLE, RetryableTaskError(f"task raised {type(exc).__name__}"), sent_at, clock, None, setup
        )
    result = _result(spec, Outcome.SUCCEEDED, None, sent_at, clock, getattr(out, "headers", None), setup)
    if out is not None:
        result.status = getattr(out, "status", None)
    return result


def _result(
    spec: JobSpec,
    outcome: Outcome,
    error: Exception | None,
    sent_at: float,
    clock: Clock,
    headers: Mapping[str, str] | None,
    setup: CallSetup,
    retry_after_s: float | None = None,
) -> JobResult:
    now = clock.now()
    result = JobResult(
        spec.id,
        outcome,
        str(error) if error is not None else "",
        status=getattr(error, "status", None),
        retry_after_s=retry_after_s,
        sent_at=sent_at,
        duration_s=max(0.0, now - sent_at),
    )
    if headers:
        word = ratelimit.parse_api_word(headers, now)
        if word is not None:
            result.api = word.to_dict()
            if result.retry_after_s is None and word.retry_after_s is not None and outcome is Outcome.THROTTLED:
                result.retry_after_s = word.retry_after_s
        if setup.cost_header:
            result.cost_used = _cost(headers, setup.cost_header)
    return result


def _cost(headers: Mapping[str, str], name: str) -> int | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get(name.lower())
    if value is None:
        return None
    try:
        units = float(str(value).strip())
    except ValueError:
        return None
    if not 0 <= units <= 1e12:
        return None
    return int(-(-units // 1))  # whole units, rounded up
