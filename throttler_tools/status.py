"""The status model: what a stage is doing right now, as one plain report that `status` prints, `status --json`
emits and a dashboard renders. `quota show` uses the same tier shape.

Every tier (SPEC "The API's own signals") is reported as

    {"limit": <int or "auto:MAX">, "learned": <the learned limit, auto tiers>,
     "api": {"limit", "window_s", "remaining", "reset_s"} (while the API's word applies), "used": <units now>}

under "tiers" (the stage's) and under "keys": {"<key>": {"weight", "backlog", "tiers": {...}, ...}}. A window
the API announced that no configured tier has is reported as a tier of its own, `api:<N>s`, whose limit is
the API's. Which configuration is in force comes from the one resolver (`throttler.dispatch.control`), and
pacing from the pacer itself, so this report cannot disagree with what the throttler does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from throttler.core.pacing import ApiState, Learned, Limit, Meter, Pacer, Scope
from throttler.core.quotas import QuotaConfig, Tier, plain_item
from throttler.dispatch.control import INDEFINITE_PAUSE_S, Pauses, QuotaInForce, resolve_quotas
from throttler.naming import StageNames
from throttler.producer import PublishedSettings
from throttler.queue import JobQueue, QueueDepth
from throttler.store import Control, StateStore, UsageRecord

BUSIEST_KEYS = 10
# Beyond this many calls the drain estimate extrapolates at the sustained rate instead of pacing each call.
ETA_PACED_CALLS = 5_000
# A pause that ends further ahead than this is open-ended ("until resume").
OPEN_ENDED_S = INDEFINITE_PAUSE_S / 2
YEAR_S = 365 * 86400.0
UNKNOWN_DEFAULTS = "unknown here until the throttler's first run"


# ------------------------------------------------------------------------------------------- stage settings
@dataclass(frozen=True)
class StageDefaults:
    """The stage's own settings as the operator's tools can know them: what its throttler published in the
    state table, else serverless.yml (where the project's files and PyYAML are at hand), else unknown."""

    default_quotas: str | None = None  # None: unknown
    allowed_hosts: tuple[str, ...] | None = None
    max_message_bytes: int | None = None
    default_latency: str | None = None
    source: str = UNKNOWN_DEFAULTS

    @property
    def known(self) -> bool:
        return self.default_quotas is not None


@functools.lru_cache(maxsize=16)
def serverless_yml_defaults(stage: str) -> StageDefaults | None:
    """The stage's parameters in serverless.yml, or None where that file or PyYAML is not installed (read
    once per process: parsing it takes a noticeable part of a second)."""
    try:
        from throttler_tools import stackdef

        if not stackdef.SERVERLESS_YML.is_file():
            return None
        params = stackdef.params(stage)
    except (ImportError, OSError):
        return None
    hosts = params.get("allowedHosts")
    return StageDefaults(
        default_quotas=str(params.get("defaultQuotas") or ""),
        allowed_hosts=tuple(h.strip() for h in str(hosts).split(",") if h.strip()) if hosts is not None else None,
        default_latency=str(params["latency"]) if params.get("latency") else None,
        source="serverless.yml",
    )


def stage_defaults(
    stage: str, control: Control | None, fallback: Callable[[str], StageDefaults | None] | None = None
) -> StageDefaults:
    """Published settings first (field by field), then serverless.yml (or `fallback`), then unknown."""
    published = PublishedSettings.of_control(control) if control is not None else None
    incomplete = published is None or published.default_quotas is None or published.allowed_hosts is None
    yml = (fallback or serverless_yml_defaults)(stage) if incomplete else None
    if published is None:
        return yml or StageDefaults()
    when = f" at {clock_text(published.written_at)}" if published.written_at else ""
    return StageDefaults(
        default_quotas=_first(published.default_quotas, yml.default_quotas if yml else None),
        allowed_hosts=_first(published.allowed_hosts, yml.allowed_hosts if yml else None),
        max_message_bytes=published.max_message_bytes,
        default_latency=published.default_latency or (yml.default_latency if yml else None),
        source=f"published by the throttler{when}",
    )


def _first(value: Any, otherwise: Any) -> Any:
    return value if value is not None else otherwise


def quota_in_force(control: Control, defaults: StageDefaults) -> QuotaInForce:
    """The one resolver's answer, with a truthful error when the defaults are only unknown here."""
    found = resolve_quotas(control, defaults.default_quotas or "")
    if found.config is None and found.item is None and not defaults.known:
        return QuotaInForce(None, "none", f"no quota item, and the stage's default quotas are {UNKNOWN_DEFAULTS}", None)
    return found


# ------------------------------------------------------------------------------------------- one tier
def tier_limit(tier: Tier) -> int | str:
    return f"auto:{tier.auto_max}" if tier.is_auto else int(tier.limit or 0)


def learned_of(tier: Tier, meter: Meter | None) -> Learned:
    """An auto tier's learned state (where a run starts from when there is none yet: MAX/4)."""
    found = meter.learned.get(tier.name) if meter is not None else None
    return found if found is not None else Learned(max(1.0, (tier.auto_max or 4) / 4))


def configured_tiers(tiers: Iterable[Tier], meter: Meter | None) -> dict[str, dict[str, Any]]:
    """The configured and learned values of some tiers (what `quota show` reports)."""
    out: dict[str, dict[str, Any]] = {}
    for tier in tiers:
        entry: dict[str, Any] = {"limit": tier_limit(tier)}
        if tier.is_auto:
            entry["learned"] = learned_of(tier, meter).limit
        out[tier.name] = entry
    return out


def history_of(tiers: Iterable[Tier], meter: Meter | None) -> dict[str, list[dict[str, Any]]]:
    """Each auto tier's recent learned values, oldest first: {"at", "limit", "why"}."""
    out: dict[str, list[dict[str, Any]]] = {}
    for tier in tiers:
        if tier.is_auto and meter is not None and tier.name in meter.learned:
            out[tier.name] = [{"at": float(t), "limit": int(n), "why": str(w)} for t, n, w in meter.learned[tier.name].history]
    return out


def quota_report(
    stage: str, quota: QuotaInForce, defaults: StageDefaults, stage_meter: Meter | None,
    key_meters: Mapping[str, str | None], keys: Iterable[str] | None = None,
) -> dict[str, Any]:
    """What `quota show --json` prints: the configuration in force, where it comes from, and its tiers,
    the per-key defaults and the keys' overrides in the status tier shape (configured and learned values).
    `keys`: the keys to show (default: every key with an override)."""
    config = quota.config
    shown = quota.item if quota.item is not None else (plain_item(config.raw) if config is not None else None)
    report: dict[str, Any] = {"stage": stage, "source": quota.source, "error": quota.error, "defaults": defaults.source,
                              "quotas": shown, "tiers": {}, "per_key": None, "keys": {}}
    if config is None:
        return report
    report["tiers"] = configured_tiers(config.tiers, stage_meter)
    report.update(
        concurrency=config.concurrency,
        margin_ms=config.margin_ms,
        aligned=sorted({t.name for t in (*config.tiers, *config.per_key) if t.aligned}),
        latency=config.latency or defaults.default_latency,
        cost_header=config.cost_header,
        signals_scope=config.signals_scope,
    )
    if config.per_key:
        report["per_key"] = {"tiers": configured_tiers(config.per_key, None)}
    for key in (list(keys) if keys is not None else sorted(config.keys)):
        quota_of_key = config.key_quota(key)
        meter = Meter.from_json(key_meters.get(key)) if key_meters.get(key) else None
        report["keys"][key] = {"weight": quota_of_key.weight, "tiers": configured_tiers(quota_of_key.tiers, meter),
                               "override": key in config.keys}
    return report


# ------------------------------------------------------------------------------------------- one scope, now
Entries = dict[str, dict[str, Any]]


def _api_entries(api: ApiState, tiers: tuple[Tier, ...], now: float) -> tuple[Entries, Entries]:
    """The API's word on configured tiers (by window length) and on windows of its own (`api:<N>s`)."""
    on_tier: Entries = {}
    own: Entries = {}
    by_window = {t.window_s: t.name for t in tiers if not t.aligned}
    entries: list[dict[str, Any]] = []
    for policy in api.active_policies(now):
        window_s = max(1, math.ceil(policy.window_s))
        entry = {"limit": policy.limit, "window_s": _num(policy.window_s), "remaining": None, "reset_s": None}
        entries.append(entry)
        (on_tier if window_s in by_window else own)[by_window.get(window_s, f"api:{window_s}s")] = entry
    budget = api.budget
    if budget is not None and now < budget.reset_at:
        remaining, reset_s = max(0, budget.remaining - budget.used), round(budget.reset_at - now, 3)
        fits = [e for e in entries if e["window_s"] + 1 >= reset_s]
        target = min(fits, key=_window) if fits else (max(entries, key=_window) if entries else None)
        if target is None and tiers:
            # Remaining calls without a stated policy: shown on the tier whose window the reset falls within.
            wide = [t for t in tiers if t.window_s + 1 >= reset_s]
            tier = min(wide, key=lambda t: t.window_s) if wide else max(tiers, key=lambda t: t.window_s)
            target = on_tier[tier.name] = {"limit": None, "window_s": None, "remaining": None, "reset_s": None}
        if target is not None:
            target["remaining"], target["reset_s"] = remaining, reset_s
    return on_tier, own


def _window(entry: Mapping[str, Any]) -> float:
    return float(entry["window_s"])


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


@dataclass
class ScopeReport:
    """One scope (the stage, or a key) now: its tiers in the report's shape, what binds it and why."""

    tiers: dict[str, dict[str, Any]]
    follows: dict[str, Any] | None
    history: dict[str, list[dict[str, Any]]]
    rate_per_s: float = 0.0


def scope_report(scope: Scope, now: float) -> ScopeReport:
    meter = scope.meter
    usage = scope.usage(now)
    on_tier, own = _api_entries(meter.api, scope.tiers, now)
    tiers: dict[str, dict[str, Any]] = {}
    for tier in scope.tiers:
        entry: dict[str, Any] = {"limit": tier_limit(tier)}
        if tier.is_auto:
            entry["learned"] = learned_of(tier, meter).limit
        if tier.name in on_tier:
            entry["api"] = on_tier[tier.name]
        entry["used"] = int(usage.get(tier.name, {}).get("used", 0))
        tiers[tier.name] = entry
    for name, api in own.items():
        tiers[name] = {"limit": api["limit"], "api": api, "used": int(usage.get(name, {}).get("used", 0))}
    limits = scope.limits(now)
    rate = scope.rate_per_s(now) if limits else math.inf
    return ScopeReport(tiers, _follows(scope, limits, now), history_of(scope.tiers, meter), rate)


def _follows(scope: Scope, limits: list[Limit], now: float) -> dict[str, Any] | None:
    """The limit a backlog is paced by right now (the lowest sustained rate) and why it is that one."""
    if not limits:
        return None
    tiers = {t.name: t for t in scope.tiers}
    by_window = {t.window_s: t.name for t in scope.tiers if not t.aligned}
    best = min(limits, key=lambda lim: (lim.limit / lim.span_s, lim.window_s))
    rate = best.limit / best.span_s
    api = scope.meter.api
    said = f" ({api.summary})" if api.summary else ""
    found: dict[str, Any]
    if best.name.startswith("api:"):
        name = by_window.get(best.window_s, best.name)
        configured = tiers.get(name)
        than = f", stricter than the configured {configured.describe()}" if configured is not None else ""
        found = {"tier": name, "by": "api", "limit": best.limit, "window_s": best.window_s,
                 "why": f"the API says {best.limit} per {best.window_s} s{than}{said}"}
    else:
        tier = tiers[best.name]
        if tier.is_auto:
            learned = learned_of(tier, scope.meter)
            last = learned.history[-1] if learned.history else None
            change = f"; last change: {last[2]} at {clock_text(last[0])}" if last else " (its starting value: MAX/4)"
            why = f"{tier.describe()} has learned {learned.limit} per {tier.window_s} s{change}"
            found = {"tier": tier.name, "by": "learned", "limit": best.limit, "window_s": tier.window_s, "why": why}
        else:
            why = f"{tier.describe()} is the tightest limit" if len(limits) > 1 else f"{tier.describe()} is the only limit"
            found = {"tier": tier.name, "by": "configured", "limit": best.limit, "window_s": tier.window_s, "why": why}
    budget = api.budget
    if budget is not None and now < budget.reset_at:
        left = max(0, budget.remaining - budget.used)
        budget_rate = left / max(budget.reset_at - now, 1e-3)
        if budget_rate < rate:
            rate = budget_rate
            found = {"tier": found["tier"], "by": "api", "limit": left, "window_s": round(budget.reset_at - now, 3),
                     "why": f"the API says {left} call{'' if left == 1 else 's'} left until its reset in "
                            f"{duration_text(budget.reset_at - now)}{said}"}
    found["rate_per_s"] = round(rate, 3)
    return found


# ------------------------------------------------------------------------------------------- drain
def drain_estimate(pacer: Pacer | None, depth: int, now: float, start_s: float | None, key: str | None = None) -> dict[str, Any]:
    """How long until `depth` more calls (1 unit each) have gone out, pacing them with the throttler's own
    pacer from the use recorded so far, after `start_s` (the pause's end; None: paused until resume).

    {"jobs", "eta_s" (None: never, or not while paused), "calls_per_s" (the average over the drain),
     "sustained_per_s", "why" (when eta_s is None)}. `pacer` is consumed (it counts the calls it paces).
    """
    out: dict[str, Any] = {"jobs": depth, "eta_s": None, "calls_per_s": None, "sustained_per_s": None, "why": None}
    if pacer is None:
        out["why"] = "no quotas in force"
        return out
    sustained = pacer.rate_per_s(now, key)
    out["sustained_per_s"] = round(sustained, 3) if math.isfinite(sustained) else None
    if depth == 0:
        out["eta_s"] = 0.0
        return out
    if start_s is None:
        out["why"] = "paused until resume"
        return out
    if sustained <= 0:
        out["why"] = "a limit is 0"
        return out
    t = now + max(0.0, start_s)
    first: float | None = None
    for _ in range(min(depth, ETA_PACED_CALLS)):
        slot = pacer.next_slot(t, key)
        if slot is None:
            out["why"] = "a limit is below one call's cost"
            return out
        pacer.take(slot, key)
        first = slot if first is None else first
        t = slot
    eta = t - now
    if depth > ETA_PACED_CALLS:
        eta = max(eta, max(0.0, start_s) + _windows_needed_s(pacer, key, depth, now))
    out["eta_s"] = round(eta, 3)
    busy = eta - max(0.0, start_s)
    out["calls_per_s"] = round(depth / busy, 3) if busy > 0 and depth > 1 else None
    return out


def _windows_needed_s(pacer: Pacer, key: str | None, calls: int, now: float) -> float:
    """Time to send `calls` more from empty windows: the finest tier spaces calls evenly; a tier of `limit`
    per window lets `limit` through each window, so it adds (calls - 1) // limit whole windows, and the
    rest go at the pace of the shorter tiers."""
    limits: list[Limit] = []
    spacing_s = 0.0
    for scope in (pacer.stage, pacer.key_scope(key)):
        if scope is not None and scope.limits(now):
            limits += scope.limits(now)
            spacing_s = max(spacing_s, scope.spacing_s(scope.limits(now)))
    ordered = sorted(limits, key=lambda lim: lim.span_s)

    def needed(n: int, upto: int) -> float:
        if n <= 1:
            return 0.0
        if upto == 0:
            return (n - 1) * spacing_s
        lim = ordered[upto - 1]
        whole = (n - 1) // max(1, lim.limit)
        return max(needed(n, upto - 1), whole * lim.span_s + needed(n - whole * max(1, lim.limit), upto - 1))

    return needed(calls, len(ordered))


# ------------------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class Snapshot:
    """What the report is built from, read once."""

    names: StageNames
    jobs: QueueDepth
    dlq: QueueDepth
    control: Control
    usage: UsageRecord
    defaults: StageDefaults
    key_meters: Mapping[str, str | None] = field(default_factory=dict)


def key_backlogs(usage: UsageRecord) -> dict[str, dict[str, Any]]:
    """Per-key backlog as the throttler last saw it (`UsageRecord.keys`: held, hidden, seen_at), where the
    throttler reports it; {} otherwise."""
    seen = getattr(usage, "keys", None) or {}
    out: dict[str, dict[str, Any]] = {}
    for key, value in seen.items():
        if isinstance(value, Mapping):
            held, hidden = int(value.get("held") or 0), int(value.get("hidden") or 0)
            out[str(key)] = {"backlog": held + hidden, "held": held, "hidden": hidden, "seen_at": value.get("seen_at")}
    return out


def keys_to_show(usage: UsageRecord, key: str | None, busiest: int = BUSIEST_KEYS) -> list[str]:
    if key is not None:
        return [key]
    seen = key_backlogs(usage)
    return sorted(seen, key=lambda k: (-seen[k]["backlog"], k))[:busiest]


def read_snapshot(
    store: StateStore, queue: JobQueue, names: StageNames, *, key: str | None = None,
    defaults: Callable[[Control], StageDefaults] | None = None, busiest: int = BUSIEST_KEYS,
) -> Snapshot:
    jobs, dlq = queue.depth(), queue.dlq_depth()
    control = store.read_control()
    usage = store.load_usage()
    keys = keys_to_show(usage, key, busiest)
    meters = store.load_key_meters(keys) if keys else {}
    resolved = defaults(control) if defaults is not None else stage_defaults(names.stage, control)
    return Snapshot(names, jobs, dlq, control, usage, resolved, meters)


def status_report(
    store: StateStore, queue: JobQueue, names: StageNames, now: float, *, key: str | None = None,
    defaults: Callable[[Control], StageDefaults] | None = None, busiest: int = BUSIEST_KEYS,
) -> dict[str, Any]:
    """The report `status` and the dashboard show (reads the stage once, then `build_report`)."""
    snapshot = read_snapshot(store, queue, names, key=key, defaults=defaults, busiest=busiest)
    return build_report(snapshot, now, key=key, busiest=busiest)


def build_report(snap: Snapshot, now: float, *, key: str | None = None, busiest: int = BUSIEST_KEYS) -> dict[str, Any]:
    """The report, from a snapshot (pure)."""
    control, usage = snap.control, snap.usage
    quota = quota_in_force(control, snap.defaults)
    config = quota.config
    stage_meter = Meter.from_json(usage.stage_meter)
    pacer = Pacer(config, stage_meter) if config is not None else None
    stage = scope_report(pacer.stage, now) if pacer is not None else ScopeReport({}, None, {})
    pauses = resolve_pauses(control, config, now)
    pause = pause_report(pauses, control, now)
    depth = snap.jobs.total
    start = pause_start_s(pause, now)
    drain = drain_estimate(_fresh_pacer(config, usage.stage_meter, {}), depth, now, start)
    seen = key_backlogs(usage)
    keys: dict[str, Any] = {}
    total_weight = sum(config.key_quota(k).weight for k in seen) if config is not None else 0
    for name in keys_to_show(usage, key, busiest):
        keys[name] = _key_report(name, config, snap, seen.get(name), now, start, total_weight, pauses.key_paused(now).get(name))
    stage_api = stage_meter.api
    return {
        "stage": snap.names.stage,
        "at": round(now, 3),
        "queue": {"name": snap.names.jobs_queue, "waiting": snap.jobs.visible + snap.jobs.delayed,
                  "in_flight": snap.jobs.in_flight},
        "dlq": {"name": snap.names.dlq, "depth": snap.dlq.total},
        "quota": {
            "source": quota.source,
            "error": quota.error,
            "in_force": config.describe() if config is not None else None,
            "concurrency": config.concurrency if config is not None else None,
            "defaults": snap.defaults.source,
        },
        "tiers": stage.tiers,
        "follows": stage.follows,
        "history": stage.history,
        "api_said": {"at": stage_api.said_at, "summary": stage_api.summary} if stage_api.said_at is not None else None,
        "pause": pause,
        "drain": drain,
        "keys": keys,
        "keys_reported": bool(getattr(usage, "keys", None)) or key is not None,
    }


def _fresh_pacer(config: QuotaConfig | None, stage_json: str | None, key_json: Mapping[str, str | None]) -> Pacer | None:
    """A pacer on copies of the meters (estimating the drain counts calls in it)."""
    if config is None:
        return None
    return Pacer(config, Meter.from_json(stage_json), lambda k: Meter.from_json(key_json.get(k)))


def _key_report(
    key: str, config: QuotaConfig | None, snap: Snapshot, seen: dict[str, Any] | None, now: float,
    start: float | None, total_weight: int, pause_until: float | None,
) -> dict[str, Any]:
    meter_json = snap.key_meters.get(key)
    quota = config.key_quota(key) if config is not None else None
    report: dict[str, Any] = {"weight": quota.weight if quota is not None else 1,
                              "backlog": seen["backlog"] if seen is not None else None}
    scope = ScopeReport({}, None, {})
    if quota is not None:
        scope = scope_report(Scope(Meter.from_json(meter_json), quota.tiers), now)
    report["tiers"] = scope.tiers
    report["follows"] = scope.follows
    report["history"] = scope.history
    if pause_until is not None:
        report["paused_until"] = pause_until
    backlog = report["backlog"]
    if backlog is None:
        report["drain"] = {"jobs": None, "eta_s": None, "calls_per_s": None, "sustained_per_s": None,
                           "why": "backlog unknown (not among the keys the throttler last reported)"}
    else:
        key_start = None if start is None else max(start, (pause_until - now) if pause_until else 0.0)
        pacer = _fresh_pacer(config, snap.usage.stage_meter, {key: meter_json})
        stage_rate = pacer.stage.rate_per_s(now) if pacer is not None else 0.0
        drain = drain_estimate(pacer, int(backlog), now, key_start, key)
        # Keys with a backlog share the stage's capacity by weight: this key's part of the stage's rate (or
        # its own tiers, if slower) is a floor on its drain.
        share = (report["weight"] / total_weight) if total_weight > 0 else 1.0
        sustained = drain["sustained_per_s"]
        if drain["eta_s"] is not None and sustained and share < 1:
            rate = min(sustained, stage_rate * share)
            drain["sustained_per_s"] = round(rate, 3)
            drain["eta_s"] = round(max(drain["eta_s"], (key_start or 0.0) + backlog / rate), 3)
        report["drain"] = drain
    if seen is not None:
        report["seen_at"] = seen.get("seen_at")
    return report


def _auto_window_s(config: QuotaConfig | None) -> float | None:
    if config is None:
        return None
    windows = [float(t.window_s) for t in config.tiers if t.is_auto]
    return max(windows) if windows else None


# ------------------------------------------------------------------------------------------- pause
def resolve_pauses(control: Control, config: QuotaConfig | None, now: float) -> Pauses:
    """The pauses as a run that starts now resolves them (a 429 without Retry-After: its first backoff)."""
    pauses = Pauses()
    pauses.from_control(control, now, _auto_window_s(config))
    return pauses


def pause_report(pauses: Pauses, control: Control, now: float) -> dict[str, Any]:
    """The operator's pause and the API's (a 429)."""
    until = pauses.until(now)
    operator = None
    if pauses.operator_until is not None:
        operator = {"until": pauses.operator_until, "until_resume": pauses.operator_until - now > OPEN_ENDED_S,
                    "reason": pauses.operator_reason or "operator"}
    api = None
    if pauses.api_until is not None and pauses.api_until > now and control.throttle is not None:
        api = {"until": round(pauses.api_until, 3), "at": control.throttle.at, "retry_after_s": control.throttle.retry_after_s,
               "reason": pauses.api_reason}
    return {
        "paused": until is not None,
        "until": until if until is None or until - now <= OPEN_ENDED_S else None,
        "until_resume": bool(operator and operator["until_resume"]),
        "reason": _pause_reason(operator, api),
        "operator": operator,
        "api": api,
        "keys": {k: round(t, 3) for k, t in sorted(pauses.key_paused(now).items())},
    }


def _pause_reason(operator: Mapping[str, Any] | None, api: Mapping[str, Any] | None) -> str | None:
    if operator is not None:
        why = operator["reason"]
        return "operator" if why in ("", "operator") else f"operator: {why}"
    return str(api["reason"]) if api is not None else None


def pause_start_s(pause: Mapping[str, Any], now: float) -> float | None:
    """Seconds until dispatch may go on (0 when not paused; None: paused until resume)."""
    if not pause["paused"]:
        return 0.0
    if pause["until_resume"]:
        return None
    return max(0.0, float(pause["until"]) - now)


# ------------------------------------------------------------------------------------------- words
def clock_text(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(seconds: float) -> str:
    """A duration a person reads at a glance: `under 1 s`, `~40 s`, `~12 min`, `~3.5 h`, `~2.0 d`, `over a year`."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"~{seconds / 3600:.1f} h"
    if seconds < YEAR_S:
        return f"~{seconds / 86400:.1f} d"
    return "over a year"


def count_text(n: int, one: str, many: str | None = None) -> str:
    """`1 call`, `2 calls`, `0 calls`."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def rate_text(per_s: float) -> str:
    if per_s >= 1 or per_s == 0:
        return f"{per_s:.2f} calls/s"
    if per_s * 60 >= 1:
        return f"{per_s * 60:.2f} calls/min"
    return f"{per_s * 3600:.2f} calls/h"


def drain_text(drain: Mapping[str, Any], unit: str = "job") -> str:
    """`17 jobs in ~2 s (about 8.50 calls/s; 1.00 calls/s sustained)`, `nothing queued`, `never: a limit is 0`."""
    jobs = drain["jobs"]
    if jobs == 0:
        return "nothing queued"
    if jobs is None:
        return drain["why"] or "unknown"
    what = count_text(int(jobs), unit)
    if drain["eta_s"] is None:
        why = drain["why"] or "unknown"
        return f"{what}: not while {why}" if why.startswith("paused") else f"{what}: never at these limits ({why})"
    parts = []
    if drain["calls_per_s"] is not None:
        parts.append(f"about {rate_text(drain['calls_per_s'])}")
    if drain["sustained_per_s"] is not None:
        parts.append(f"{rate_text(drain['sustained_per_s'])} sustained")
    detail = f" ({'; '.join(parts)})" if parts else ""
    return f"{what} in {duration_text(drain['eta_s'])}{detail}"
