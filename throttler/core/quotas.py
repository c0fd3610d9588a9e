"""Quota configuration: tiers, concurrency and safety margin; parsing and validation (pure).

The state-table item is flat so an operator can edit it in the console:
``{"pk": "quotas", "second": 20, "minute": 600, "day": 10000, "concurrency": 4,
   "aligned": ["day"], "margin_ms": 50}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from throttler.core.errors import ConfigError

NAMED_WINDOWS_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CUSTOM_TIER = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
# By default each tier's window is widened by 0.4% (never more than 250 ms): enough for the jitter
# between sending a call and the API receiving it, while keeping use of the quota above 99%.
DEFAULT_MARGIN_FRACTION = 0.004
DEFAULT_MARGIN_CAP_S = 0.25
# Attributes of the quota item that are not tiers.
META_KEYS = {"pk", "concurrency", "aligned", "margin_ms", "updated_at", "updated_by"}
MAX_WINDOW_S = 31 * 86400


def tier_window_s(name: str) -> int:
    """Window length of a tier name (`second`, `90s`, `12h`...); raises ConfigError if it is not one."""
    if name in NAMED_WINDOWS_S:
        return NAMED_WINDOWS_S[name]
    match = CUSTOM_TIER.match(name)
    if not match:
        raise ConfigError(f"unknown tier {name!r}: use second, minute, hour, day or <N>s|m|h|d")
    window_s = int(match.group(1)) * UNIT_S[match.group(2)]
    if window_s > MAX_WINDOW_S:
        raise ConfigError(f"tier {name!r} is longer than 31 days")
    return window_s


@dataclass(frozen=True)
class Tier:
    name: str
    window_s: int
    limit: int
    aligned: bool = False
    margin_s: float = 0.0

    @property
    def span_s(self) -> float:
        """The window the scheduler enforces on send times: the API's window plus the margin."""
        return self.window_s + self.margin_s

    @property
    def rate_per_s(self) -> float:
        return self.limit / self.span_s


@dataclass(frozen=True)
class QuotaConfig:
    tiers: tuple[Tier, ...]
    concurrency: int | None = None
    margin_ms: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def finest(self) -> Tier:
        return min(self.tiers, key=lambda t: (t.window_s, t.limit))

    @property
    def binding(self) -> Tier:
        """The tier with the lowest long-run rate: the one a long backlog is limited by."""
        return min(self.tiers, key=lambda t: t.rate_per_s)

    def describe(self) -> str:
        parts = [f"{t.name}={t.limit}" for t in self.tiers]
        if self.concurrency is not None:
            parts.append(f"concurrency={self.concurrency}")
        return " ".join(parts)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if isinstance(value, (int, Decimal)) or (isinstance(value, float) and value.is_integer()):
        number = int(value)
        if number != value:
            raise ConfigError(f"{name} must be a whole number, not {value!r}")
    elif isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        number = int(value)
    else:
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if number < 0:
        raise ConfigError(f"{name} must not be negative ({number})")
    return number


def _margin_s(window_s: int, margin_ms: float | None) -> float:
    if margin_ms is not None:
        return margin_ms / 1000.0
    return min(DEFAULT_MARGIN_CAP_S, window_s * DEFAULT_MARGIN_FRACTION)


def parse_quota_item(item: Mapping[str, Any]) -> QuotaConfig:
    """Validate a quota item (console-edited or written by the CLI); ConfigError says what is wrong."""
    aligned_raw = item.get("aligned", [])
    if isinstance(aligned_raw, str):
        aligned_names = {n for n in re.split(r"[,\s]+", aligned_raw) if n}
    elif isinstance(aligned_raw, Iterable):
        aligned_names = {str(n) for n in aligned_raw}
    else:
        raise ConfigError("aligned must be a list of tier names")
    margin_ms: float | None = None
    if item.get("margin_ms") is not None:
        try:
            margin_ms = float(item["margin_ms"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"margin_ms must be a number, not {item['margin_ms']!r}") from exc
        if not 0 <= margin_ms <= 60_000:
            raise ConfigError("margin_ms must be between 0 and 60000")
    concurrency = None
    if item.get("concurrency") is not None:
        concurrency = _as_int("concurrency", item["concurrency"])
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
    tiers = []
    for name, value in item.items():
        if name in META_KEYS:
            continue
        window_s = tier_window_s(name)
        limit = _as_int(name, value)
        tiers.append(Tier(name, window_s, limit, name in aligned_names, _margin_s(window_s, margin_ms)))
    unknown_aligned = aligned_names - {t.name for t in tiers}
    if unknown_aligned:
        raise ConfigError(f"aligned names tiers that are not set: {', '.join(sorted(unknown_aligned))}")
    if not tiers:
        raise ConfigError("at least one rate tier (second, minute, hour, day or <N>s|m|h|d) is required")
    windows = [t.window_s for t in tiers]
    if len(set(windows)) != len(windows):
        raise ConfigError("two tiers have the same window length")
    tiers.sort(key=lambda t: t.window_s)
    return QuotaConfig(tuple(tiers), concurrency, margin_ms, dict(item))


def parse_assignments(text: str | Iterable[str]) -> dict[str, str]:
    """`second=5 minute=100` (the CLI's and DEFAULT_QUOTAS' syntax) to a name -> value mapping."""
    words = text.split() if isinstance(text, str) else list(text)
    pairs: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"expected TIER=LIMIT, got {word!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def apply_assignments(item: Mapping[str, Any], assignments: Mapping[str, str]) -> dict[str, Any]:
    """Change only the named tiers; `TIER=off` removes one. Returns a new, validated item."""
    new: dict[str, Any] = {k: v for k, v in item.items() if k not in ("updated_at", "updated_by")}
    for name, value in assignments.items():
        if value.lower() == "off":
            new.pop(name, None)
            if isinstance(new.get("aligned"), list) and name in new["aligned"]:
                new["aligned"] = [n for n in new["aligned"] if n != name]
            continue
        if name == "aligned":
            new["aligned"] = [n for n in re.split(r"[,\s]+", value) if n]
        elif name == "margin_ms":
            new["margin_ms"] = value
        elif name == "concurrency":
            new["concurrency"] = _as_int(name, value)
        else:
            tier_window_s(name)
            new[name] = _as_int(name, value)
    if not new.get("aligned"):
        new.pop("aligned", None)
    parse_quota_item(new)
    if "margin_ms" in new:
        new["margin_ms"] = float(new["margin_ms"])
    return new


def defaults_item(default_quotas: str) -> dict[str, Any] | None:
    """The stage's default quotas (a serverless.yml parameter) as an item, or None when unset."""
    if not default_quotas.strip():
        return None
    return apply_assignments({}, parse_assignments(default_quotas))
