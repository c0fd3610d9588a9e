"""What the benchmark assumes about the world, each in one place: the tiers, the fastest legal schedule,
the API's latency, and a skewed (Zipf) backlog over quota keys.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from throttler.core.quotas import tier_window_s
from throttler.settings import Settings

SHIPPED_MAX_PARALLEL = Settings.worker_max_parallel  # WORKER_MAX_PARALLEL as serverless.yml ships it

Tiers = tuple[tuple[str, int, int], ...]  # (name, window_s, limit)


def parse_tiers(text: str) -> Tiers:
    """`"minute=600 second=20"` -> (("second", 1, 20), ("minute", 60, 600)), finest first."""
    tiers = []
    for part in text.replace(",", " ").split():
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"bad tier {part!r}: use NAME=LIMIT, e.g. second=20")
        tiers.append((name.strip(), tier_window_s(name.strip()), int(value)))
    if not tiers:
        raise ValueError("no tiers given")
    return tuple(sorted(tiers, key=lambda t: t[1]))


def tiers_text(tiers: Tiers) -> str:
    return " ".join(f"{name}={limit}" for name, _, limit in tiers)


def rate_per_s(tiers: Tiers) -> float:
    """The long-run rate the tiers allow (the slowest tier's)."""
    return min(limit / window_s for _, window_s, limit in tiers)


def burst_rate_per_s(tiers: Tiers) -> float:
    """The rate the finest tier allows (calls are spaced evenly at it)."""
    _name, window_s, limit = min(tiers, key=lambda t: (t[1], t[2]))
    return limit / window_s


# ---------------------------------------------------------------------------------------------- ideal
@dataclass(frozen=True)
class Ideal:
    drain_s: float  # when the fastest legal schedule makes its last call, from the start
    binding_tier: str
    tier_alone_s: dict[str, float]


def fastest_schedule_s(jobs: int, tiers: Tiers) -> float:
    """Time of the last call when every call goes as early as every sliding window allows (greedy).

    Call k may go at t when each tier's (t - window, t] holds fewer than `limit` earlier calls, that is
    t >= t[k - limit] + window. Greedy is optimal for sliding windows: no legal schedule's k-th call is
    earlier than greedy's.
    """
    if jobs <= 0:
        return 0.0
    times = [0.0] * jobs
    for k in range(jobs):
        t = 0.0
        for _, window_s, limit in tiers:
            if k >= limit:
                t = max(t, times[k - limit] + window_s)
        times[k] = t
    return times[-1]


def ideal(jobs: int, tiers: Tiers) -> Ideal:
    alone = {name: fastest_schedule_s(jobs, ((name, w, limit),)) for name, w, limit in tiers}
    binding = max(tiers, key=lambda t: (alone[t[0]], -t[2] / t[1]))[0]
    return Ideal(fastest_schedule_s(jobs, tiers), binding, alone)


# ---------------------------------------------------------------------------------------------- the API's latency
@dataclass(frozen=True)
class ApiLatency:
    """A call's time, in two parts, as a rate limiter in front of a real API sees it.

    - the network, each way: `net_ms` plus a jitter drawn from an exponential of mean `jitter_ms`
      (in-region TLS keep-alive connections: a fraction of a millisecond; over the internet, more);
    - the API's own work after the request arrived (where its rate limiter counts it): lognormal with
      shape `sigma`, scaled so that the whole call's median is `median_ms` (sigma 0.6: p99 about 4x
      the median, the long tail of a busy API).

    The limiter counts a call on arrival, after the outbound network leg only: the API's processing time,
    however long its tail, moves the answer, not the arrival.
    """

    median_ms: float = 50.0
    sigma: float = 0.6
    net_ms: float = 10.0
    jitter_ms: float = 0.25

    @property
    def processing_median_s(self) -> float:
        return max(0.0005, (self.median_ms - 2 * self.net_ms - 2 * self.jitter_ms * math.log(2)) / 1000.0)

    def sample(self, rng: random.Random) -> tuple[float, float]:
        """(outbound seconds, total seconds) of one call."""
        out = (self.net_ms + rng.expovariate(1.0 / self.jitter_ms) if self.jitter_ms > 0 else self.net_ms) / 1000.0
        back = (self.net_ms + rng.expovariate(1.0 / self.jitter_ms) if self.jitter_ms > 0 else self.net_ms) / 1000.0
        work = self.processing_median_s * math.exp(self.sigma * rng.gauss(0.0, 1.0))
        return out, out + work + back

    def quantile_s(self, q: float) -> float:
        """Approximate quantile of the whole call (the network's jitter neglected)."""
        z = _normal_quantile(q)
        return 2 * self.net_ms / 1000.0 + self.processing_median_s * math.exp(self.sigma * z)

    def describe(self) -> str:
        return (
            f"median {self.median_ms:g} ms (network {self.net_ms:g} ms each way + exponential jitter of mean "
            f"{self.jitter_ms:g} ms; the API's work lognormal, sigma {self.sigma:g}; p99 about "
            f"{1000 * self.quantile_s(0.99):.0f} ms)"
        )


def _normal_quantile(q: float) -> float:
    """Inverse of the standard normal CDF (Acklam's rational approximation; enough for a p99)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)


# ---------------------------------------------------------------------------------------------- keys
def zipf_backlog(keys: int, heaviest: int) -> list[int]:
    """Jobs per key, rank 1 first: `heaviest / rank`, at least one each (Zipf, exponent 1)."""
    return [max(1, round(heaviest / rank)) for rank in range(1, keys + 1)]


def key_weight(rank: int) -> int:
    """A few keys weigh more, so that the shares test weights: every 7th key 2, every 11th 3."""
    if rank % 11 == 5:
        return 3
    if rank % 7 == 3:
        return 2
    return 1


def water_fill(capacity: float, caps: list[float], weights: list[float]) -> list[float]:
    """Weighted max-min fair shares of `capacity` with per-key caps (the ideal split among keys that
    all have a backlog): keys share in proportion to their weights, none above its cap."""
    shares = [0.0] * len(caps)
    active = list(range(len(caps)))
    left = capacity
    while active and left > 1e-12:
        total_w = sum(weights[i] for i in active)
        unit = left / total_w
        capped = [i for i in active if caps[i] - shares[i] <= unit * weights[i] + 1e-12]
        if not capped:
            for i in active:
                shares[i] += unit * weights[i]
            break
        for i in capped:
            left -= caps[i] - shares[i]
            shares[i] = caps[i]
        done = set(capped)  # once, not per key: 10,000 keys took minutes
        active = [i for i in active if i not in done]
    return shares


def jain(values: list[float]) -> float | None:
    """Jain's fairness index: 1 when every value is equal, 1/n when one takes everything."""
    if not values:
        return None
    square = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * square) if square > 0 else None


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1), nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
