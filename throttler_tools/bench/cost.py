"""The bill, from measured figures: AWS list prices (us-east-1) applied to requests, request units and
Lambda GB-seconds that a benchmark run counted.

Prices as listed on the AWS pricing pages for us-east-1, checked on 29 Nov 2026 (the first pricing tier;
no free tier counted):
- Lambda (arm64): $0.0000133334 per GB-second, $0.20 per million requests (invocations).
- SQS FIFO: $0.50 per million requests; each 64 KB chunk of a request's payload is billed as one request.
- DynamoDB on-demand: $0.625 per million write request units, $0.125 per million read request units
  (since the price cut of 1 Nov 2024); a transactional write costs two units per KB.
- EventBridge: custom events (PutEvents) $1.00 per million (64 KB chunks); API destinations $0.20 per
  million invocations; scheduled rules (events from `aws.events`) are not charged.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

PRICES_CHECKED = "29 Nov 2026"
REGION = "us-east-1"
LAMBDA_GB_S = 0.0000133334
LAMBDA_REQUEST = 0.20e-6
SQS_FIFO_REQUEST = 0.50e-6
DDB_WRU = 0.625e-6
DDB_RRU = 0.125e-6
EVENTBRIDGE_EVENT = 1.00e-6
API_DESTINATION_INVOCATION = 0.20e-6
SEED_MEMORY_GB = 0.5  # the 2019 design's functions, as the old bench billed them
SECONDS_PER_MONTH = 30 * 86400
# Lambda gives a function CPU in proportion to its memory: one vCPU at 1,769 MB.
VCPU_MB = 1769
# A function should use at most half its CPU share while it runs: the bench measures CPU on this machine's
# cores, and Lambda's (Graviton) cores, a noisy neighbour or a burst of requests may be slower.
CPU_HEADROOM = 0.5
MEMORY_STEP_MB = 64


@functools.cache
def configured_memory_mb(function: str, stage: str = "prod") -> int:
    """A function's memorySize in serverless.yml for `stage` (params resolved)."""
    from throttler_tools import stackdef

    raw = stackdef.load_raw()
    size = raw["functions"][function].get("memorySize", raw["provider"].get("memorySize", 1024))
    return int(stackdef.resolve(size, stage, raw))


@dataclass(frozen=True)
class Sizing:
    """One function's memory: what serverless.yml configures, the CPU it was measured to use while it ran
    (in vCPUs, on this machine), and the memory it is billed at: the configured size, or more when that
    size's CPU share would be more than CPU_HEADROOM busy (the rate needs a bigger function)."""

    configured_mb: int
    busy_vcpu: float

    @property
    def needed_mb(self) -> int:
        raw = self.busy_vcpu / CPU_HEADROOM * VCPU_MB
        return max(128, math.ceil(raw / MEMORY_STEP_MB) * MEMORY_STEP_MB)

    @property
    def billed_mb(self) -> int:
        return max(self.configured_mb, self.needed_mb)

    @property
    def share_used(self) -> float:
        """How busy the configured size's CPU share is (at most CPU_HEADROOM to carry the rate)."""
        return self.busy_vcpu / (self.configured_mb / VCPU_MB)

    def describe(self) -> dict[str, Any]:
        return {
            "configured_mb": self.configured_mb,
            "busy_vcpu": round(self.busy_vcpu, 4),
            "share_used": round(self.share_used, 3),
            "billed_mb": self.billed_mb,
        }


def sizing(function: str, cpu_s: float, billed_s: float) -> Sizing:
    return Sizing(configured_memory_mb(function), cpu_s / billed_s if billed_s > 0 else 0.0)


@dataclass(frozen=True)
class Bill:
    """Dollars for one run of the benchmark, by line."""

    lambda_requests: float = 0.0
    lambda_gb_s: float = 0.0
    sqs: float = 0.0
    dynamodb: float = 0.0
    eventbridge: float = 0.0
    producers: float = 0.0  # enqueueing the jobs (SendMessageBatch, or PutEvents)

    @property
    def dispatch(self) -> float:
        return self.lambda_requests + self.lambda_gb_s + self.sqs + self.dynamodb + self.eventbridge

    @property
    def total(self) -> float:
        return self.dispatch + self.producers

    def per_million(self, jobs: int) -> dict[str, float]:
        scale = 1e6 / max(1, jobs)
        lines = {
            name: getattr(self, name) * scale
            for name in ("lambda_requests", "lambda_gb_s", "sqs", "dynamodb", "eventbridge", "producers")
        }
        return {
            **{k: round(v, 4) for k, v in lines.items()},
            "dispatch": round(self.dispatch * scale, 4),
            "total": round(self.total * scale, 4),
        }


def bill(
    *, sqs_chunks: int, rru: float, wru: float, lambda_invocations: int, gb_s: float, producer_sqs_requests: int = 0
) -> Bill:
    """The bill of a run of the throttler or of seed-2019 (both on SQS, Lambda and, for the throttler, DynamoDB);
    `gb_s`: each function's billed seconds times its memory in GB."""
    return Bill(
        lambda_requests=lambda_invocations * LAMBDA_REQUEST,
        lambda_gb_s=gb_s * LAMBDA_GB_S,
        sqs=sqs_chunks * SQS_FIFO_REQUEST,
        dynamodb=rru * DDB_RRU + wru * DDB_WRU,
        producers=producer_sqs_requests * SQS_FIFO_REQUEST,
    )


def api_destinations(jobs: int, invocations: int | None = None) -> Bill:
    """EventBridge API destinations for the same work: one PutEvents entry per job (producers) and one
    API destination invocation per call (no Lambda, no queue; a retry is one more invocation)."""
    return Bill(
        eventbridge=(invocations if invocations is not None else jobs) * API_DESTINATION_INVOCATION,
        producers=jobs * EVENTBRIDGE_EVENT,
    )


def monthly(bill_for_span: Bill, span_s: float) -> dict[str, float]:
    """A bill measured over `span_s` seconds, scaled to a 30-day month."""
    scale = SECONDS_PER_MONTH / span_s
    lines = {name: getattr(bill_for_span, name) * scale for name in ("lambda_requests", "lambda_gb_s", "sqs", "dynamodb")}
    return {**{k: round(v, 4) for k, v in lines.items()}, "total": round(bill_for_span.dispatch * scale, 2)}


def prices() -> dict[str, Any]:
    return {
        "region": REGION,
        "checked": PRICES_CHECKED,
        "lambda_arm64_per_gb_s": LAMBDA_GB_S,
        "lambda_per_million_requests": LAMBDA_REQUEST * 1e6,
        "sqs_fifo_per_million_requests": SQS_FIFO_REQUEST * 1e6,
        "dynamodb_per_million_wru": DDB_WRU * 1e6,
        "dynamodb_per_million_rru": DDB_RRU * 1e6,
        "eventbridge_per_million_events": EVENTBRIDGE_EVENT * 1e6,
        "api_destinations_per_million_invocations": API_DESTINATION_INVOCATION * 1e6,
        "memory_mb": {f: configured_memory_mb(f) for f in ("throttler", "worker")},
        "seed_2019_memory_gb": SEED_MEMORY_GB,
        "vcpu_mb": VCPU_MB,
        "cpu_headroom": CPU_HEADROOM,
    }
