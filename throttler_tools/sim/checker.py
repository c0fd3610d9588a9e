"""The checker: every promise of SPEC.md, asserted from the outside at the end of a seed.

It reads only what an observer outside the throttler could see: the fake API's own log (arrival
times, statuses, Retry-After), what the workers sent and when (the simulated network), the queues
(messages left, the DLQ with its attributes, SQS's own redrive moves, receive counts), and the
timelines the scenario wrote (quota items, operator pauses). Each check names the promise it proves.

Windows are judged on arrival times, with the API's own window lengths: the margin is honoured when
no window holds more than its limit. A quota change is in force `CHANGE_GRACE_S` after its write
(SPEC: "a change takes effect within 5 seconds"); meanwhile either configuration's limit is accepted.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from throttler.core.errors import ConfigError
from throttler.core.quotas import QuotaConfig, Tier, parse_quota_item
from throttler.dispatch.control import BACKOFF_BASE_S
from throttler.queue.dead_letters import MOVED_BY_SQS
from throttler.worker.batch import RECORD_EVERY_S
from throttler_tools.sim.engine import SentCall
from throttler_tools.sim.scenario import DEAD, OK, POISON, Scenario
from throttler_tools.sim.world import World

CHANGE_GRACE_S = 5.0  # SPEC: a quota change takes effect within 5 seconds of the write
PAUSE_GRACE_S = 5.0  # ... and so does an operator's pause
AFTER_429_S = 1.0  # SPEC promise 6: no call leaves more than 1 second after the first 429 reached a worker
RECEIVES_PER_DAY = 12  # SPEC promise 4: a waiting job gains at most a few receives a day
MAX_EXAMPLES = 5


@dataclass
class Timeline:
    """What operators did, as the checker needs it: quota items written, pauses and resumes."""

    quotas: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)  # [start, end): end is the pause's until or a resume
    resumes: list[float] = field(default_factory=list)


@dataclass
class Report:
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter[str] = field(default_factory=Counter)
    figures: dict[str, float] = field(default_factory=dict)
    checked: Counter[str] = field(default_factory=Counter)  # promise -> how many things were checked

    def fail(self, promise: str, text: str) -> None:
        self.counts[promise] += 1
        if len(self.violations[promise]) < MAX_EXAMPLES:
            self.violations[promise].append(text)

    @property
    def ok(self) -> bool:
        return not self.counts

    def lines(self) -> list[str]:
        out = []
        for promise, examples in sorted(self.violations.items()):
            out.append(f"{promise}: {self.counts[promise]} violation(s)")
            out += [f"  - {e}" for e in examples]
        return out


def _fmt(t: float, start: float) -> str:
    s = t - start
    return f"+{int(s // 86400)}d{int(s % 86400 // 3600):02d}:{int(s % 3600 // 60):02d}:{s % 60:06.3f}"


class Checker:
    def __init__(self, world: World, scenario: Scenario, timeline: Timeline, end: float):
        self.w = world
        self.sc = scenario
        self.tl = timeline
        self.end = end
        self.start = scenario.config.start
        self.r = Report()
        self.jobs = {j.job_id: j for j in scenario.jobs}
        self.sent: dict[str, list[SentCall]] = defaultdict(list)
        for call in world.workers.sent:
            self.sent[call.job_id].append(call)
        self.api_calls: dict[str | None, list[Any]] = defaultdict(list)
        for c in world.api.calls:
            self.api_calls[c.key].append(c)
        self.message_of: dict[str, str] = {}  # job id -> its jobs-queue message id
        self.enqueued_at: dict[str, float] = {}
        self.dlq_at: dict[str, float] = {}
        for event in world.queue_events:
            if event.queue == "jobs" and event.dedup_id in self.jobs:
                self.message_of[event.dedup_id] = event.message_id
                self.enqueued_at[event.dedup_id] = event.at
        self.job_of_message = {m: j for j, m in self.message_of.items()}
        self.versions = self._versions()
        self._unheard: Counter[str] = Counter()
        for batch_id in world.workers.unheard:
            for job_id in world.workers.planned.get(batch_id, []):
                self._unheard[job_id] += 1

    def t(self, at: float) -> str:
        return _fmt(at, self.start)

    # ------------------------------------------------------------------ all of it
    def check(self) -> Report:
        self.dead = self._dead_letters()
        self._nothing_lost()
        self._quota_safety()
        self._ordering()
        self._no_duplicates()
        self._api_word()
        self._operator_pauses()
        self._receives()
        self._runs_and_workers()
        self._figures()
        return self.r

    # ------------------------------------------------------------------ promise 4 (and 7)
    def _dead_letters(self) -> dict[str, list[Any]]:
        by_job: dict[str, list[Any]] = defaultdict(list)
        for letter in self.w.dead_letters_seen():
            by_job[letter.job_id or "?"].append(letter)
        for job_id, message_id in self.message_of.items():
            left = self.w.left_at.get(message_id)
            if left is not None and job_id in by_job:
                self.dlq_at[job_id] = left
        return by_job

    def _successes(self, job_id: str) -> list[Any]:
        return [c for c in self.api_calls.get(job_id, []) if 200 <= c.status < 300]

    def _nothing_lost(self) -> None:
        r = self.r
        if self.w.sqs is not None and self.w.sqs.redrive_moves:
            for move in self.w.sqs.redrive_moves[:MAX_EXAMPLES]:
                r.fail("4 nothing lost: SQS redrive", f"{move.dedup_id} moved by SQS after {move.receive_count} receives")
            r.counts["4 nothing lost: SQS redrive"] = len(self.w.sqs.redrive_moves)
        queued: set[str] = set()
        if self.w.sqs is not None:
            for view in self.w.sqs.messages(self.w.env["JOBS_QUEUE_URL"]):
                queued.add(self.job_of_message.get(view.message_id, view.dedup_id))
        max_attempts = self.sc.config.max_attempts
        for job_id, plan in self.jobs.items():
            r.checked["4 nothing lost"] += 1
            letters = self.dead.get(job_id, [])
            successes = self._successes(job_id)
            calls = self.sent.get(job_id, [])
            if job_id not in self.message_of:
                r.fail("4 nothing lost", f"{job_id} was never accepted by the queue")
                continue
            if job_id in queued:
                r.fail("4 nothing lost: still queued after the tail", f"{job_id} ({plan.kind}) in {plan.group}")
                continue
            if len(letters) > 1:
                r.fail("4 exactly once", f"{job_id} dead-lettered {len(letters)} times")
            if not letters and not successes:
                r.fail("4 nothing lost", f"{job_id} ({plan.kind}) neither succeeded nor dead-lettered: lost")
                continue
            if letters:
                letter = letters[0]
                if letter.error_reason == MOVED_BY_SQS or not letter.error_reason or letter.attempts is None:
                    detail = f"{job_id}: {letter.error_reason!r} attempts={letter.attempts}"
                    r.fail("4 dead letters carry a reason and attempts", detail)
                if successes:
                    if all(self._lost(job_id, c) for c in successes):
                        r.counts["_ambiguous"] += 1  # every success of it was lost: nobody could know (README)
                    else:
                        r.fail("4 exactly once", f"{job_id} succeeded at {self.t(successes[0].at)} and was dead-lettered"
                               f" ({letter.error_reason})")
                self._dead_letter_rules(job_id, plan, letter, calls, max_attempts)
            else:
                if plan.expect == POISON:
                    r.fail("7 bad input: dead-lettered at once", f"{job_id} ({plan.kind}) succeeded")
                elif plan.expect == DEAD:
                    r.fail("4 outcome", f"{job_id} ({plan.kind}) succeeded: expected a dead letter")

    def _dead_letter_rules(self, job_id: str, plan: Any, letter: Any, calls: list[SentCall], max_attempts: int) -> None:
        r = self.r
        reason = letter.error_reason or ""
        if plan.expect == POISON:
            r.checked["7 bad input"] += 1
            if calls:
                r.fail("7 bad input: never called", f"{job_id} ({plan.kind}) was called {len(calls)} time(s)")
            if letter.attempts != 0:
                r.fail("7 bad input: attempts 0", f"{job_id} ({plan.kind}) attempts={letter.attempts}")
            return
        if "429" in reason or "throttl" in reason.lower():
            r.fail("4 throttling never dead-letters", f"{job_id}: {reason}")
        if plan.expect == OK and not reason.startswith("attempts exhausted"):
            r.fail("4 outcome", f"{job_id} ({plan.kind}) dead-lettered: {reason}")
        # Attempts count real calls that were not 429s; a batch whose worker died or went unheard may
        # count one for a job whose slot came (its call may have been made).
        non429 = sum(1 for c in calls if c.status != 429)
        unheard = len({c.batch_id for c in calls if c.lost}) + self._unheard_batches(job_id)
        if letter.attempts is not None and letter.attempts > non429 + unheard:
            r.fail("4 attempts are real", f"{job_id}: attempts={letter.attempts}, calls other than 429: {non429}")
        if reason.startswith("attempts exhausted") and letter.attempts is not None and letter.attempts < max_attempts:
            r.fail("4 attempts are real", f"{job_id}: dead-lettered '{reason}' after {letter.attempts} < {max_attempts} attempts")

    def _unheard_batches(self, job_id: str) -> int:
        """Batches planned for this job whose worker died, was not heard from, or never started."""
        return self._unheard.get(job_id, 0)

    def _lost(self, job_id: str, api_call: Any) -> bool:
        """Was this API call's outcome lost on the way back (a dead worker, a lost response, a timeout)? Or
        was its success recorded nowhere: its worker's record write refused, and the run that had the answer
        died before writing it (the README's stated deviation; chaos seed 3157: the run died 40 ms later)?"""
        sent = self._sent_for(job_id, api_call)
        if sent is None or sent.lost or sent.timed_out:
            return True
        refused = self.w.workers.record_failures.get(sent.batch_id, [])
        run = sent.batch_id.rsplit("-b", 1)[0]
        died = [d.at for d in self.w.deaths if d.owner == run]
        answered = sent.answered_at
        # The run settles an answer in the step it wakes for: a death later than a second had its chance to.
        return answered is not None and any(at >= answered for at in refused) and any(
            answered <= at <= answered + 1.0 for at in died
        )

    def _sent_for(self, job_id: str, api_call: Any) -> SentCall | None:
        arrivals = self.api_calls.get(job_id, [])
        index = arrivals.index(api_call)
        sent = sorted(self.sent.get(job_id, []), key=lambda c: c.arrived_at)
        return sent[index] if index < len(sent) else None

    # ------------------------------------------------------------------ promise 1
    def _versions(self) -> list[tuple[float, QuotaConfig]]:
        out: list[tuple[float, QuotaConfig]] = []
        for at, item in self.tl.quotas:
            try:
                out.append((at, parse_quota_item(item)))
            except ConfigError:
                continue  # ignored in favour of the last good configuration
        return out

    def _in_force(self, a: float) -> list[QuotaConfig]:
        """Configurations that may apply to an arrival at `a` (those in force in [a - grace, a])."""
        starts = [t for t, _ in self.versions]
        hi = bisect.bisect_right(starts, a) - 1
        lo = bisect.bisect_right(starts, a - CHANGE_GRACE_S) - 1
        return [cfg for _, cfg in self.versions[max(0, lo): hi + 1]] if hi >= 0 else []

    def _quota_safety(self) -> None:
        r = self.r
        arrivals: dict[str, list[tuple[float, int]]] = defaultdict(list)  # scope -> (arrival, cost)
        for c in self.w.api.calls:
            plan = self.jobs.get(c.key or "")
            cost = plan.cost if plan is not None else c.cost
            arrivals["stage"].append((c.at, cost))
            if plan is not None and plan.key is not None:
                arrivals[f"key {plan.key}"].append((c.at, cost))
        identities: set[tuple[str, int, bool]] = set()
        for _, cfg in self.versions:
            identities |= {("stage", t.window_s, t.aligned) for t in cfg.tiers}
            for scope in arrivals:
                if scope.startswith("key "):
                    identities |= {(scope, t.window_s, t.aligned) for t in cfg.key_quota(scope[4:]).tiers}
        worst: dict[str, float] = {}
        for scope, window_s, aligned in sorted(identities):
            times = sorted(arrivals.get(scope, []))
            if not times:
                continue
            r.checked["1 quota safety"] += len(times)
            for a, used in _window_sums(times, window_s, aligned):
                limit = self._limit(scope, window_s, aligned, a)
                if limit is None:
                    continue
                name = f"{scope} {window_s}s{' aligned' if aligned else ''}"
                worst[name] = max(worst.get(name, 0.0), used / limit if limit else math.inf)
                if used > limit:
                    r.fail("1 quota safety", f"{name}: {used} > {limit} in the window ending {self.t(a)}")
        self.r.figures["quota_peak_use"] = max(worst.values(), default=0.0)

    def _limit(self, scope: str, window_s: int, aligned: bool, a: float) -> int | None:
        limits = []
        for cfg in self._in_force(a):
            tiers: Iterable[Tier] = cfg.tiers if scope == "stage" else cfg.key_quota(scope[4:]).tiers
            found = [t for t in tiers if t.window_s == window_s and t.aligned == aligned]
            if not found:
                return None  # not in force in every configuration that may apply: not judged here
            limits.append(found[0].ceiling)
        return max(limits) if limits else None

    # ------------------------------------------------------------------ promise 3
    def _ordering(self) -> None:
        r = self.r
        by_group: dict[str, list[Any]] = defaultdict(list)
        for plan in self.sc.jobs:
            by_group[plan.group].append(plan)
        for group, plans in by_group.items():
            plans.sort(key=lambda p: p.seq)
            resolved_by = -math.inf  # the latest resolution time of every earlier job
            unresolved_earlier: str | None = None
            latest_send_of_later = math.inf
            for plan in plans:
                calls = sorted(self.sent.get(plan.job_id, []), key=lambda c: c.sent_at)
                r.checked["3 ordering"] += 1
                if calls:
                    first = calls[0].sent_at
                    if unresolved_earlier is not None:
                        r.fail("3 ordering", f"{plan.job_id} called at {self.t(first)} while {unresolved_earlier} never resolved")
                    elif first < resolved_by - 1e-9:
                        r.fail("3 ordering", f"{plan.job_id} called at {self.t(first)} before an earlier job of {group}"
                               f" resolved at {self.t(resolved_by)}")
                resolved = self._resolved_at(plan.job_id)
                if resolved is None:
                    unresolved_earlier = unresolved_earlier or plan.job_id
                else:
                    resolved_by = max(resolved_by, resolved)
            # No call of an earlier job after a call of a later one; but a success whose outcome never reached the
            # run (its worker's records refused, its answer lost) is called again, after the later jobs that went
            # with it (README, "Where this deviates from SPEC"; counted under promise 5 as a lost success).
            for plan in reversed(plans):
                calls = self.sent.get(plan.job_id, [])
                known = [c for c in calls if c.sent_at <= latest_send_of_later + 1e-9 and not (c.lost or c.timed_out)]
                if calls and max(c.sent_at for c in calls) > latest_send_of_later + 1e-9 and (
                    known or not any(c.sent_at <= latest_send_of_later + 1e-9 for c in calls)
                ):
                    r.fail("3 ordering", f"{plan.job_id} called again at {self.t(max(c.sent_at for c in calls))} after a later"
                           f" job of {group} was called at {self.t(latest_send_of_later)}")
                if calls:
                    latest_send_of_later = min(latest_send_of_later, min(c.sent_at for c in calls))

    def _resolved_at(self, job_id: str) -> float | None:
        times = []
        successes = self._successes(job_id)
        if successes:
            times.append(successes[0].at)
        if job_id in self.dlq_at:
            times.append(self.dlq_at[job_id])
        elif self.dead.get(job_id):
            times.append(self.end)
        return min(times) if times else None

    # ------------------------------------------------------------------ promise 5
    def _no_duplicates(self) -> None:
        r = self.r
        per_death: Counter[str] = Counter()
        worst_age = 0.0
        deaths = {d.batch_id: d for d in self.w.workers.deaths}
        for job_id in self.jobs:
            successes = self._successes(job_id)
            r.checked["5 no duplicate effects"] += 1
            for earlier in successes[:-1]:
                if not self._lost(job_id, earlier):
                    r.fail("5 no duplicate effects", f"{job_id} succeeded at {self.t(earlier.at)} and was called again")
                    continue
                r.counts["_repeats"] += 1
                sent = self._sent_for(job_id, earlier)
                if sent is not None and sent.batch_id in deaths:
                    death = deaths[sent.batch_id]
                    per_death[f"{death.batch_id}:{death.worker}"] += 1
                    failed = self.w.workers.record_failures.get(sent.batch_id, [])
                    # A record write the state table refused goes again a second later: the success waited with it
                    # (README, "Where this deviates from SPEC"). The bound is for writes that went through.
                    if sent.answered_at is not None and death.why == "crashed" and not any(
                        sent.answered_at <= at <= death.at for at in failed
                    ):
                        worst_age = max(worst_age, death.at - sent.answered_at)
        r.figures["repeats_after_lost_success"] = r.counts.pop("_repeats", 0)
        r.figures["max_repeats_per_worker_death"] = max(per_death.values(), default=0)
        r.figures["max_unrecorded_success_age_s"] = round(worst_age, 3)
        if worst_age > RECORD_EVERY_S + 0.1:
            r.fail("5 no duplicate effects: bound", f"a success {worst_age:.3f}s old was lost with its worker (records every"
                   f" {RECORD_EVERY_S}s)")

    # ------------------------------------------------------------------ promise 6
    def _api_word(self) -> None:
        r = self.r
        sends = sorted(c.sent_at for calls in self.sent.values() for c in calls)
        resumes = sorted(self.tl.resumes)
        worst = 0.0
        auto_windows = [t.window_s for _, cfg in self.versions for t in cfg.tiers if t.is_auto]
        backoff = min([BACKOFF_BASE_S, *auto_windows])
        for job_id, calls in self.sent.items():
            for call in calls:
                if call.status != 429 or call.answered_at is None or call.timed_out:
                    continue  # a 429 whose answer came after the worker gave up waiting never reached a worker
                api_call = self._api_call_for(job_id, call)
                t_r = call.answered_at
                until = api_call.retry_at if api_call is not None and api_call.retry_at is not None else t_r + backoff
                i = bisect.bisect_left(resumes, t_r)
                if i < len(resumes) and resumes[i] < until:
                    until = resumes[i]  # `resume` lifts a 429's pause too
                r.checked["6 the API's word wins"] += 1
                last = last_send_into(sends, t_r, until)
                if last is not None:
                    worst = max(worst, last)
                    if last > AFTER_429_S:
                        r.fail("6 the API's word wins", f"a call left {last:.3f}s after a 429 reached a worker at {self.t(t_r)}"
                               f" (Retry-After until {self.t(until)})")
        r.figures["max_call_after_429_s"] = round(worst, 3)

    def _api_call_for(self, job_id: str, sent: SentCall) -> Any:
        calls = sorted(self.sent.get(job_id, []), key=lambda c: c.arrived_at)
        index = calls.index(sent)
        arrivals = self.api_calls.get(job_id, [])
        return arrivals[index] if index < len(arrivals) else None

    def _operator_pauses(self) -> None:
        r = self.r
        sends = sorted(c.sent_at for calls in self.sent.values() for c in calls)
        worst = 0.0
        for start, end in self.tl.pauses:
            r.checked["6 operator pause"] += 1
            last = last_send_into(sends, start, end)
            if last is not None:
                worst = max(worst, last)
                if last > PAUSE_GRACE_S:
                    r.fail("6 operator pause", f"a call left {last:.3f}s into a pause from {self.t(start)} to {self.t(end)}")
        r.figures["max_call_after_pause_s"] = round(worst, 3)

    # ------------------------------------------------------------------ promise 4: receives
    def _receives(self) -> None:
        r = self.r
        worst = 0.0
        worst_job = ""
        per_day: list[float] = []
        # A run that dies holding a message leaves it to be received again: that next receive is the death's, not
        # waiting's (a run death is an error with its own alarm; docs/reliability.md, "The bounds").
        died: dict[str, tuple[float, frozenset[str]]] = {d.owner: (d.at, d.held) for d in self.w.deaths}
        lost_to_deaths = 0
        for job_id, message_id in self.message_of.items():
            receives = self.w.received_at.get(message_id, [])
            if not receives:
                continue
            owners = self.w.received_by.get(message_id, [None] * len(receives))
            # Each receive is an attempt's (a call other than a 429 went out before the next receive), a death's
            # (the run that received it before died holding it, or in the step that received it, before this
            # receive), or waiting's. One each: a death's receive that leads to a retry is not counted twice.
            spent = set()
            for call in self.sent.get(job_id, []):
                if call.status != 429:
                    i = bisect.bisect_right(receives, call.sent_at) - 1
                    if i >= 0:
                        spent.add(i)
            deaths = 0
            for i in range(1, len(receives)):
                death = died.get(owners[i - 1] or "")
                if i in spent or death is None or death[0] > receives[i]:
                    continue
                if message_id in death[1] or death[0] == receives[i - 1]:
                    spent.add(i)
                    deaths += 1
            lost_to_deaths += deaths
            enqueued = self.enqueued_at[job_id]
            left = self.w.left_at.get(message_id, self.end)
            days = max(1.0, (left - enqueued) / 86400)
            rate = (len(receives) - len(spent)) / days
            per_day.append(rate)
            if rate > worst:
                worst, worst_job = rate, job_id
        r.checked["4 receives while waiting"] += len(per_day)
        per_day.sort()
        r.figures["max_receives_per_day"] = round(worst, 2)
        r.figures["receives_lost_to_run_deaths"] = lost_to_deaths
        r.figures["p99_receives_per_day"] = round(per_day[int(len(per_day) * 0.99)] if per_day else 0.0, 2)
        if worst > RECEIVES_PER_DAY:
            plan = self.jobs[worst_job]
            r.fail("4 receives while waiting", f"{worst_job} ({plan.kind}, {plan.group}) received {worst:.1f} times a day"
                   f" (at most {RECEIVES_PER_DAY})")

    # ------------------------------------------------------------------ runs and workers
    def _runs_and_workers(self) -> None:
        r = self.r
        for death in self.w.deaths:
            if not death.expected:
                r.fail("7 nothing crashes a run", f"{death.owner} at {self.t(death.at)}: {death.error}")
        if self.w.workers.refused_too_large:
            r.fail("7 batches sized in bytes", f"Lambda refused {self.w.workers.refused_too_large} batch(es) over 6 MB")

    def _figures(self) -> None:
        f = self.r.figures
        f["jobs"] = len(self.jobs)
        f["calls"] = len(self.w.api.calls)
        f["api_429s"] = sum(1 for c in self.w.api.calls if c.status == 429)
        f["dead_lettered"] = sum(len(v) for v in self.dead.values())
        f["run_deaths"] = len(self.w.deaths)
        f["worker_deaths"] = len(self.w.workers.deaths)
        f["runs"] = len(self.w.runs)
        f["ambiguous"] = self.r.counts.pop("_ambiguous", 0)


def _window_sums(times: list[tuple[float, int]], window_s: int, aligned: bool) -> Iterable[tuple[float, int]]:
    """(arrival, units in its window) for each arrival: the sliding window (a - W, a], or its calendar period."""
    if aligned:
        period, total = None, 0
        for a, cost in times:
            p = math.floor(a / window_s)
            if p != period:
                period, total = p, 0
            total += cost
            yield a, total
        return
    start, total = 0, 0
    for a, cost in times:
        total += cost
        while times[start][0] <= a - window_s:
            total -= times[start][1]
            start += 1
        yield a, total


def last_send_into(sends: list[float], start: float, end: float) -> float | None:
    """How far into [start, end) the last call left (`sends` sorted), or None when none left in it."""
    lo = bisect.bisect_left(sends, start)
    hi = bisect.bisect_left(sends, end)
    return sends[hi - 1] - start if hi > lo else None
