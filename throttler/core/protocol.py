"""The typed contract between the throttler and the worker: one batch request, one batch response.

Both travel as JSON through Lambda's synchronous invoke. Sizes are counted the way Lambda counts them:
the bytes of the UTF-8 JSON actually sent (`ensure_ascii=False`: a non-ASCII character is 2 to 4 bytes,
never a 6-byte escape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from throttler.core.outcome import JobResult

LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024  # synchronous invoke, request and response
# A batch stays this far under the limit: room for the request's own fields and JSON punctuation.
MAX_BATCH_BYTES = LAMBDA_PAYLOAD_LIMIT - 64 * 1024


def encode(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def text_bytes(text: str) -> int:
    """Bytes of a string in the JSON that `encode` writes: quoted and escaped (as `ensure_ascii=False` escapes), UTF-8."""
    escaped: str = encode_basestring(text)
    return len(escaped) if escaped.isascii() else len(escaped.encode("utf-8"))


# A JobSpec's JSON (`to_dict`, encoded) without its values.
_JOB_FRAME_BYTES = len('{"id":,"group":,"body":,"nb":,"na":}')


@dataclass(slots=True)  # not frozen: one per job sent, and a frozen dataclass takes 4 times as long to make
class JobSpec:
    """One job of a batch: send it inside `[not_before, not_after]` or not at all."""

    id: str
    group: str
    body: str
    not_before: float
    not_after: float
    key: str | None = None
    cost: int = 1

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "group": self.group,
            "body": self.body,
            "nb": self.not_before,
            "na": self.not_after,
        }
        if self.key is not None:
            data["key"] = self.key
        if self.cost != 1:
            data["cost"] = self.cost
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(
            str(data["id"]),
            str(data["group"]),
            str(data["body"]),
            float(data["nb"]),
            float(data["na"]),
            data.get("key"),
            int(data.get("cost", 1)),
        )

    def size_bytes(self) -> int:
        """Bytes this job adds to a batch request: `len(encode(self.to_dict())) + 1` (its JSON, plus a separator),
        added up field by field: the throttler sizes every message it receives, and encoding each as a whole
        would cost it more than reading the message did."""
        size = _JOB_FRAME_BYTES + text_bytes(self.id) + text_bytes(self.group) + text_bytes(self.body)
        size += len(repr(self.not_before)) + len(repr(self.not_after))  # how json writes a (finite) number
        if self.key is not None:
            size += len(',"key":') + text_bytes(self.key)
        if self.cost != 1:
            size += len(',"cost":') + len(repr(self.cost))
        return size + 1


@dataclass(frozen=True)
class BatchRequest:
    batch_id: str
    run_id: str
    jobs: tuple[JobSpec, ...]
    # Earlier batches still unsettled when this one was sent: until each is final, a 429 they meet must
    # stop this batch too, so the worker watches the shared throttle record (and their records).
    watch: tuple[str, ...] = ()
    planned_at: float = 0.0  # the throttler knew of every 429 recorded before this
    pool_size: int = 0  # calls at once the worker should allow (0: its own default)
    cost_header: str | None = None  # the response header that says how many units a call used
    key_scoped_429: bool = False  # signals_scope=key: a 429 on a keyed job stops only that key
    watch_throttle: bool = False  # a long batch: look at the shared throttle record (429s, an operator's pause)
    api_policy: bool = False  # the plan follows a policy the API stated: its remaining counts need not stop calls

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "batch": self.batch_id,
            "run": self.run_id,
            "jobs": [j.to_dict() for j in self.jobs],
            "planned_at": self.planned_at,
        }
        if self.watch:
            data["watch"] = list(self.watch)
        if self.pool_size:
            data["pool"] = self.pool_size
        if self.cost_header:
            data["cost_header"] = self.cost_header
        if self.key_scoped_429:
            data["key_scoped_429"] = True
        if self.watch_throttle:
            data["watch_throttle"] = True
        if self.api_policy:
            data["api_policy"] = True
        return encode(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchRequest:
        return cls(
            str(data.get("batch", "")),
            str(data.get("run", "")),
            tuple(JobSpec.from_dict(j) for j in data.get("jobs", [])),
            tuple(str(b) for b in data.get("watch", ())),
            float(data.get("planned_at", 0.0)),
            int(data.get("pool", 0)),
            data.get("cost_header"),
            bool(data.get("key_scoped_429", False)),
            bool(data.get("watch_throttle", False)),
            bool(data.get("api_policy", False)),
        )


class BatchStatus(StrEnum):
    RAN = "ran"
    DUPLICATE = "duplicate"  # this batch was already claimed: another delivery of the same invoke
    SECRETS_UNAVAILABLE = "secrets_unavailable"  # the worker's failure, not the jobs': nothing was called


@dataclass
class BatchResponse:
    batch_id: str
    status: BatchStatus
    results: list[JobResult] = field(default_factory=list)
    watched_final: tuple[str, ...] = ()  # watched batches the worker saw finish
    throttled_at: float | None = None  # when a 429 (here or in a watched batch) stopped this batch
    error: str = ""
    # Successes the worker could not write to its batch record: the throttler records them before anything else,
    # or a crash before their deletes would call them again.
    unrecorded: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "batch": self.batch_id,
            "status": self.status.value,
            "results": [r.to_dict() for r in self.results],
        }
        if self.watched_final:
            data["watched_final"] = list(self.watched_final)
        if self.throttled_at is not None:
            data["throttled_at"] = self.throttled_at
        if self.error:
            data["error"] = self.error
        if self.unrecorded:
            data["unrecorded"] = list(self.unrecorded)
        return encode(data)

    def to_dict(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.to_json())
        return loaded

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchResponse:
        return cls(
            str(data["batch"]),
            BatchStatus(data["status"]),
            [JobResult.from_dict(r) for r in data.get("results", [])],
            tuple(data.get("watched_final", ())),
            data.get("throttled_at"),
            str(data.get("error", "")),
            tuple(str(j) for j in data.get("unrecorded", ())),
        )
