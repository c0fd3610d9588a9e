"""The demo's charts: what the API received over time, against the limits (one chart per scenario)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from throttler_tools.fakeapi import Call

OK_COLOUR, THROTTLED_COLOUR, ERROR_COLOUR = "tab:blue", "tab:red", "tab:orange"
KEY_COLOURS = ["tab:blue", "tab:green", "tab:purple", "tab:olive", "tab:cyan", "tab:brown"]


def plot_scenario(scenario: Any, report: dict[str, Any], learned: Any, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    calls = sorted(scenario.api.snapshot(), key=lambda c: c.at)
    if not calls:
        raise ValueError("no calls to plot")
    draw: Callable[..., None] = {"tiers": _tiers, "keys": _keys, "unknown-limit": _unknown}[scenario.name]
    draw(scenario, report, learned, calls, path)


def _per_second(calls: list[Call], t0: float, seconds: int, test: Callable[[Call], bool]) -> list[int]:
    counts = [0] * seconds
    for c in calls:
        if test(c):
            counts[min(seconds - 1, int(c.at - t0))] += 1
    return counts


def _sliding(times: list[float], window_s: float, until_s: float, step_s: float = 0.05) -> tuple[list[float], list[int]]:
    """How many of `times` (seconds since t0, sorted) fall in (t - window, t], every step."""
    xs: list[float] = []
    ys: list[int] = []
    start = end = 0
    t = 0.0
    while t <= until_s:
        while end < len(times) and times[end] <= t:
            end += 1
        while start < end and times[start] <= t - window_s:
            start += 1
        xs.append(t)
        ys.append(end - start)
        t += step_s
    return xs, ys


def _status_bars(axis: Any, calls: list[Call], t0: float, seconds: int) -> None:
    kinds: list[tuple[str, str, Callable[[Call], bool]]] = [
        ("2xx", OK_COLOUR, lambda c: 200 <= c.status < 300),
        ("429", THROTTLED_COLOUR, lambda c: c.status == 429),
        ("other errors", ERROR_COLOUR, lambda c: not 200 <= c.status < 300 and c.status != 429),
    ]
    bottom = [0] * seconds
    for label, colour, test in kinds:
        counts = _per_second(calls, t0, seconds, test)
        if any(counts):
            axis.bar([s + 0.5 for s in range(seconds)], counts, width=0.9, bottom=bottom, color=colour, label=label)
        bottom = [a + b for a, b in zip(bottom, counts, strict=True)]


def _finish(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tiers(scenario: Any, report: dict[str, Any], learned: Any, calls: list[Call], path: str) -> None:
    """Calls per second against the per-second limit; the sliding 10-second count against its limit."""
    import matplotlib.pyplot as plt

    second, ten = scenario.tiers[0], scenario.tiers[1]
    t0 = calls[0].at
    seconds = int(calls[-1].at - t0) + 1
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    _status_bars(top, calls, t0, seconds)
    top.axhline(second.limit, color="black", linestyle="--", label=f"second limit ({second.limit})")
    pauses = [c for c in calls if c.status == 429 and c.path.startswith("/throttle/")]
    for n, call in enumerate(pauses):
        for axis in (top, bottom):  # the pause the API asked for with Retry-After
            axis.axvspan(call.at - t0, call.at - t0 + scenario.pause_asked_s, color="tab:red", alpha=0.12, lw=0,
                         label="pause (Retry-After)" if n == 0 and axis is top else None)
    top.set_ylabel("calls per second")
    top.set_ylim(0, second.limit * 1.45)
    top.legend(loc="upper right", ncol=5, fontsize="small")
    top.set_title(f"throttler demo: {report['calls']} calls, {report['quota_violations']} quota violations, "
                  f"{report['order_violations']} ordering errors")
    xs, ys = _sliding([c.at - t0 for c in calls], ten.window_s, seconds)
    bottom.plot(xs, ys, color="tab:green", label=f"calls in the last {ten.window_s:g} s (sliding)")
    bottom.axhline(ten.limit, color="black", linestyle="--", label=f"{ten.name} limit ({ten.limit})")
    bottom.set_ylim(0, ten.limit * 1.3)
    bottom.set_ylabel(f"calls in {ten.window_s:g} s")
    bottom.set_xlabel("seconds since the first call")
    bottom.legend(loc="lower right", fontsize="small")
    _finish(fig, path)


def _keys(scenario: Any, report: dict[str, Any], learned: Any, calls: list[Call], path: str) -> None:
    """One small chart per key: its calls in the last second (sliding) against its own limit; and the stage's
    total against the global limit."""
    import matplotlib.pyplot as plt

    keys = {j.group: j.key for j in scenario.jobs}
    t0 = calls[0].at
    until = calls[-1].at - t0 + 1
    panels = [*scenario.key_limits.items(), ("all keys", scenario.tiers[0])]
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(12, 2.3 * rows + 0.8), sharex=True)
    flat = list(axes.flat)
    for n, (name, limit) in enumerate(panels):
        axis = flat[n]
        stage = name == "all keys"
        colour = "black" if stage else KEY_COLOURS[n % len(KEY_COLOURS)]
        times = [c.at - t0 for c in calls if stage or keys.get(c.group or "") == name]
        xs, ys = _sliding(times, limit.window_s, until)
        axis.plot(xs, ys, color=colour, lw=1.3)
        axis.axhline(limit.limit, color="black", linestyle="--", lw=1)
        axis.set_ylim(0, limit.limit * 1.4)
        axis.set_ylabel("calls / last s", fontsize="small")
        if stage:
            title = f"the stage: {len(calls)} calls, at most {max(ys, default=0)} in a second, global limit {limit.limit}"
        else:
            k = report["keys"][name]
            title = (f"{name} (weight {k['weight']}): {k['calls']} calls, at most {k['max_calls_in_any_window']} "
                     f"in a second, its limit {limit.limit}; last call at {k['last_call_s']:.0f} s")
        axis.set_title(title, fontsize="small")
    for axis in flat[len(panels):]:
        axis.set_visible(False)
    for axis in flat[-2:]:
        axis.set_xlabel("seconds since the first call")
    fig.suptitle(f"throttler demo, per-key quotas (dashed: each one's limit): {report['quota_violations']} quota violations",
                 fontsize="medium")
    _finish(fig, path)


def _unknown(scenario: Any, report: dict[str, Any], learned: Any, calls: list[Call], path: str) -> None:
    """Calls per second (ok and 429) with the learned limit over them, against the API's true limit."""
    import matplotlib.pyplot as plt

    info = report["learned"]
    t0 = calls[0].at
    seconds = int(calls[-1].at - t0) + 1
    fig, axis = plt.subplots(1, 1, figsize=(11, 5))
    _status_bars(axis, calls, t0, seconds)
    points = [(t - t0, v) for t, v in (learned.points if learned is not None else [])]
    if points:
        xs = [max(0.0, t) for t, _ in points] + [seconds]
        ys = [v for _, v in points] + [points[-1][1]]
        axis.step(xs, ys, where="post", color="tab:green", lw=2, label="learned limit (calls/s)")
    axis.axhline(info["true_limit"], color="black", linestyle="--",
                 label=f"the API's true limit ({info['true_limit']}/s, not stated)")
    axis.axhline(info["max"], color="grey", linestyle=":", label=f"auto:{info['max']} (never above)")
    axis.set_ylim(0, info["max"] * 1.1)
    axis.set_ylabel("calls per second")
    axis.set_xlabel("seconds since the first call")
    axis.legend(loc="upper right", fontsize="small")
    share = info["share_429_second_half"]
    axis.set_title(f"throttler demo, unknown limit: learned {info['final']}/s (true {info['true_limit']}/s); "
                   f"429s {info['hidden_429s']}, {share:.1%} of the calls in the second half" if share is not None else
                   "throttler demo, unknown limit", fontsize="medium")
    _finish(fig, path)
