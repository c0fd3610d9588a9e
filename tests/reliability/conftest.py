"""The reliability campaign's rig: proxies that kill, fail or audit the collaborators of a run.

Every collaborator a run is built from (the SQS and DynamoDB clients, the JobQueue, the StateStore,
the invoker, the worker's store and its HTTP session) is wrapped in a `Tap`, which lets hooks act
before and after each method call: `Crash` kills the whole simulated process at one chosen call,
`Fault` raises a chosen error there, `ReservationAudit` and `LeaseAudit` watch what happens.
`account()` then checks the campaign's invariants from the outside (the fake API's own records and
the queues), and the `campaign` fixture collects the figures published in the README's Reliability section.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from freezegun import freeze_time
from moto import mock_aws
from throttler.dispatcher import RunSummary, ThrottlerRun
from throttler.invoker import InProcessInvoker

from tests.conftest import START, Stage
from throttler.composition import build_run, build_worker
from throttler.core.clock import Clock, FakeClock
from throttler.core.pacing import Ledger
from throttler.worker import RECORD_EVERY_S, InlineExecutor, WorkerService
from throttler_tools.fakeapi import FakeApi, session_for
from throttler_tools.moto_patches import FrozenTime, patch_moto_fifo_order, quick_emulator
from throttler_tools.provision import provision

AUDIT_LEDGER_S = 60  # a standing ledger: every reserved slot is counted in it exactly once
LEASE_WAIT_S = 150.0  # longer than a crashed run's lease (57 + 40 + 10 s) and its messages' visibility


class ProcessDied(BaseException):
    """The simulated process is gone. A BaseException, like SystemExit, so that no `except Exception`
    in the code under test swallows it: the run stops exactly where a real crash would stop it."""


class Hook:
    """Acts around each call that goes through a Tap; `op` is '<component>.<method>'."""

    def before(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        return None

    def after(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        return None


class Tap:
    """A transparent proxy: method calls go through the hooks, everything else is passed on."""

    def __init__(self, target: Any, name: str, hooks: Sequence[Hook]):
        self._target = target
        self._name = name
        self._hooks = hooks

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._target, attr)
        if attr.startswith("_") or not callable(value):
            return value
        op = f"{self._name}.{attr}"

        def call(*args: Any, **kwargs: Any) -> Any:
            for hook in self._hooks:
                hook.before(op, args, kwargs)
            result = value(*args, **kwargs)
            for hook in self._hooks:
                hook.after(op, args, kwargs, result)
            return result

        return call


Match = Callable[[tuple[Any, ...], dict[str, Any], Any], bool]


@dataclass
class Crash(Hook):
    """The process dies at the `nth` matching call of `op`, before or after it took effect; from then
    on every call through any Tap raises too (the throttler's `finally` gets nowhere, as in a real crash)."""

    op: str
    nth: int = 1
    when: str = "after"  # "before": the call never happens; "after": it happened, its caller never learns
    match: Match | None = None
    seen: int = 0
    dead: bool = False
    fatal: tuple[tuple[Any, ...], dict[str, Any]] | None = None  # the arguments of the call it died at

    def before(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.dead:
            raise ProcessDied(f"process is dead (crashed at {self.op} #{self.nth})")
        if self.when == "before":
            self._maybe_die(op, args, kwargs, None)

    def after(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if self.when == "after" and not self.dead:
            self._maybe_die(op, args, kwargs, result)

    def _maybe_die(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if op != self.op or (self.match is not None and not self.match(args, kwargs, result)):
            return
        self.seen += 1
        if self.seen == self.nth:
            self.dead, self.fatal = True, (args, kwargs)
            raise ProcessDied(f"crashed {self.when} {op} #{self.nth}")


@dataclass
class Fault(Hook):
    """Raise `error()` instead of making the matching calls whose ordinal is in `calls` (1-based)."""

    op: str
    calls: Callable[[int], bool]
    error: Callable[[str], BaseException]
    match: Match | None = None
    seen: int = 0
    injected: int = 0

    def before(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if op != self.op or (self.match is not None and not self.match(args, kwargs, None)):
            return
        self.seen += 1
        if self.calls(self.seen):
            self.injected += 1
            raise self.error(op)


def client_error(code: str, status: int = 400) -> Callable[[str], ClientError]:
    """A botocore ClientError as the service returns it once botocore's own retries are spent."""

    def make(op: str) -> ClientError:
        error = {"Code": code, "Message": f"injected {code}"}
        response: Any = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(response, op.split(".")[-1])

    return make


def call_range(first: int, last: int) -> Callable[[int], bool]:
    return lambda n: first <= n <= last


def to_queue(url_key: str, stage: Stage) -> Match:
    url = stage.env[url_key]
    return lambda args, kwargs, result: kwargs.get("QueueUrl") == url


def key_prefix(prefix: str) -> Match:
    """DynamoDB calls on items whose partition key starts with `prefix` (usage, lease, attempts#...)."""

    def match(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> bool:
        key = kwargs.get("Key") or kwargs.get("Item") or {}
        return str(key.get("pk", {}).get("S", "")).startswith(prefix)

    return match


class ReservationAudit(Hook):
    """Nothing reaches the API without a reservation, checked two ways at each API call:
    - the call leaves inside a slot the throttler handed to the worker for that job
      ([not_before, not_after] of a dispatched batch), and
    - the calls that arrived in its bucket of the 60 s ledger do not outnumber the slots a *successful*
      (conditional) usage write had reserved there by then.
    Put it after any hook that fails calls before they leave: it must only see calls the API receives."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.ledger = Ledger(AUDIT_LEDGER_S)
        self.reserved: dict[int, int] = {}
        self.arrivals: Counter[int] = Counter()
        self.slots: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.calls = 0
        self.outside_slot = 0
        self.over_reserved = 0
        self._lock = threading.Lock()

    @property
    def unreserved(self) -> int:
        return self.outside_slot + self.over_reserved

    def after(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if op == "store.save_usage" and result is True:
            with self._lock:
                for idx, count in json.loads(args[1]).get(str(AUDIT_LEDGER_S), []):
                    self.reserved[idx] = max(self.reserved.get(idx, 0), count)

    def before(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with self._lock:
            if op == "invoker.submit":
                for job in args[0]["jobs"]:
                    self.slots[job["id"]].append((job["not_before"], job["not_after"]))
            elif op == "api.request":
                now = self.clock.now()
                key = kwargs["headers"].get("Idempotency-Key", "")
                if not any(start <= now <= end for start, end in self.slots.get(key, [])):
                    self.outside_slot += 1
                idx = self.ledger.index(now)
                self.arrivals[idx] += 1
                self.calls += 1
                if self.arrivals[idx] > self.reserved.get(idx, 0):
                    self.over_reserved += 1


class LeaseAudit(Hook):
    """Counts lease holders whose lease is live at once (acquire/release through the throttler's store)."""

    def __init__(self) -> None:
        self.expires: dict[str, float] = {}
        self.max_live = 0
        self.granted = 0
        self.refused = 0
        self._lock = threading.Lock()

    def after(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        with self._lock:
            if op == "store.acquire_lease":
                owner, now, ttl_s = args
                if not result:
                    self.refused += 1
                    return
                self.granted += 1
                self.expires[owner] = now + ttl_s
                live = [o for o, until in self.expires.items() if until > now]
                self.max_live = max(self.max_live, len(live))
            elif op == "store.release_lease":
                self.expires.pop(args[0], None)


# ------------------------------------------------------------------------------------------- the rig
@dataclass
class Rig:
    """Builds throttler runs on a stage with every collaborator tapped by the same hooks."""

    stage: Stage
    hooks: list[Hook] = field(default_factory=list)
    clock: Clock | None = None
    api: FakeApi | None = None
    invoker_for: Callable[[WorkerService], Any] | None = None  # replaces InProcessInvoker(worker.run_batch)
    wrap_store: Callable[[Any], Any] | None = None  # wraps the throttler's StateStore (inside the tap)
    wrap_sqs: Callable[[Any], Any] | None = None  # wraps the SQS client (to fake partial batch failures)

    def worker(self) -> WorkerService:
        stage, hooks = self.stage, self.hooks
        sqs, ddb = Tap(stage.sqs, "sqs", hooks), Tap(stage.dynamodb, "dynamodb", hooks)
        clients = {"sqs": sqs, "dynamodb": ddb}
        worker = build_worker(
            stage.settings,
            clock=self.clock or stage.clock,
            get_client=clients.__getitem__,
            session=Tap(session_for(self.api or stage.api), "api", hooks),  # type: ignore[arg-type]
            executor_factory=lambda n: InlineExecutor(),
        )
        worker.store = Tap(worker.store, "worker_store", hooks)  # type: ignore[assignment]
        return worker

    def build(self, owner: str | None = None) -> ThrottlerRun:
        stage, hooks = self.stage, self.hooks
        raw_sqs = self.wrap_sqs(stage.sqs) if self.wrap_sqs else stage.sqs
        sqs, ddb = Tap(raw_sqs, "sqs", hooks), Tap(stage.dynamodb, "dynamodb", hooks)
        clients = {"sqs": sqs, "dynamodb": ddb}
        worker = self.worker()
        invoker = self.invoker_for(worker) if self.invoker_for else InProcessInvoker(worker.run_batch)
        run = build_run(
            stage.settings,
            invoker=Tap(invoker, "invoker", hooks),  # type: ignore[arg-type]
            clock=self.clock or stage.clock,
            get_client=clients.__getitem__,
            owner=owner,
        )
        store = self.wrap_store(run.store) if self.wrap_store else run.store
        run.store = Tap(store, "store", hooks)  # type: ignore[assignment]
        run.queue = Tap(run.queue, "queue", hooks)  # type: ignore[assignment]
        return run

    def run(self, seconds: float = 57.0) -> RunSummary:
        clock = self.clock or self.stage.clock
        return self.build().run(clock.now() + seconds)


@dataclass
class Scheduler:
    """What EventBridge and Lambda do: a run every minute; a run that raised is just a failed invocation."""

    stage: Stage
    runs: int = 0
    failures: list[BaseException] = field(default_factory=list)
    summaries: list[RunSummary] = field(default_factory=list)

    def drain(self, rig: Callable[[], Rig], max_runs: int = 40, gap_s: float = 3.0) -> None:
        for _ in range(max_runs):
            self.runs += 1
            try:
                summary = rig().run()
            except (Exception, ProcessDied) as exc:
                self.failures.append(exc)
                self.stage.advance(60.0)
                continue
            self.summaries.append(summary)
            if summary.lease_held_elsewhere:
                self.stage.advance(60.0)
                continue
            if self.stage.depth() == 0:
                return
            self.stage.advance(gap_s)
        raise AssertionError(f"queue not drained after {max_runs} runs: depth {self.stage.depth()}")


# ------------------------------------------------------------------------------------------- accounting
@dataclass
class Tally:
    """What the campaign publishes for one case."""

    enqueued: int
    succeeded: int
    dead_lettered: int
    still_queued: int
    lost: int
    duplicates: int  # repeated successful calls (same Idempotency-Key) plus jobs dead-lettered twice
    violations: int  # calls the API judged over a tier, plus windows over a limit, plus unreserved calls
    order_violations: int
    api_calls: int
    repeated_keys: dict[str, int] = field(default_factory=dict)
    dlq: dict[str, dict[str, str]] = field(default_factory=dict)

    def assert_safe(self, allowed_repeats: dict[str, int] | None = None) -> None:
        assert self.lost == 0, self
        assert self.still_queued == 0, self
        assert self.succeeded + self.dead_lettered == self.enqueued, self
        assert self.violations == 0, self
        assert self.order_violations == 0, self
        allowed = allowed_repeats or {}
        assert all(n <= allowed.get(k, 0) for k, n in self.repeated_keys.items()), self.repeated_keys
        assert self.duplicates == sum(self.repeated_keys.values()), self


RECORD_SLACK_S = 0.1  # records are written when the worker next turns round: within a call interval


def assert_lost_records_bounded(tally: Tally, api: FakeApi, died_at: Sequence[float]) -> None:
    """A worker that dies loses only the success records it had not written yet. It writes them
    together, at most RECORD_EVERY_S after a success, and always before it calls the next job of the
    same group. So the calls repeated after it died: first succeeded shortly before a death, are each
    their group's latest success at that death (the repeat cannot come after a later job of the
    group), and went again once, with the same Idempotency-Key (the repeat is keyed by it)."""
    first_success: dict[str, Any] = {}
    for call in api.calls:
        if call.key is not None and 200 <= call.status < 300:
            first_success.setdefault(call.key, call)
    for key, repeats in tally.repeated_keys.items():
        assert repeats == 1, (key, repeats)
        first = first_success[key]
        deaths = [t for t in died_at if t - RECORD_EVERY_S - RECORD_SLACK_S <= first.at <= t]
        assert deaths, (key, first.at, died_at)
        later_in_group = [
            c for c in api.calls
            if c.group == first.group and c.key != key and 200 <= c.status < 300 and first.at < c.at <= deaths[0]
        ]
        assert later_in_group == [], (key, later_in_group)


def dlq_records(stage: Stage) -> list[dict[str, str]]:
    """Every message in the DLQ, read by receiving and deleting (so: once, at the end of a test).

    Only a destructive read sees them all: in a FIFO queue, a group's later messages stay hidden while
    an earlier one is in flight, so a receive loop that leaves messages in place misses any that do
    not come back in the same batch as the first of their group.
    """
    records = []
    url = stage.env["DLQ_URL"]
    while True:
        messages = stage.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60,
            MessageAttributeNames=["All"], MessageSystemAttributeNames=["MessageGroupId"],
        ).get("Messages", [])
        if not messages:
            return records
        for m in messages:
            records.append({
                "job_id": m["MessageAttributes"]["job_id"]["StringValue"],
                "reason": m["MessageAttributes"]["error_reason"]["StringValue"],
                "attempts": m["MessageAttributes"]["attempts"]["StringValue"],
                "group": m["Attributes"]["MessageGroupId"],
                "body": m["Body"],
            })
        stage.sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        )


def account(
    stage: Stage,
    job_ids: Sequence[str],
    *,
    tiers: Sequence[tuple[float, int]],
    audit: ReservationAudit | None = None,
    api: FakeApi | None = None,
) -> Tally:
    api = api or stage.api
    successes = api.successes_by_key()
    records = dlq_records(stage)
    dlq_ids = Counter(r["job_id"] for r in records)
    enqueued = set(job_ids)
    assert len(enqueued) == len(job_ids), "job ids must be unique"
    succeeded = set(successes) & enqueued
    dead = set(dlq_ids) & enqueued
    assert set(successes) <= enqueued, f"unknown keys called: {set(successes) - enqueued}"
    repeated = {k: n - 1 for k, n in successes.items() if n > 1}
    over = sum(1 for window_s, limit in tiers if api.max_in_window(window_s) > limit)
    return Tally(
        enqueued=len(enqueued),
        succeeded=len(succeeded - dead),
        dead_lettered=len(dead),
        still_queued=stage.depth(),
        lost=len(enqueued - succeeded - dead),
        duplicates=sum(repeated.values()) + sum(n - 1 for n in dlq_ids.values()) + len(succeeded & dead),
        violations=api.violations + over + (audit.unreserved if audit else 0),
        order_violations=api.order_violations,
        api_calls=len(api.calls),
        repeated_keys=repeated,
        dlq={r["job_id"]: r for r in records},
    )


# ------------------------------------------------------------------------------------------- figures
@dataclass
class Campaign:
    """Figures per fault class, written to $RELIABILITY_REPORT (JSON) when set."""

    rows: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(lambda: {
        "cases": 0, "jobs": 0, "lost": 0, "duplicates": 0, "violations": 0, "api_calls": 0,
        "repeated_same_key": 0, "outcomes": Counter(), "seconds": 0.0,
    }))

    def record(
        self, fault_class: str, tally: Tally, outcome: str, repeated_same_key: int = 0, started: float | None = None
    ) -> None:
        row = self.rows[fault_class]
        if started is not None:
            row["seconds"] += wall_clock() - started
        row["cases"] += 1
        row["jobs"] += tally.enqueued
        row["lost"] += tally.lost
        row["duplicates"] += tally.duplicates - repeated_same_key
        row["repeated_same_key"] += repeated_same_key
        row["violations"] += tally.violations + tally.order_violations
        row["api_calls"] += tally.api_calls
        row["outcomes"][outcome] += 1


@pytest.fixture(scope="session")
def campaign() -> Iterator[Campaign]:
    figures = Campaign()
    yield figures
    path = os.environ.get("RELIABILITY_REPORT")
    if path:
        merged: dict[str, Any] = {}
        if os.path.exists(path):
            with open(path) as fh:
                merged = json.load(fh)
        for name, row in figures.rows.items():
            merged[name] = {**row, "outcomes": dict(row["outcomes"]), "seconds": round(row["seconds"], 2)}
        with open(path, "w") as fh:
            json.dump(merged, fh, indent=2, sort_keys=True)


def wall_clock() -> float:
    """Real elapsed seconds, unaffected by freezegun (for the figures only, never asserted on)."""
    return os.times().elapsed


# ------------------------------------------------------------------------------------------- stages
@pytest.fixture(autouse=True)
def fifo_order_in_moto() -> None:
    """moto 5.2 can hand out a FIFO group's later message first after a release; SQS never does."""
    patch_moto_fifo_order()


@pytest.fixture(autouse=True)
def fast_moto_sqs() -> Iterator[None]:
    """Speed only: moto's SQS reads freezegun's instant directly and counts a queue only when asked."""
    with quick_emulator(FrozenTime()):
        yield


@contextmanager
def fresh_stage(default_quotas: str = "second=20 minute=600", tiers: Sequence[tuple[float, int]] = ((1, 20), (60, 600)),
                **env: str) -> Iterator[Stage]:
    """The `stage` fixture as a context manager, for hypothesis examples that each need a clean stage."""
    with freeze_time(START) as frozen, mock_aws():
        clock = FakeClock(start=time.time(), on_advance=lambda s: frozen.tick(s))
        sqs = boto3.client("sqs", region_name="us-east-1")
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        stage_env = provision(sqs, dynamodb, "local")
        stage_env.update({"DEFAULT_QUOTAS": default_quotas, "RETRY_BASE_S": "5", **env})
        yield Stage(frozen, clock, sqs, dynamodb, stage_env, FakeApi(tiers=list(tiers), clock=clock))


STAGE_TIERS = ((1, 20), (60, 600))  # the `stage` fixture's default quotas, enforced by its fake API
