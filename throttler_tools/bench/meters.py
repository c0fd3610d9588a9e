"""What the benchmark counts: CPU per section of the simulation, and AWS requests by service and action.

CPU is `time.thread_time()` split into exclusive sections: a nested section's time is not charged to
the one it interrupts. A profiler, when given, runs only while the `throttler` section is innermost,
so its figures are the throttler's own code and nothing else.
"""

from __future__ import annotations

import cProfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

THROTTLER = "throttler"  # the throttler function's own code (its run's step, settling, planning)
WORKER = "worker"  # the worker function's own code (the batch state machine, the http task)
TWIN = "twin"  # the in-memory SQS model and state table (AWS's side, not the function's)
API = "api"  # the fake API answering
ENGINE = "engine"  # the event loop, the producers and the benchmark itself
STRATEGY = "strategy"  # seed-2019's and the floor's own code

# How long a request keeps the function that makes it busy (typical in-region latencies), for the billed
# duration of a function call whose virtual time does not include its requests (the twins answer at once).
AWS_LATENCY_S = {"sqs": 0.010, "dynamodb": 0.005, "TransactWriteItems": 0.010, "lambda": 0.020}


class CpuMeter:
    """Exclusive CPU time per section (thread CPU time, seconds)."""

    def __init__(self, profile_section: str | None = None) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[str] = [ENGINE]
        self.mark = time.thread_time()
        self.profile_section = profile_section
        self.profiler = cProfile.Profile() if profile_section else None

    def enter(self, label: str) -> None:
        now = time.thread_time()
        top = self.stack[-1]
        self.totals[top] += now - self.mark
        if self.profiler is not None and top == self.profile_section and label != top:
            self.profiler.disable()
        self.stack.append(label)
        if self.profiler is not None and label == self.profile_section and top != label:
            self.profiler.enable()
        self.mark = time.thread_time()

    def leave(self) -> None:
        now = time.thread_time()
        label = self.stack.pop()
        self.totals[label] += now - self.mark
        top = self.stack[-1]
        if self.profiler is not None and label == self.profile_section and top != label:
            self.profiler.disable()
        if self.profiler is not None and top == self.profile_section and label != top:
            self.profiler.enable()
        self.mark = time.thread_time()

    @contextmanager
    def section(self, label: str) -> Iterator[None]:
        self.enter(label)
        try:
            yield
        finally:
            self.leave()

    def close(self) -> dict[str, float]:
        now = time.thread_time()
        self.totals[self.stack[-1]] += now - self.mark
        self.mark = now
        return dict(self.totals)

# Client CPU per request when moto is not run (smoke tests only): this machine's figures, rounded.
FALLBACK_CLIENT_MS = 1.0

@dataclass
class Requests:
    """AWS requests by (service, action), with DynamoDB's request units, Lambda's payload bytes, the SQS
    requests' billed 64 KB chunks, and the requests each function made (for its modelled duration)."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    rru: float = 0.0  # DynamoDB read request units (strongly consistent: 1 per 4 KB per item)
    wru: float = 0.0  # DynamoDB write request units (1 per KB per item; transactions 2)
    sqs_chunks: int = 0  # SQS bills each 64 KB of a request's payload as one request
    invoke_bytes: int = 0
    by_caller: Counter[str] = field(default_factory=Counter)
    by_caller_action: Counter[tuple[str, str]] = field(default_factory=Counter)
    busy_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # modelled request time per function call
    caller: str = THROTTLER  # who makes the requests now: the throttler, the worker, or the producers
    caller_id: str = ""  # which run or worker invocation

    def add(self, service: str, action: str, n: int = 1, *, rru: float = 0.0, wru: float = 0.0, chunks: int = 0) -> None:
        if self.caller == "producer":
            self.counts[("producer", f"{service}:{action}")] += n
            return
        self.counts[(service, action)] += n
        self.by_caller[self.caller] += n
        self.by_caller_action[(self.caller, f"{service}:{action}")] += n
        self.busy_s[self.caller_id] += n * AWS_LATENCY_S.get(action, AWS_LATENCY_S[service])
        self.rru += rru
        self.wru += wru
        self.sqs_chunks += chunks if service == "sqs" else 0

    def total(self) -> int:
        return sum(n for (service, _), n in self.counts.items() if service != "producer")

    def by_action(self) -> dict[str, int]:
        return {f"{s}:{a}": n for (s, a), n in sorted(self.counts.items()) if s != "producer"}

    @contextmanager
    def as_caller(self, caller: str, caller_id: str = "") -> Iterator[None]:
        before = self.caller, self.caller_id
        self.caller, self.caller_id = caller, caller_id
        try:
            yield
        finally:
            self.caller, self.caller_id = before
