"""The job envelope (SQS message body) and its validation, shared by producer, throttler and worker."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from throttler.core.errors import InvalidJob

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
_ID = re.compile(r"[\x21-\x7e]+")
MAX_TIMEOUT_S = 30.0
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


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


class HttpPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: str
    url: str = Field(min_length=1, max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    data: str | dict[str, Any] | None = None
    timeout: float = Field(default=10.0, gt=0, le=MAX_TIMEOUT_S)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value.upper() not in HTTP_METHODS:
            raise ValueError(f"method must be one of {', '.join(HTTP_METHODS)}")
        return value.upper()

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an absolute http(s) URL with a host")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpPayload:
        if self.json_body is not None and self.data is not None:
            raise ValueError("give json or data, not both")
        return self


@dataclass(frozen=True)
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


def host_allowed(url: str, allowed_hosts: tuple[str, ...]) -> bool:
    """Exact host, `host:port`, or `*.domain` suffix; `*` allows any host."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port
    for entry in allowed_hosts:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.partition(":") if not entry.startswith("[") else (entry, "", "")
        if entry_port and str(port) != entry_port:
            continue
        if name.startswith("*.") and host.endswith(name[1:]):
            return True
        if host == name:
            return True
    return False


def parse_job(
    body: str,
    group: str,
    default_id: str,
    *,
    known_tasks: frozenset[str] | set[str],
    allowed_hosts: tuple[str, ...],
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Job:
    """Validate a message body; raises InvalidJob with a one-line reason."""
    size = len(body.encode("utf-8"))
    if size > max_bytes:
        raise InvalidJob(f"message body is {size} bytes, over the {max_bytes}-byte limit")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidJob(f"body is not valid JSON: {str(exc)[:120]}") from exc
    if not isinstance(data, dict):
        raise InvalidJob("body must be a JSON object with task and payload")
    try:
        envelope = Envelope.model_validate(data)
    except ValidationError as exc:
        raise InvalidJob(f"envelope {reason_from(exc)}") from exc
    if envelope.task not in known_tasks:
        raise InvalidJob(f"unknown task {envelope.task!r}")
    if envelope.task == "http":
        payload = validate_http_payload(envelope.payload, allowed_hosts)
        del payload  # validated here; the worker builds the request from the same model
    return Job(envelope.id or default_id, group, envelope.task, envelope.payload, envelope.key, envelope.cost)


def validate_http_payload(payload: dict[str, Any], allowed_hosts: tuple[str, ...]) -> HttpPayload:
    try:
        model = HttpPayload.model_validate(payload)
    except ValidationError as exc:
        raise InvalidJob(f"http payload {reason_from(exc)}") from exc
    if not host_allowed(model.url, allowed_hosts):
        raise InvalidJob(f"host {urlsplit(model.url).hostname!r} is not in ALLOWED_HOSTS")
    return model
