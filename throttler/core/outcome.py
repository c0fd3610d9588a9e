"""What a worker reports for each job: plain data that crosses the Lambda boundary."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"  # 2xx (or already succeeded before: `duplicate`)
    THROTTLED = "throttled"  # 429: pause everyone, spend no attempt
    RETRYABLE = "retryable"  # 408, 5xx, timeouts, connection errors: try again later
    PERMANENT = "permanent"  # other 4xx, 3xx: dead-letter now
    INVALID = "invalid"  # the message can never run: dead-letter now, no call was made
    SKIPPED = "skipped"  # not attempted (an earlier job of its group stopped, a 429, or too late)


@dataclass
class JobResult:
    job_id: str
    outcome: Outcome
    reason: str = ""
    status: int | None = None
    retry_after_s: float | None = None
    sent_at: float | None = None
    duration_s: float | None = None
    duplicate: bool = False
    api: dict[str, Any] | None = None  # what the API's rate-limit headers said (ratelimit.ApiWord.to_dict())
    cost_used: int | None = None  # units the API says the call used (the quota item's cost_header)

    @property
    def attempted(self) -> bool:
        """A call reached (or may have reached) the API."""
        return self.outcome in (Outcome.SUCCEEDED, Outcome.THROTTLED, Outcome.RETRYABLE, Outcome.PERMANENT) and not self.duplicate

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return {k: v for k, v in data.items() if v is not None and v != "" and v is not False}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "outcome": Outcome(data["outcome"])})
