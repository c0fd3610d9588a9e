"""One batch on its way to the API, as a state machine (pure: no I/O, no clock of its own).

A batch holds chains, one per group, in queue order; each job carries a slot `[not_before, not_after]`
and is started inside it or not at all (SKIPPED, rescheduled by the throttler): starting later could
bunch calls past what the reservation allowed. A group's chain stops at its first job that does not
succeed; a 429 stops every chain (or, with key-scoped signals, that key's), and so does a 429 that
another batch publishes while this one still watches the batches sent before it.

`step(now)` says which jobs to start now, whether to look at the shared throttle record first, which
records to write, and when to be called again; the driver (worker/service.py in production, the
simulation in virtual time) does the I/O and feeds results back with `on_result` and `on_watch`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from throttler.core.outcome import JobResult, Outcome
from throttler.core.pacing import ApiBudget
from throttler.core.protocol import BatchRequest, JobSpec
from throttler.store.base import ThrottleSignal

# Successes are recorded at most this long after they happen (and always before the worker returns):
# a worker that dies mid-batch can repeat at most this much, each call with its Idempotency-Key.
RECORD_EVERY_S = 1.0
# While an earlier batch may still meet a 429, look at the shared throttle record at least this often
# before starting a call: no call leaves more than a second after a 429 reached any worker.
WATCH_EVERY_S = 0.8
# A long batch with no earlier batch left to watch looks at the shared record only for an operator's pause,
# which the run mirrors there within CONTROL_REFRESH_S (2 s): its calls stop within 2 + 2.5 s of the pause
# (SPEC: 5 s). No other batch's 429 can call for sooner: every batch's slots follow those of the batches
# sent before it (batching.py), and those it watches until their records are final.
PAUSE_LOOK_EVERY_S = 2.5
# Look this long before a slot (a read takes a few milliseconds; a call may leave only a little late).
WATCH_LEAD_S = 0.1


@dataclass
class Step:
    start: list[JobSpec] = field(default_factory=list)
    poll_watch: bool = False  # read the throttle record (and the watched batches) before going on
    # 429s met here: publish them to every worker and run at once (each in its scope: two keys' 429s, or a
    # key's and the stage's, met before one step are both published)
    publish: list[ThrottleSignal] = field(default_factory=list)
    record: tuple[list[str], list[str]] | None = None  # (succeeded, called) ids to add to the batch record
    wake_at: float | None = None  # call step again then (None: only when a call finishes)
    finished: bool = False


class BatchExecution:
    def __init__(self, request: BatchRequest):
        self.request = request
        self.pending: dict[str, deque[JobSpec]] = {}
        for spec in sorted(request.jobs, key=lambda j: j.not_before):
            self.pending.setdefault(spec.group, deque()).append(spec)
        self.key_of = {j.id: j.key for j in request.jobs}
        self.running: dict[str, JobSpec] = {}  # group -> its job in flight
        self.results: dict[str, JobResult] = {}
        self.stopped: dict[str, str] = {}  # group -> why its chain stopped
        self.stopped_keys: dict[str, str] = {}  # key -> why (key-scoped 429)
        self.stop_all = ""
        self.throttled_at: float | None = None
        self.met_429: ThrottleSignal | None = None  # the 429 of its own calls that ends last (in its final record)
        self._unrecorded_ok: list[tuple[float, str]] = []
        self._unrecorded_called: list[str] = []
        self._to_publish: list[ThrottleSignal] = []
        self._watching = set(request.watch)
        self.watched_final: set[str] = set()
        self._last_watch: float | None = None
        self._budgets: dict[str | None, ApiBudget] = {}  # by key when 429s and headers are key-scoped
        self._started: list[tuple[float, str | None]] = []  # (start time, key) of every call started

    # ------------------------------------------------------------------ the driver calls these
    def step(self, now: float) -> Step:
        out = Step()
        out.publish, self._to_publish = self._to_publish, []
        wake: float | None = None
        for group in list(self.pending):
            queue = self.pending[group]
            while queue and group not in self.running:
                spec = queue[0]
                why = self._why_not(spec, now)
                if why:
                    self._skip_rest(group, why)
                    break
                if now > spec.not_after:
                    self._skip_rest(group, "missed its slot", first=True)
                    break
                if now < spec.not_before:
                    due = spec.not_before
                    if self._must_watch(spec.not_before):
                        if now >= spec.not_before - WATCH_LEAD_S:
                            out.poll_watch = True  # look now, ahead of the slot
                            return self._finish_step(out, now, wake)
                        due = spec.not_before - WATCH_LEAD_S
                    wake = due if wake is None else min(wake, due)
                    break
                if self._must_watch(now):
                    out.poll_watch = True
                    return self._finish_step(out, now, wake)
                queue.popleft()
                self.running[group] = spec
                self._started.append((now, spec.key))
                self._use_budget(spec.key)
                out.start.append(spec)
            if not queue:
                del self.pending[group]
        return self._finish_step(out, now, wake)

    def on_result(self, result: JobResult, now: float) -> None:
        spec = next((s for g, s in self.running.items() if s.id == result.job_id), None)
        if spec is None:
            return
        del self.running[spec.group]
        self.results[spec.id] = result
        self._observe_budget(spec, result, now)
        if result.outcome is Outcome.SUCCEEDED and not result.duplicate:
            self._unrecorded_ok.append((now, spec.id))
        elif result.attempted:
            self._unrecorded_called.append(spec.id)
        if result.outcome is not Outcome.SUCCEEDED:
            self.stopped[spec.group] = f"an earlier job of the group ended {result.outcome.value}"
        if result.outcome is Outcome.THROTTLED:
            at = result.sent_at if result.sent_at is not None else now
            scoped = self.request.key_scoped_429 and spec.key is not None
            signal = ThrottleSignal(now, result.retry_after_s, self.request.batch_id, spec.key if scoped else None)
            self._to_publish.append(signal)
            self._keep_429(signal)
            self.throttled_at = self.throttled_at or at
            if scoped:
                assert spec.key is not None
                self.stopped_keys[spec.key] = "the API answered 429 to a job of the same key"
            else:
                self.stop_all = self.stop_all or "the API answered 429 to another job of the batch"

    def _keep_429(self, signal: ThrottleSignal) -> None:
        """The 429 its record keeps: the one that ends last; of several scopes (two keys' 429s), the stage's."""
        kept = self.met_429
        if kept is None:
            self.met_429 = signal
            return
        latest = signal if signal.ends_at > kept.ends_at else kept
        key = latest.key if signal.key == kept.key else None
        self.met_429 = ThrottleSignal(latest.at, latest.retry_after_s, latest.batch_id, key)

    def on_watch(self, signals: Sequence[ThrottleSignal], final: set[str], now: float) -> None:
        self._last_watch = now
        self.watched_final |= final & self._watching
        self._watching -= final
        for stored in signals:
            signal = stored.bounded(now)  # another worker wrote it: not believed further ahead than the skew
            if signal.at <= self.request.planned_at or signal.batch_id == self.request.batch_id:
                continue
            if signal.key is not None:
                self.stopped_keys.setdefault(signal.key, "the API answered 429 to another batch (same key)")
            else:
                self.stop_all = self.stop_all or "the API answered 429 to another batch"
                self.throttled_at = self.throttled_at or signal.at

    @property
    def watching(self) -> set[str]:
        """Watched batches not yet seen final."""
        return set(self._watching)

    @property
    def done(self) -> bool:
        return not self.pending and not self.running

    def final_record(self) -> tuple[list[str], list[str]]:
        """Everything not yet recorded, for the batch's last record (written before the worker returns)."""
        ok = [j for _, j in self._unrecorded_ok]
        called = list(self._unrecorded_called)
        self._unrecorded_ok.clear()
        self._unrecorded_called.clear()
        return ok, called

    def record_failed(self, ok: list[str], called: list[str], now: float) -> None:
        """A record write failed: these go with the next one (the last one's failures go in the answer)."""
        at = self._unrecorded_ok[0][0] if self._unrecorded_ok else now
        self._unrecorded_ok[:0] = [(at, j) for j in ok]
        self._unrecorded_called[:0] = called

    def ordered_results(self) -> list[JobResult]:
        return [self.results.get(j.id) or JobResult(j.id, Outcome.SKIPPED, "not run") for j in self.request.jobs]

    def abandon(self, reason: str) -> None:
        """Stop starting calls (the worker is out of time): pending jobs are skipped."""
        self.stop_all = self.stop_all or reason

    # ------------------------------------------------------------------ rules
    def _scope(self, key: str | None) -> str | None:
        return key if self.request.key_scoped_429 else None

    def _observe_budget(self, spec: JobSpec, result: JobResult, now: float) -> None:
        """Follow the API's own count inside the batch: the throttler only hears of it when the batch is over."""
        api = result.api or {}
        remaining, reset_at, sent = api.get("remaining"), api.get("reset_at"), result.sent_at
        if remaining is None or reset_at is None or sent is None or float(reset_at) <= now:
            return
        scope = self._scope(spec.key)
        current = self._budgets.get(scope)
        if current is not None and current.observed_sent_at > sent:
            return  # an older answer: the newer count stands
        since = sum(1 for t, k in self._started if t > sent and self._scope(k) == scope)
        self._budgets[scope] = ApiBudget(int(remaining), float(reset_at), sent, since)

    def _use_budget(self, key: str | None) -> None:
        budget = self._budgets.get(self._scope(key))
        if budget is not None:
            budget.used += 1

    def _budget_says_no(self, spec: JobSpec, now: float) -> bool:
        if self.request.api_policy:
            return False  # the slots already follow the API's stated policy
        budget = self._budgets.get(self._scope(spec.key))
        return budget is not None and budget.exhausted(now)

    def _why_not(self, spec: JobSpec, now: float | None = None) -> str:
        if self.stop_all:
            return self.stop_all
        if now is not None and self._budget_says_no(spec, now):
            return "the API's rate-limit headers say no calls are left until its reset"
        if spec.group in self.stopped:
            return self.stopped[spec.group]
        if spec.key is not None and spec.key in self.stopped_keys:
            return self.stopped_keys[spec.key]
        return ""

    def _skip_rest(self, group: str, why: str, first: bool = False) -> None:
        queue = self.pending.get(group, deque())
        if first and queue:
            spec = queue.popleft()
            self.results[spec.id] = JobResult(spec.id, Outcome.SKIPPED, why)
            why = "an earlier job of the group missed its slot"
        while queue:
            spec = queue.popleft()
            self.results[spec.id] = JobResult(spec.id, Outcome.SKIPPED, why)
        self.stopped.setdefault(group, why)

    def _must_watch(self, now: float) -> bool:
        if self._watching:
            every = WATCH_EVERY_S
        elif self.request.watch_throttle:
            every = PAUSE_LOOK_EVERY_S
        else:
            return False
        return self._last_watch is None or now - self._last_watch >= every - 1e-9

    def _finish_step(self, out: Step, now: float, wake: float | None) -> Step:
        due = self._unrecorded_ok and now - self._unrecorded_ok[0][0] >= RECORD_EVERY_S - 1e-9
        if due:
            out.record = self.final_record()
        elif self._unrecorded_ok:
            first_due = self._unrecorded_ok[0][0] + RECORD_EVERY_S
            wake = first_due if wake is None else min(wake, first_due)
        out.wake_at = wake
        out.finished = self.done
        return out
