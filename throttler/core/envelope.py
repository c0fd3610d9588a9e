"""The job envelope (SQS message body) and its validation, shared by producer, throttler and worker."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from throttler.core.errors import InvalidJob

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
# Deeper JSON than this is refused: the worker re-serialises a body, and Python's recursion limit (which depends
# on how deep the caller's stack already is) must never be what decides whether a job can be sent.
MAX_JSON_DEPTH = 64
_ID = re.compile(r"[\x21-\x7e]+")


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=128)
    payload: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, min_length=1, max_length=128)
    key: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[\x20-\x7e]+$")
    cost: int = Field(default=1, ge=1, le=10**12)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        # The id travels as the Idempotency-Key header and keys the state table: like a deduplication
        # id, it is printable ASCII without spaces (a newline or non-latin-1 text cannot be a header).
        if value is not None and not _ID.fullmatch(value):
            raise ValueError("id must be printable ASCII without spaces, like a deduplication id")
        return value


@dataclass(slots=True)  # not frozen: one per received message, and a frozen dataclass takes 4 times as long to make
class Job:
    """A validated job: what the worker runs."""

    job_id: str
    group: str
    task: str
    payload: dict[str, Any]
    key: str | None = None
    cost: int = 1


def reason_from(exc: ValidationError) -> str:
    """One readable line from a pydantic error: where and what."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


class TaskCatalog(Protocol):
    """The tasks a job may name and their payload validators (`throttler.tasks.registry.TaskRegistry`)."""

    @property
    def names(self) -> frozenset[str]: ...

    def validator(self, name: str) -> Callable[[dict[str, Any], Any], object] | None: ...


def parse_job(
    body: str,
    group: str,
    default_id: str,
    *,
    tasks: TaskCatalog,
    validation: Any,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Job:
    """Validate a message body; raises InvalidJob with a one-line reason.

    `tasks` names the known tasks and gives each one's payload validator, called as
    `validator(payload, validation)` (for the built-in tasks, `validation` is a
    `throttler.tasks.registry.ValidationContext`: allow-list, secret header names, body cap).
    """
    size = len(body.encode("utf-8"))
    if size > max_bytes:
        raise InvalidJob(f"message body is {size} bytes, over the {max_bytes}-byte limit")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidJob(f"body is not valid JSON: {str(exc)[:120]}") from exc
    if not isinstance(data, dict):
        raise InvalidJob("body must be a JSON object with task and payload")
    if _may_be_unsendable(body):
        check_sendable(data)
    try:
        envelope = Envelope.model_validate(data)
    except ValidationError as exc:
        raise InvalidJob(f"envelope {reason_from(exc)}") from exc
    if envelope.task not in tasks.names:
        raise InvalidJob(f"unknown task {envelope.task!r}")
    validate = tasks.validator(envelope.task)
    if validate is not None:
        try:
            validate(envelope.payload, validation)
        except InvalidJob:
            raise
        except ValidationError as exc:
            raise InvalidJob(f"{envelope.task} payload {reason_from(exc)}") from exc
        except Exception as exc:
            raise InvalidJob(f"{envelope.task} payload refused: {type(exc).__name__}: {str(exc)[:120]!r}") from exc
    return Job(envelope.id or default_id, group, envelope.task, envelope.payload, envelope.key, envelope.cost)


def _may_be_unsendable(body: str) -> bool:
    """Whether `check_sendable` could refuse what this body decodes to. The body itself encoded as UTF-8, so a lone
    surrogate can only come from a `\\u` escape; and nesting N levels deep takes at least N brackets."""
    return "\\u" in body or body.count("{") + body.count("[") > MAX_JSON_DEPTH


def check_sendable(data: Any) -> None:
    """Refuse decoded JSON that the worker could not send: nesting deeper than MAX_JSON_DEPTH, or a string with a
    lone surrogate (`"\\ud800"` is valid JSON but has no UTF-8 form). Iterative: a hostile body cannot exhaust
    the stack here."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidJob(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                if isinstance(k, str):
                    _check_text(k)
                stack.append((v, depth + 1))


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidJob("body holds a lone surrogate (e.g. \\ud800), which UTF-8 cannot carry") from None
