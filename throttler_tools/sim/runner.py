"""Run seeds: install a seed's scenario in a World, live through its days, drain it in a quiet tail, and
check every promise. `run_many` spreads seeds over processes and sums up what was checked.

The tail: once the scenario's days are over, faults stop, storms and outages end, pauses are lifted and
the quotas become a plain `second=20 minute=1200`; the world then runs until the queue is empty (at most
`TAIL_MAX_S`, long enough for a message hidden for SQS's 12 hours). Whatever is still queued then is stuck.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from throttler.dispatch.control import INDEFINITE_PAUSE_S
from throttler_tools.sim.checker import Checker, Report, Timeline
from throttler_tools.sim.engine import WorkerFaults
from throttler_tools.sim.faults import RunFaults
from throttler_tools.sim.scenario import JOB_SCALE, Action, Scenario, generate
from throttler_tools.sim.world import World

TAIL_MAX_S = 14 * 3600.0
TAIL_CHECK_EVERY_S = 60.0


@dataclass
class SeedResult:
    seed: int
    days: float
    jobs: int | None
    profile: str
    description: str
    ok: bool
    violations: list[str]
    figures: dict[str, float]
    checked: dict[str, int]
    cpu_s: float
    simulated_s: float
    replay: str
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def replay_command(seed: int, days: float, jobs: int | None, profile: str | None = None, scale: float = JOB_SCALE) -> str:
    """One line that lives through this seed again, identically, and prints what it broke."""
    parts = [f"python -m throttler sim --seed {seed} --days {days:g}"]
    if jobs is not None:
        parts.append(f"--jobs {jobs}")
    if profile is not None:
        parts.append(f"--profile {profile}")
    if scale != JOB_SCALE:
        parts.append(f"--scale {scale:g}")
    return " ".join(parts)


@dataclass
class Simulation:
    """One seed's world, scenario and timeline, before and after it ran."""

    scenario: Scenario
    world: World = field(init=False)
    timeline: Timeline = field(default_factory=Timeline)
    tail_started: float = 0.0
    ended: float = 0.0

    def __post_init__(self) -> None:
        sc = self.scenario
        self.world = w = World(sc.config)
        w.api.per_key_tiers = list(sc.api_per_key)
        w.api.rate_headers = sc.api_rate_headers
        self.timeline.quotas.append((sc.config.start, dict(sc.quotas)))
        jobs = sorted(sc.jobs, key=lambda j: j.at)
        for at, batch in itertools.groupby(jobs, key=lambda j: j.at):
            w.enqueue_at(at, [(j.body, j.group, j.job_id) for j in batch])
        for action in sc.actions:
            w.at(action.at, lambda a=action: self.act(a))  # type: ignore[misc]
        w.start_schedule(sc.config.start)

    # ------------------------------------------------------------------ operators and the API's moods
    def act(self, action: Action) -> None:
        w, now = self.world, self.world.loop.now
        if action.kind == "quotas":
            self.set_quotas(action.data)
        elif action.kind == "pause":
            until = now + (action.data if action.data is not None else INDEFINITE_PAUSE_S)
            w.store.set_pause(until, "operator", extend_only=False)  # as `pause [--for]` does
            self._end_pause(now)
            self.timeline.pauses.append((now, until))
        elif action.kind == "resume":
            w.store.clear_pause()  # as `resume` does (it forgets the latest 429 too)
            self._end_pause(now)
            self.timeline.resumes.append(now)
        elif action.kind == "api":
            w.api.tiers = list(action.data)
        elif action.kind == "storm":
            w.api.storms.append(action.data)
        elif action.kind == "outage":
            w.api.outages.append(action.data)
        elif action.kind == "overlap":
            w.start_run()

    def set_quotas(self, item: dict[str, Any]) -> None:
        self.world.quotas_written(item)
        self.timeline.quotas.append((self.world.loop.now, dict(item)))

    def _end_pause(self, now: float) -> None:
        pauses = self.timeline.pauses
        if pauses and pauses[-1][1] > now:
            pauses[-1] = (pauses[-1][0], now)

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        sc, w = self.scenario, self.world
        w.run_until(sc.end)
        self.tail()

    def tail(self) -> None:
        w, sc = self.world, self.scenario
        now = w.loop.now
        self.tail_started = now
        w.config.run_faults = RunFaults()
        for proxy in (w.run_store, w.run_queue):
            proxy.before = proxy.after = 0.0
        f = w.workers.faults
        w.workers.faults = replace(WorkerFaults(), clock_skew_s=f.clock_skew_s, wake_late_s=f.wake_late_s)
        for storm in w.api.storms:
            storm.end = min(storm.end, now)
        for outage in w.api.outages:
            outage.end = min(outage.end, now)
        w.api.tiers = list(sc.tail_api)
        w.api.per_key_tiers = []
        w.api.aligned = []
        w.store.clear_pause()
        self._end_pause(now)
        self.timeline.resumes.append(now)
        self.set_quotas(dict(sc.tail_quotas))
        limit = now + TAIL_MAX_S
        while w.loop.now < limit:
            w.run_until(w.loop.now + TAIL_CHECK_EVERY_S)
            if w.depth() == 0 and not w.alive:
                break
        self.ended = w.loop.now

    def check(self) -> Report:
        return Checker(self.world, self.scenario, self.timeline, self.ended).check()


def quiet() -> None:
    """The runtime's warnings (worker trouble, bad messages) are the simulation's daily bread: not shown."""
    logging.getLogger("throttler").setLevel(logging.CRITICAL)


def run_seed(seed: int, days: float = 1.0, jobs: int | None = None, profile: str | None = None,
             scale: float = JOB_SCALE) -> SeedResult:
    quiet()
    started = time.process_time()
    scenario = generate(seed, days, jobs, profile, scale)
    replay = replay_command(seed, days, jobs, profile, scale)
    try:
        sim = Simulation(scenario)
        sim.run()
        report = sim.check()
    except Exception as exc:  # noqa: BLE001 - a seed that breaks the simulation itself is a failure to replay
        return SeedResult(seed, days, jobs, scenario.profile, scenario.describe(), False, [f"the simulation raised {exc!r}"],
                          {}, {}, time.process_time() - started, 0.0, replay, repr(exc))
    return SeedResult(seed, days, jobs, scenario.profile, scenario.describe(), report.ok, report.lines(), report.figures,
                      dict(report.checked), time.process_time() - started, sim.ended - scenario.config.start, replay)


def _run_one(args: tuple[int, float, int | None, str | None, float]) -> SeedResult:
    return run_seed(*args)


def run_many(seeds: Iterable[int], days: float, jobs: int | None = None, profile: str | None = None,
             processes: int | None = None, on_result: Callable[[SeedResult], None] | None = None,
             scale: float = JOB_SCALE) -> list[SeedResult]:
    """Run seeds in parallel processes (each seed deterministic on its own); results in seed order."""
    work = [(s, days, jobs, profile, scale) for s in seeds]
    processes = processes or os.cpu_count() or 1
    results: list[SeedResult] = []
    if processes <= 1 or len(work) <= 1:
        iterator: Iterator[SeedResult] = map(_run_one, work)
        for result in iterator:
            results.append(result)
            if on_result is not None:
                on_result(result)
    else:
        ctx = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
        with ctx.Pool(processes, maxtasksperchild=50) as pool:
            for result in pool.imap_unordered(_run_one, work, chunksize=1):
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return sorted(results, key=lambda r: r.seed)


def summarize(results: list[SeedResult], wall_s: float) -> dict[str, Any]:
    checked: Counter[str] = Counter()
    for result in results:
        checked.update(result.checked)
    failed = [r for r in results if not r.ok]

    def figure(name: str, how: Callable[[list[float]], float] = max) -> float:
        values = [r.figures[name] for r in results if name in r.figures]
        return round(how(values), 3) if values else 0.0

    return {
        "seeds": len(results),
        "passed": len(results) - len(failed),
        "failed": [{"seed": r.seed, "replay": r.replay, "violations": r.violations[:6]} for r in failed],
        "simulated_days": round(sum(r.simulated_s for r in results) / 86400, 1),
        "wall_s": round(wall_s, 1),
        "cpu_s": round(sum(r.cpu_s for r in results), 1),
        "profiles": dict(Counter(r.profile for r in results)),
        "promises_checked": dict(sorted(checked.items())),
        "figures": {
            "calls": int(sum(r.figures.get("calls", 0) for r in results)),
            "jobs": int(sum(r.figures.get("jobs", 0) for r in results)),
            "api_429s": int(sum(r.figures.get("api_429s", 0) for r in results)),
            "worker_deaths": int(sum(r.figures.get("worker_deaths", 0) for r in results)),
            "run_deaths": int(sum(r.figures.get("run_deaths", 0) for r in results)),
            "repeats_after_lost_success": int(sum(r.figures.get("repeats_after_lost_success", 0) for r in results)),
            "max_repeats_per_worker_death": figure("max_repeats_per_worker_death"),
            "max_unrecorded_success_age_s": figure("max_unrecorded_success_age_s"),
            "max_receives_per_day": figure("max_receives_per_day"),
            "max_call_after_429_s": figure("max_call_after_429_s"),
            "max_call_after_pause_s": figure("max_call_after_pause_s"),
            "quota_peak_use_max": figure("quota_peak_use"),
        },
    }


def to_json_line(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)
