"""Quota configuration (pure): the stage's tiers, per-key tiers, weights, and how to read and edit them.

The state-table item is flat for the stage's own tiers, so an operator can edit it in the console:

    {"pk": "quotas", "second": 20, "minute": 600, "day": "auto:100000", "concurrency": 4,
     "aligned": ["day"], "margin_ms": 50, "latency": "low", "cost_header": "X-Cost-Units",
     "signals_scope": "key",
     "per_key": {"minute": 60},
     "keys": {"tenant-a": {"minute": 120, "weight": 3}, "tenant-b": {"minute": "off"}}}

A tier's value is a whole number of calls (or cost units) per window, or `auto:MAX` (learned, never
above MAX). `per_key` holds the tiers every key gets; `keys` overrides them for named keys (a tier
named there replaces the default of the same name, `off` removes it) and sets the key's `weight`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from throttler.core.errors import ConfigError

NAMED_WINDOWS_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CUSTOM_TIER = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
# By default each tier's window is widened by 0.4% (at least MIN_MARGIN_MS, at most 250 ms): room for
# the jitter between sending a call and the API receiving it, while keeping use of the quota above 99%.
DEFAULT_MARGIN_FRACTION = 0.004
DEFAULT_MARGIN_CAP_S = 0.25
# The worker may send a call up to half the margin after its slot (the other half covers the network):
# a margin below this would leave it no time at all to wake up and send.
MIN_MARGIN_MS = 2.0
MAX_MARGIN_MS = 60_000.0
MAX_WINDOW_S = 31 * 86400
MAX_LIMIT = 10**12  # a limit beyond any real API, and within what DynamoDB and floats hold exactly
MAX_WEIGHT = 1000
MAX_COSTS_KEPT = 4096  # keys whose largest cost a configuration remembers
AUTO = re.compile(r"^auto:([0-9]{1,13})$")
KEY_NAME = re.compile(r"^[\x20-\x7e]{1,128}$")
LATENCY_MODES = ("low", "cost")
SIGNAL_SCOPES = ("stage", "key")
CONCURRENCY = "concurrency"
# Attributes of the quota item that are not tiers.
META_KEYS = {
    "pk",
    CONCURRENCY,
    "aligned",
    "margin_ms",
    "updated_at",
    "updated_by",
    "per_key",
    "keys",
    "latency",
    "cost_header",
    "signals_scope",
}
KEY_META = {"weight"}
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")


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
    """One window and its limit. `limit` is None for a learned tier (`auto:MAX`): the pacer resolves it."""

    name: str
    window_s: int
    limit: int | None
    aligned: bool = False
    margin_s: float = 0.0
    auto_max: int | None = None

    @property
    def span_s(self) -> float:
        """The window the scheduler enforces on send times: the API's window plus the margin."""
        return self.window_s + self.margin_s

    @property
    def is_auto(self) -> bool:
        return self.auto_max is not None

    @property
    def ceiling(self) -> int:
        """The most this tier can ever allow per window (its limit, or an auto tier's MAX)."""
        return int(self.limit if self.limit is not None else self.auto_max or 0)

    def describe(self) -> str:
        return f"{self.name}=auto:{self.auto_max}" if self.is_auto else f"{self.name}={self.limit}"


@dataclass(frozen=True)
class KeyQuota:
    """The tiers and weight one key gets (per_key defaults merged with its override)."""

    tiers: tuple[Tier, ...] = ()
    weight: int = 1


NO_KEY_QUOTA = KeyQuota()  # jobs without a key: nothing of their own


@dataclass(frozen=True)
class QuotaConfig:
    tiers: tuple[Tier, ...]
    concurrency: int | None = None
    margin_ms: float | None = None
    per_key: tuple[Tier, ...] = ()
    keys: Mapping[str, KeyQuota] = field(default_factory=dict)
    latency: str | None = None  # None: the stage's default (settings.default_latency)
    cost_header: str | None = None
    signals_scope: str = "stage"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # max_cost per key: the throttler asks for every message it receives, and the answer depends on the tiers alone.
    _max_costs: dict[str | None, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def key_quota(self, key: str | None) -> KeyQuota:
        """What applies to a job's key: its override, else the per-key default (no key: nothing of its own)."""
        if key is None:
            return NO_KEY_QUOTA
        found = self.keys.get(key)
        return found if found is not None else KeyQuota(self.per_key, 1)

    @property
    def finest(self) -> Tier:
        return min(self.tiers, key=lambda t: (t.window_s, t.ceiling))

    @property
    def binding(self) -> Tier:
        """The tier with the lowest long-run rate: the one a long backlog is limited by."""
        return min(self.tiers, key=lambda t: t.ceiling / t.span_s)

    @property
    def has_key_tiers(self) -> bool:
        return bool(self.per_key) or any(q.tiers for q in self.keys.values())

    def max_cost(self, key: str | None) -> int:
        """The largest cost a job of this key can ever have: the smallest ceiling of the tiers that apply. A tier
        of 0 stops dispatch (the job waits for an operator), so it bounds nothing here."""
        found = self._max_costs.get(key)
        if found is None:
            if len(self._max_costs) >= MAX_COSTS_KEPT:
                self._max_costs.clear()
            ceilings = [t.ceiling for t in (*self.tiers, *self.key_quota(key).tiers) if t.ceiling > 0]
            found = self._max_costs[key] = min(ceilings) if ceilings else MAX_LIMIT
        return found

    def describe(self) -> str:
        parts = [t.describe() for t in self.tiers]
        if self.concurrency is not None:
            parts.append(f"concurrency={self.concurrency}")
        if self.per_key:
            parts.append("per key: " + " ".join(t.describe() for t in self.per_key))
        if self.keys:
            parts.append(f"{len(self.keys)} key override(s)")
        return " ".join(parts)


# ------------------------------------------------------------------------------------------- values
def _number(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if isinstance(value, (int, Decimal)) or (isinstance(value, float) and value.is_integer()):
        try:
            number = int(value)
        except (ValueError, OverflowError, InvalidOperation) as exc:
            raise ConfigError(f"{name} must be a whole number, not {value!r}") from exc
        if number != value:
            raise ConfigError(f"{name} must be a whole number, not {value!r}")
    elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,30}\s*", value):
        number = int(value)
    else:
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if number < 0:
        raise ConfigError(f"{name} must not be negative ({number})")
    if number > MAX_LIMIT:
        raise ConfigError(f"{name} is too large ({number}): at most {MAX_LIMIT}")
    return number


def _limit(name: str, value: Any) -> tuple[int | None, int | None]:
    """A tier's value: (limit, None) or (None, auto MAX)."""
    if isinstance(value, str) and value.strip().lower().startswith("auto"):
        match = AUTO.match(value.strip().lower())
        if not match:
            raise ConfigError(f"{name} must be a whole number or auto:MAX (e.g. auto:50), not {value!r}")
        ceiling = int(match.group(1))
        if not 1 <= ceiling <= MAX_LIMIT:
            raise ConfigError(f"{name}: auto:MAX needs 1 <= MAX <= {MAX_LIMIT}")
        return None, ceiling
    return _number(name, value), None


def _margin_s(window_s: int, margin_ms: float | None) -> float:
    if margin_ms is not None:
        return margin_ms / 1000.0
    return max(MIN_MARGIN_MS / 1000.0, min(DEFAULT_MARGIN_CAP_S, window_s * DEFAULT_MARGIN_FRACTION))


def _names(raw: Any, what: str) -> set[str]:
    if raw is None:
        return set()
    if isinstance(raw, str):
        return {n for n in re.split(r"[,\s]+", raw) if n}
    if isinstance(raw, Iterable) and not isinstance(raw, Mapping):
        return {str(n) for n in raw}
    raise ConfigError(f"{what} must be a list of tier names")


def _tiers(entries: Mapping[str, Any], aligned: set[str], margin_ms: float | None, where: str) -> tuple[Tier, ...]:
    tiers = []
    for name, value in entries.items():
        window_s = tier_window_s(str(name))
        limit, auto_max = _limit(f"{where}{name}", value)
        tiers.append(Tier(str(name), window_s, limit, name in aligned, _margin_s(window_s, margin_ms), auto_max))
    windows = [t.window_s for t in tiers]
    if len(set(windows)) != len(windows):
        raise ConfigError("two tiers have the same window length" + (f" in {where.rstrip('.')}" if where else ""))
    return tuple(sorted(tiers, key=lambda t: t.window_s))


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a map of tier names to limits")
    return value


def _weight(key: str, value: Any) -> int:
    weight = _number(f"keys.{key}.weight", value)
    if not 1 <= weight <= MAX_WEIGHT:
        raise ConfigError(f"keys.{key}.weight must be between 1 and {MAX_WEIGHT}, not {weight}")
    return weight


def _key_quotas(
    item: Mapping[str, Any], per_key: tuple[Tier, ...], aligned: set[str], margin_ms: float | None
) -> dict[str, KeyQuota]:
    keys: dict[str, KeyQuota] = {}
    for key, override in _mapping(item.get("keys"), "keys").items():
        key = str(key)
        if not KEY_NAME.match(key):
            raise ConfigError(f"key name {key!r} must be 1-128 printable ASCII characters")
        if not isinstance(override, Mapping):
            raise ConfigError(f"keys.{key} must be a map of tiers and weight")
        weight = _weight(key, override["weight"]) if override.get("weight") is not None else 1
        removed = {str(n) for n, v in override.items() if isinstance(v, str) and v.strip().lower() == "off"}
        own = {n: v for n, v in override.items() if n not in KEY_META and str(n) not in removed}
        own_tiers = _tiers(own, aligned, margin_ms, f"keys.{key}.")
        named = {t.name for t in own_tiers} | removed
        merged = sorted([*own_tiers, *(t for t in per_key if t.name not in named)], key=lambda t: t.window_s)
        if len({t.window_s for t in merged}) != len(merged):
            raise ConfigError(f"keys.{key}: two tiers have the same window length (with the per_key defaults)")
        keys[key] = KeyQuota(tuple(merged), weight)
    return keys


def _choice(item: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = item.get(name)
    if value is None:
        return None
    text = str(value).strip().lower()
    if text not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return text


# ------------------------------------------------------------------------------------------- the item
def parse_quota_item(item: Mapping[str, Any]) -> QuotaConfig:
    """Validate a quota item (console-edited or written by the CLI); ConfigError says what is wrong."""
    if not isinstance(item, Mapping):
        raise ConfigError("the quota item must be a map")
    aligned = _names(item.get("aligned"), "aligned")
    margin_ms: float | None = None
    if item.get("margin_ms") is not None:
        try:
            margin_ms = float(item["margin_ms"])
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise ConfigError(f"margin_ms must be a number, not {item['margin_ms']!r}") from exc
        if not MIN_MARGIN_MS <= margin_ms <= MAX_MARGIN_MS:
            raise ConfigError(
                f"margin_ms must be between {MIN_MARGIN_MS:g} and {MAX_MARGIN_MS:g} "
                "(half of it is the worker's allowance for sending a call late)"
            )
    concurrency = None
    if item.get(CONCURRENCY) is not None:
        concurrency = _number(CONCURRENCY, item[CONCURRENCY])
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
    tiers = _tiers({k: v for k, v in item.items() if k not in META_KEYS}, aligned, margin_ms, "")
    per_key_entries = _mapping(item.get("per_key"), "per_key")
    per_key = _tiers(per_key_entries, aligned, margin_ms, "per_key.")
    keys = _key_quotas(item, per_key, aligned, margin_ms)
    known = {t.name for t in tiers} | {t.name for t in per_key} | {t.name for q in keys.values() for t in q.tiers}
    unknown_aligned = aligned - known
    if unknown_aligned:
        raise ConfigError(f"aligned names tiers that are not set: {', '.join(sorted(unknown_aligned))}")
    if not tiers:
        raise ConfigError("at least one rate tier (second, minute, hour, day or <N>s|m|h|d) is required")
    cost_header = item.get("cost_header")
    if cost_header is not None and not (isinstance(cost_header, str) and HEADER_NAME.match(cost_header)):
        raise ConfigError(f"cost_header must be an HTTP header name, not {cost_header!r}")
    return QuotaConfig(
        tiers=tiers,
        concurrency=concurrency,
        margin_ms=margin_ms,
        per_key=per_key,
        keys=keys,
        latency=_choice(item, "latency", LATENCY_MODES),
        cost_header=cost_header,
        signals_scope=_choice(item, "signals_scope", SIGNAL_SCOPES) or "stage",
        raw=dict(item),
    )


def parse_assignments(text: str | Iterable[str]) -> dict[str, str]:
    """`second=5 minute=100` (the CLI's and DEFAULT_QUOTAS' syntax) to a name -> value mapping."""
    words = text.split() if isinstance(text, str) else list(text)
    pairs: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"expected TIER=LIMIT, got {word!r}")
        if name.strip() in pairs:
            raise ConfigError(f"{name.strip()} is given twice: say it once")
        pairs[name.strip()] = value.strip()
    return pairs


def _check_tier_value(name: str, value: str) -> Any:
    """A CLI value for a tier: a whole number or auto:MAX, validated with the item's own rules."""
    tier_window_s(name)
    limit, auto_max = _limit(name, value)
    return f"auto:{auto_max}" if auto_max is not None else limit


def apply_assignments(
    item: Mapping[str, Any], assignments: Mapping[str, str], *, key: str | None = None, per_key: bool = False
) -> dict[str, Any]:
    """Change only the named settings; `TIER=off` removes one. With `key`, edit that key's override (tiers
    and `weight`); with `per_key`, the default tiers of every key. Returns a new, validated item."""
    new: dict[str, Any] = {k: v for k, v in item.items() if k not in ("updated_at", "updated_by", "pk")}
    if key is not None:
        _edit_key(new, key, assignments)
    elif per_key:
        _edit_per_key(new, assignments)
    else:
        _edit_stage(new, assignments)
    if not new.get("aligned"):
        new.pop("aligned", None)
    parse_quota_item(new)
    if "margin_ms" in new:
        new["margin_ms"] = float(new["margin_ms"])
    return new


def _edit_key(new: dict[str, Any], key: str, assignments: Mapping[str, str]) -> None:
    if not KEY_NAME.match(key):
        raise ConfigError(f"key name {key!r} must be 1-128 printable ASCII characters")
    keys = {str(k): dict(_mapping(v, f"keys.{k}")) for k, v in _mapping(new.get("keys"), "keys").items()}
    target = keys.setdefault(key, {})
    for name, value in assignments.items():
        if name == "weight":
            target["weight"] = _weight(key, value)
        elif value.lower() == "off":
            tier_window_s(name)
            if name in _mapping(new.get("per_key"), "per_key"):
                target[name] = "off"  # drop the per-key default for this key only
            else:
                target.pop(name, None)
        else:
            target[name] = _check_tier_value(name, value)
    if not target:
        keys.pop(key)
    new["keys"] = keys
    if not keys:
        new.pop("keys")


def _edit_per_key(new: dict[str, Any], assignments: Mapping[str, str]) -> None:
    defaults = dict(_mapping(new.get("per_key"), "per_key"))
    for name, value in assignments.items():
        if value.lower() == "off":
            tier_window_s(name)
            defaults.pop(name, None)
        else:
            defaults[name] = _check_tier_value(name, value)
    new["per_key"] = defaults
    if not defaults:
        new.pop("per_key")


def _edit_stage(new: dict[str, Any], assignments: Mapping[str, str]) -> None:
    for name, value in assignments.items():
        if name in ("per_key", "keys", "pk"):
            raise ConfigError(f"{name} is set with --per-key or --key, not as TIER=LIMIT")
        if value.lower() == "off":
            new.pop(name, None)
            if name in _names(new.get("aligned"), "aligned"):
                new["aligned"] = sorted(_names(new["aligned"], "aligned") - {name})
        elif name == "aligned":
            new["aligned"] = sorted(n for n in re.split(r"[,\s]+", value) if n)
        elif name == "margin_ms":
            new["margin_ms"] = value
        elif name == CONCURRENCY:
            new[CONCURRENCY] = _number(name, value)
        elif name in ("latency", "signals_scope"):
            new[name] = value.lower()
        elif name == "cost_header":
            new[name] = value
        else:
            new[name] = _check_tier_value(name, value)


def defaults_item(default_quotas: str) -> dict[str, Any] | None:
    """The stage's default quotas (a serverless.yml parameter) as an item, or None when unset."""
    if not default_quotas.strip():
        return None
    return apply_assignments({}, parse_assignments(default_quotas))


def plain(value: Any) -> Any:
    """An item's value as plain JSON data, whatever an operator typed into it (DynamoDB numbers, sets,
    nested maps): the one conversion used for the last-good copy, `quota show` and `status`."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (set, frozenset)):
        return sorted((plain(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def plain_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """The item without its key, as plain data."""
    return {str(k): plain(v) for k, v in item.items() if k != "pk"}
