"""What the third-party API says about its own limits, read from one response's headers (pure, stdlib only).

One place for every rate-limit header we understand: `Retry-After` (delta seconds or any HTTP-date
form of RFC 9110), the IETF draft `RateLimit` / `RateLimit-Policy` fields in all their versions
(structured fields of draft 08+, the `limit=, remaining=, reset=` dictionary of draft 07, the separate
`RateLimit-Limit/-Remaining/-Reset` of drafts 00-06), the common `X-RateLimit-*` / `X-Rate-Limit-*`
families and a few vendor variants (OpenAI and Anthropic per-resource fields, Discord, Kong, Envoy,
Zendesk, Shopify, Atlassian). The result is an `ApiWord`, plain data that crosses the Lambda boundary.

Reading rules (the strictest interpretation that is still what the API said):
- Policies (`q` calls per `w` seconds, from `RateLimit-Policy`, `;w=` members of a `*-Limit` field,
  Kong's `X-RateLimit-Limit-Minute`, Atlassian's fill rate) are all kept: they apply together, and the
  consumer paces by every one of them.
- Every family that states a current budget ("`remaining` calls until `reset_at`") yields a candidate;
  the budget with the fewest calls left wins, ties going to the one with a known, later reset. The
  winner's limit, used count, name and header are reported with it. OpenAI and Anthropic request
  budgets compete like any other; their token budgets are reported apart (`tokens_*`), since we pace calls.
- Where one family gives the same reset twice (Discord's `Reset` epoch and `Reset-After` delta), the
  later moment wins. A repeated numeric header (`x-ratelimit-remaining: 991, 98`) is read as one
  budget per value.
- `Retry-After` is kept apart in `retry_after_s`; per the draft it takes precedence over any reset.
- `remaining` without `reset_at` is informational: nothing says when it ends.

Defences against a broken or hostile API: values longer than a few KiB are skipped, malformed values
are ignored (never raised), and absurd ones are dropped rather than obeyed: a reset or Retry-After more
than a day away, a window longer than 31 days, a count beyond the 15 digits Structured Fields allow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, NamedTuple

# A reset or Retry-After further away than this is absurd: obeying it would park dispatch for days on
# the word of a broken or hostile API. A day, plus slack for clock skew on daily windows.
MAX_RESET_S = 86_400.0 + 300.0
# A policy window longer than this (a "year" window, say) cannot pace anything useful: ignored.
MAX_WINDOW_S = 31 * 86_400.0
# Structured Fields integers have at most 15 digits; anything larger is not a real count.
MAX_COUNT = 999_999_999_999_999
# Rate-limit values are short; a longer one is skipped rather than scanned on every response.
MAX_VALUE_CHARS = 4096
MAX_NAME_CHARS = 128
MAX_LIST_MEMBERS = 64

PERIODS_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "month": 30 * 86_400}  # Kong's names
X_PREFIXES = ("x-ratelimit-", "x-rate-limit-")
SHOPIFY = "x-shopify-shop-api-call-limit"


@dataclass(frozen=True)
class ApiQuota:
    """A policy the API announced: `limit` units per `window_s` seconds."""

    limit: int
    window_s: float
    name: str | None = None
    partition: str | None = None  # the draft's `pk` (base64 text), e.g. one quota per user
    unit: str | None = None  # the draft's `qu`; None means requests

    def describe(self) -> str:
        text = f"{self.limit} {self.unit or ('call' if self.limit == 1 else 'calls')} per {_span(self.window_s)}"
        return f"{text} ({self.name})" if self.name else text

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApiQuota:
        return cls(
            limit=int(data["limit"]),
            window_s=float(data["window_s"]),
            name=_opt(str, data.get("name")),
            partition=_opt(str, data.get("partition")),
            unit=_opt(str, data.get("unit")),
        )


@dataclass(frozen=True)
class ApiWord:
    """What one response said about the API's limits, as of `observed_at` (epoch seconds).

    `remaining` calls until `reset_at` (epoch seconds) is the tightest budget the response stated, and
    `source` the header it came from; both are upper bounds (the draft's `t` is whole seconds, so the
    real reset may come up to a second sooner). Without `reset_at` the budget is informational only.
    `policies` are what should pace calls; `retry_after_s` counts from `observed_at`.
    """

    observed_at: float
    policies: tuple[ApiQuota, ...] = ()
    remaining: int | None = None
    reset_at: float | None = None
    retry_after_s: float | None = None
    limit: int | None = None
    used: int | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_at: float | None = None
    resource: str | None = None  # the API's name for the budget: draft policy, GitHub resource, Discord bucket
    source: str | None = None  # the header that gave `remaining`, for the operator's "why"

    @property
    def retry_at(self) -> float | None:
        return None if self.retry_after_s is None else self.observed_at + self.retry_after_s

    def reset_s(self, now: float) -> float | None:
        """Seconds from `now` until the budget resets (0 once it has)."""
        return None if self.reset_at is None else max(0.0, self.reset_at - now)

    def describe(self) -> str:
        """One line for the operator's `status`, e.g. "API says 5 calls per 1 s; 3 left until 12:00:01 UTC"."""
        parts = [", ".join(p.describe() for p in self.policies)] if self.policies else []
        if self.remaining is not None:
            of = f" of {self.limit}" if self.limit is not None else ""
            until = f" until {_clock(self.reset_at)}" if self.reset_at is not None else ""
            parts.append(f"{self.remaining}{of} left{until}")
        elif self.limit is not None:
            parts.append(f"limit {self.limit}")
        if self.retry_after_s is not None:
            parts.append(f"retry after {self.retry_after_s:g} s")
        if self.tokens_remaining is not None:
            until = f" until {_clock(self.tokens_reset_at)}" if self.tokens_reset_at is not None else ""
            parts.append(f"{self.tokens_remaining} tokens left{until}")
        return "API says " + ("; ".join(parts) or "nothing about its limits")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "policies":
                if value:
                    data["policies"] = [p.to_dict() for p in value]
            elif value is not None:
                data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApiWord:
        """The inverse of `to_dict`; unknown keys are ignored (a newer writer), numbers may be Decimals."""
        ints = ("remaining", "limit", "used", "tokens_limit", "tokens_remaining")
        floats = ("retry_after_s", "reset_at", "tokens_reset_at")
        return cls(
            observed_at=float(data["observed_at"]),
            policies=tuple(ApiQuota.from_dict(p) for p in data.get("policies") or ()),
            **{k: _opt(int, data.get(k)) for k in ints},
            **{k: _opt(float, data.get(k)) for k in floats},
            resource=_opt(str, data.get("resource")),
            source=_opt(str, data.get("source")),
        )


def parse_api_word(headers: Mapping[str, str], now: float) -> ApiWord | None:
    """Everything the response's headers say about the API's limits; None when they say nothing usable.

    Header names are case-insensitive; malformed values are ignored; this never raises.
    """
    try:
        return _read_api_word(headers, now)
    except Exception:  # noqa: BLE001 - runs on every response: a header we failed to foresee must not fail the job
        return None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After in seconds from `now`: delta seconds (`120`, `480.0`) or an HTTP-date in any RFC 9110
    form (IMF-fixdate, RFC 850, asctime; `-0000` and numeric zones accepted). A date in the past gives 0;
    negative, malformed or absurd (over a day) values give None."""
    if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS or not math.isfinite(now):
        return None
    seconds = _number(value)
    if seconds is None and "," in value:  # `30, 45`: the field repeated (a proxy), the later moment wins
        parts = [_number(v) for v in value.split(",")[:8]]
        seconds = max(p for p in parts if p is not None) if None not in parts else None
    if seconds is None:
        at = _parse_date(value, now)
        if at is None:
            return None
        seconds = max(0.0, at - now)
    return seconds if seconds <= MAX_RESET_S else None


# --- reading the headers ---------------------------------------------------------------------------


class _Budget(NamedTuple):
    remaining: int | None
    reset_at: float | None
    limit: int | None
    used: int | None
    source: str
    name: str | None = None


def _read_api_word(headers: Mapping[str, str], now: float) -> ApiWord | None:
    if not isinstance(now, int | float) or not math.isfinite(now):
        return None
    h = _lowercase(headers)
    if not h:
        return None
    policies: list[ApiQuota] = []
    budgets: list[_Budget] = []
    _read_draft_fields(h, now, policies, budgets)
    _read_x_fields(h, now, policies, budgets)
    _read_vendor_fields(h, now, policies, budgets)
    tokens = _tightest(_token_budgets(h, now))
    best = _tightest(budgets)
    limit = best.limit if best else next((b.limit for b in budgets if b.limit is not None), None)
    word = ApiWord(
        observed_at=float(now),
        policies=tuple(dict.fromkeys(policies)),  # the same policy said twice (two header families) counts once
        remaining=best.remaining if best else None,
        reset_at=best.reset_at if best else None,
        retry_after_s=parse_retry_after(h.get("retry-after"), now),
        limit=limit,
        used=best.used if best else None,
        tokens_limit=tokens.limit if tokens else None,
        tokens_remaining=tokens.remaining if tokens else None,
        tokens_reset_at=tokens.reset_at if tokens else None,
        resource=best.name if best else None,
        source=best.source if best else None,
    )
    said = (word.policies, word.remaining, word.retry_after_s, word.limit, word.used, word.tokens_remaining)
    return word if any(x not in (None, ()) for x in said) else None


def _lowercase(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers that can speak of limits, names folded to lower case (a name given twice in different
    cases is joined like a list). Most responses have none, and are done with here."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
            continue
        key = name.strip().lower()
        if "rate" in key or key == "retry-after" or key == SHOPIFY:
            out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _read_draft_fields(h: dict[str, str], now: float, policies: list[ApiQuota], budgets: list[_Budget]) -> None:
    """The IETF draft: `RateLimit-Policy` / `RateLimit` in any version, and drafts 00-06's separate fields."""
    for prefix in ("", "beta-"):  # Atlassian ships the draft fields as Beta-RateLimit(-Policy) for now
        announced = _policy_field(h.get(prefix + "ratelimit-policy"))
        policies.extend(announced)
        field = h.get(prefix + "ratelimit")
        if field is None:
            continue
        if _DRAFT07_DICT.match(field):
            kv = _key_values(field)
            budgets.extend(
                _budgets(prefix + "ratelimit", _count(kv.get("limit")), kv.get("remaining"), [kv.get("reset")], None, now)
            )
        else:
            budgets.extend(_service_limits(field, announced, prefix + "ratelimit", now))
    limit, listed = _limit_field(h.get("ratelimit-limit"))
    policies.extend(listed)
    budgets.extend(_budgets("ratelimit-remaining", limit, h.get("ratelimit-remaining"), [h.get("ratelimit-reset")], None, now))


def _read_x_fields(h: dict[str, str], now: float, policies: list[ApiQuota], budgets: list[_Budget]) -> None:
    """`X-RateLimit-*` and `X-Rate-Limit-*` (GitHub, Twitter/X, Okta, Discord, Reddit, Envoy...), and the
    per-resource request budgets of OpenAI (`x-ratelimit-remaining-requests`) and Anthropic."""
    name = _text(h.get("x-ratelimit-resource")) or _text(h.get("x-ratelimit-bucket"))
    for p in X_PREFIXES:
        limit, listed = _limit_field(h.get(p + "limit") or (h.get("x-rate-limit") if p == "x-rate-limit-" else None))
        policies.extend(listed)
        resets = [h.get(p + "reset"), h.get(p + "reset-after")]
        budgets.extend(_budgets(p + "remaining", limit, h.get(p + "remaining"), resets, h.get(p + "used"), now, name))
    budgets.extend(_suffixed_budgets(h, "requests", now))


def _token_budgets(h: dict[str, str], now: float) -> list[_Budget]:
    return [b for kind in ("tokens", "input-tokens", "output-tokens") for b in _suffixed_budgets(h, kind, now)]


def _suffixed_budgets(h: dict[str, str], kind: str, now: float) -> list[_Budget]:
    """OpenAI's `x-ratelimit-<field>-<kind>` and Anthropic's `anthropic-ratelimit-<kind>-<field>`."""
    out: list[_Budget] = []
    for limit_h, remaining_h, reset_h in _SUFFIXED[kind]:
        if remaining_h in h or limit_h in h:
            limit, _ = _limit_field(h.get(limit_h))
            out.extend(_budgets(remaining_h, limit, h.get(remaining_h), [h.get(reset_h)], None, now, kind))
    return out


_SUFFIXED = {
    kind: (
        (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}"),
        (f"anthropic-ratelimit-{kind}-limit", f"anthropic-ratelimit-{kind}-remaining", f"anthropic-ratelimit-{kind}-reset"),
    )
    for kind in ("requests", "tokens", "input-tokens", "output-tokens")
}
_KONG = re.compile(r"x-ratelimit-(limit|remaining)-(?:(.{1,64})-)?(second|minute|hour|day|month)")
_ZENDESK = "zendesk-ratelimit-"


def _read_vendor_fields(h: dict[str, str], now: float, policies: list[ApiQuota], budgets: list[_Budget]) -> None:
    """Kong's per-period fields, Zendesk's per-endpoint field, Shopify's bucket, Atlassian's fill rate."""
    for key, value in h.items():
        if key.startswith("x-ratelimit-") and (m := _KONG.fullmatch(key)):
            what, name, period = m.groups()
            if what == "limit":
                quota = _quota(_count(value), PERIODS_S[period], name or period)
                policies.extend([quota] if quota else [])
            else:  # Kong states no reset for these: the budget is informational unless it is the tightest
                budgets.extend(_budgets(key, None, value, [], None, now, name or period))
        elif key.startswith(_ZENDESK):  # `total=100; remaining=99; resets=41`
            kv = _key_values(value)
            budgets.extend(_budgets(key, _count(kv.get("total")), kv.get("remaining"), [kv.get("resets")], None, now))
    shopify = h.get(SHOPIFY)  # `32/40`: a leaky bucket, 32 used of 40
    if shopify and (m := re.fullmatch(r"\s*(\d{1,15})\s*/\s*(\d{1,15})\s*", shopify)):
        used, size = int(m.group(1)), int(m.group(2))
        # The leak rate (2/s on standard plans) is not in the header: no reset, no policy; configure the tier.
        budgets.append(_Budget(max(0, size - used), None, size, used, SHOPIFY))
    fill = _quota(_count(h.get("x-ratelimit-fillrate")), _number(h.get("x-ratelimit-interval-seconds")), "fill rate")
    policies.extend([fill] if fill else [])  # Atlassian Data Center: FillRate tokens every Interval-Seconds


def _budgets(
    source: str,
    limit: int | None,
    remaining_v: str | None,
    reset_vs: list[str | None],
    used_v: str | None,
    now: float,
    name: str | None = None,
) -> list[_Budget]:
    """The budgets one header family states (`reset_vs`: every field that gives its reset). A repeated
    field (`x-ratelimit-remaining: 991, 98`) states one budget per value, paired with its reset by position
    when a single reset field has as many values; otherwise the values combine the strict way."""
    if remaining_v is None and used_v is None and limit is None:
        return []
    remaining = _counts(remaining_v)
    used = _counts(used_v)
    if not remaining and limit is not None and len(used) == 1:
        remaining = [max(0, limit - used[0])]  # only the limit and the used count were given
    given = [v for v in reset_vs if v is not None]
    resets = [at for v in given for at in _reset_list(v, now)]
    if not remaining:
        return [_Budget(None, None, limit, max(used, default=None), source, name)] if limit is not None else []
    if len(remaining) > 1 and len(given) == 1 and len(resets) == len(remaining):
        return [_Budget(r, at, limit, None, source, name) for r, at in zip(remaining, resets, strict=True)]
    # One value, or values we cannot pair: the fewest calls left until the latest reset.
    return [_Budget(min(remaining), max(resets, default=None), limit, max(used, default=None), source, name)]


def _service_limits(field: str, announced: list[ApiQuota], source: str, now: float) -> list[_Budget]:
    """Draft 08+ `RateLimit: "default";r=50;t=30`: one budget per service-limit item with an `r`."""
    out = []
    for item, params in _sf_list(field):
        remaining = _sf_count(params.get("r"))
        if not isinstance(item, str) or remaining is None:
            continue
        t = params.get("t")
        reset_at = _reset_from_number(float(t), now) if isinstance(t, int | float) and _is_number(t) and t >= 0 else None
        pk = params.get("pk")
        limit = next((q.limit for q in announced if q.name == item and (pk is None or q.partition == pk)), None)
        out.append(_Budget(remaining, reset_at, limit, None, source, _text(item)))
    return out


def _tightest(budgets: Iterable[_Budget]) -> _Budget | None:
    best: _Budget | None = None
    for b in budgets:
        if b.remaining is None:
            continue
        if best is None or best.remaining is None or b.remaining < best.remaining:  # the fewest left wins
            best = b
        elif b.remaining == best.remaining and b.reset_at is not None:
            if best.reset_at is None or b.reset_at > best.reset_at:
                best = b
    return best


# --- policies ----------------------------------------------------------------------------------------


def _policy_field(value: str | None) -> list[ApiQuota]:
    """`RateLimit-Policy`, both syntaxes: `"burst";q=100;w=60` (draft 08+) and `100;w=60` (drafts 03-07)."""
    out = []
    for item, params in _sf_list(value):
        if isinstance(item, str):
            quota = _quota(params.get("q"), params.get("w"), item, params.get("pk"), params.get("qu"))
        elif _is_int(item):
            quota = _quota(item, params.get("w", params.get("window")), params.get("name"))
        else:
            continue
        out.extend([quota] if quota else [])
    return out


def _limit_field(value: str | None) -> tuple[int | None, list[ApiQuota]]:
    """A `*-Limit` field: `100`, or the list form of drafts 00-03 and Envoy, `10, 10;w=1, 1000;w=3600`
    (the first member is the current limit; members with a window are policies)."""
    if value is None:
        return None, []
    plain = _count(value)
    if plain is not None:
        return plain, []
    limit: int | None = None
    policies = []
    for item, params in _sf_list(value):
        if not _is_int(item):
            continue
        limit = _sf_count(item) if limit is None else limit
        quota = _quota(item, params.get("w", params.get("window")), params.get("name"))
        policies.extend([quota] if quota else [])
    return limit, policies


def _quota(q: Any, w: Any, name: Any = None, pk: Any = None, qu: Any = None) -> ApiQuota | None:
    limit = _sf_count(q)
    if limit is None or not _is_number(w) or not 0 < w <= MAX_WINDOW_S:
        return None
    return ApiQuota(limit, float(w), _text(name), _text(pk), _text(qu))


# --- values ------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d{1,16}(?:\.\d{1,9})?")
_DURATION = re.compile(r"(?:\d{1,9}(?:\.\d{1,9})?(?:ns|us|µs|μs|ms|s|m|h)){1,6}")
_DURATION_PART = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DRAFT07_DICT = re.compile(r"\s*(?:limit|remaining|reset)\s*=", re.IGNORECASE)
_KEY_VALUE = re.compile(r"([A-Za-z][A-Za-z0-9_-]{0,31})\s*=\s*(\"[^\"]{0,64}\"|[^\s,;]{1,64})")


def _number(value: str | None) -> float | None:
    """A non-negative decimal number, or None (no signs, exponents, inf or nan)."""
    if value is None:
        return None
    v = value.strip()
    return float(v) if len(v) <= 32 and _NUMBER.fullmatch(v) else None


def _count(value: str | None) -> int | None:
    """A count: `598` or Reddit's `598.0`; a fraction rounds down, the stricter reading."""
    n = _number(value)
    return _sf_count(math.floor(n)) if n is not None else None


def _counts(value: str | None) -> list[int]:
    """A count, or each count of a repeated field joined with commas (`991, 98`)."""
    if value is None:
        return []
    return [c for c in (_count(v) for v in value.split(",")[:MAX_LIST_MEMBERS]) if c is not None]


def _sf_count(value: Any) -> int | None:
    return value if _is_int(value) and 0 <= value <= MAX_COUNT else None


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass, and `?1` is not a count


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _text(value: Any) -> str | None:
    """A name from the API, kept only when short and printable (it may reach logs and the status line)."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
        return None
    return value


def _opt(kind: type, value: Any) -> Any:
    return None if value is None else kind(value)


def _key_values(value: str) -> dict[str, str]:
    """`limit=100, remaining=50, reset=5` (draft 07) or `total=100; remaining=99; resets=41` (Zendesk)."""
    return {k.lower(): v.strip('"') for k, v in _KEY_VALUE.findall(value[:1024])}


def _reset_list(value: str | None, now: float) -> list[float]:
    """Reset moments in a field: one, or one per comma-separated value (a date's own comma stays whole)."""
    if value is None:
        return []
    one = _reset_at(value, now)
    if one is not None:
        return [one]
    return [r for r in (_reset_at(v, now) for v in value.split(",")[:MAX_LIST_MEMBERS]) if r is not None]


def _reset_at(value: str, now: float) -> float | None:
    """When a budget resets, from any form real APIs send: delta seconds (`30`, `64.57`), epoch seconds
    (`1372700873`) or milliseconds, a Go duration (`6m0s`, `20ms`: OpenAI), an HTTP-date (Cloudflare)
    or an ISO 8601 time (Anthropic, Jira)."""
    n = _number(value)
    if n is not None:
        return _reset_from_number(n, now)
    v = value.strip()
    if len(v) <= 64 and _DURATION.fullmatch(v):
        seconds = sum(float(x) * _DURATION_UNIT_S[unit] for x, unit in _DURATION_PART.findall(v))
        return _bounded_reset(now + seconds, now)
    at = _parse_date(v, now)
    return None if at is None else _bounded_reset(at, now)


def _reset_from_number(n: float, now: float) -> float | None:
    # No real delta reaches 1e9 s (31 years), and no epoch in seconds reaches 1e11 (year 5138): the
    # magnitude tells delta seconds, epoch seconds and epoch milliseconds apart.
    if n >= 1e11:
        at = n / 1000.0
    elif n >= 1e9:
        at = n
    else:
        at = now + n
    return _bounded_reset(at, now)


def _bounded_reset(at: float, now: float) -> float | None:
    if not math.isfinite(at) or at - now > MAX_RESET_S:
        return None  # absurd: ignored rather than obeyed
    return max(at, float(now))  # a reset in the past has already happened


# --- dates -------------------------------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DAY = r"(?:[a-z]{3,9},?\s+)?"
_HMS = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"
_ZONE = r"(?:\s*(?:gmt|utc|ut|z)?\s*(?:([+-])(\d{2}):?(\d{2}))?)"
# IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT` and RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT`.
_IMF = re.compile(_DAY + r"(\d{1,2})[\s-]+([a-z]{3,9})[\s-]+(\d{2}|\d{4})\s+" + _HMS + _ZONE, re.IGNORECASE)
# asctime `Sun Nov  6 08:49:37 1994`.
_ASCTIME = re.compile(_DAY + r"([a-z]{3,9})\s+(\d{1,2})\s+" + _HMS + r"\s+(\d{4})(?:\s*(?:gmt|utc))?", re.IGNORECASE)
# JavaScript's Date string `Tue Feb 16 2021 09:02:42 GMT+0100 (Central European Standard Time)` (lemlist).
_JS = re.compile(_DAY + r"([a-z]{3,9})\s+(\d{1,2})\s+(\d{4})\s+" + _HMS + _ZONE + r"(?:\s*\([^()]{0,64}\))?", re.IGNORECASE)
# ISO 8601 / RFC 3339 `2025-10-25T12:00:00Z`, Jira's `2026-03-26T16:00Z`; a zone is required.
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})[t ]" + _HMS + r"(?:\.\d{1,9})?\s*(?:(z)|([+-])(\d{2}):?(\d{2}))", re.IGNORECASE)


def _parse_date(value: str, now: float) -> float | None:
    """Epoch seconds of a date in any form above, or None."""
    v = value.strip()
    if len(v) > 128:
        return None
    if m := _IMF.fullmatch(v):
        d, mon, y, hh, mm, ss, sign, zh, zm = m.groups()
        return _epoch(_year(y, now), mon, d, hh, mm, ss, sign, zh, zm)
    if m := _ASCTIME.fullmatch(v):
        mon, d, hh, mm, ss, y = m.groups()
        return _epoch(int(y), mon, d, hh, mm, ss, None, None, None)
    if m := _JS.fullmatch(v):
        mon, d, y, hh, mm, ss, sign, zh, zm = m.groups()
        return _epoch(int(y), mon, d, hh, mm, ss, sign, zh, zm)
    if m := _ISO.fullmatch(v):
        y, mon, d, hh, mm, ss, _z, sign, zh, zm = m.groups()
        return _epoch(int(y), int(mon), d, hh, mm, ss, sign, zh, zm)
    return None


def _year(text: str, now: float) -> int:
    """RFC 9110 5.6.7: a two-digit year more than 50 years ahead means the most recent such year in the past."""
    year = int(text)
    if len(text) == 2:
        this_year = 1970 + int(now // 31_556_952)  # mean Gregorian year; a day off at New Year is harmless here
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    return year


def _epoch(
    year: int, month: str | int, day: str, hh: str, mm: str, ss: str | None, sign: str | None, zh: str | None, zm: str | None
) -> float | None:
    mon = month if isinstance(month, int) else _MONTHS.get(month[:3].lower())
    if mon is None:
        return None
    try:  # datetime checks the ranges (month days, hours); a leap second counts as :59
        when = datetime(year, mon, int(day), int(hh), int(mm), min(int(ss or 0), 59), tzinfo=UTC)
    except ValueError:
        return None
    offset = 0 if not sign else (int(zh or 0) * 3600 + int(zm or 0) * 60) * (1 if sign == "+" else -1)
    return when.timestamp() - offset  # `-0000` ("offset unknown", RFC 5322) is read as UTC


# --- Structured Fields (RFC 9651), the subset rate-limit fields use ----------------------------------

BareItem = str | int | float | bool

_SF_KEY = re.compile(r"[a-z*][a-z0-9_.*-]{0,63}", re.IGNORECASE)
_SF_NUMBER = re.compile(r"-?\d{1,15}(?:\.\d{1,3})?")
_SF_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9!#$%&'*+.^_`|~:/-]{0,255}")
_SF_BYTES = re.compile(r":([A-Za-z0-9+/=]{0,512}):")


class _Malformed(ValueError):
    """A list member that is not valid Structured Fields syntax."""


def _sf_list(value: str | None) -> list[tuple[BareItem, dict[str, BareItem]]]:
    """The members of an SF List. Unlike RFC 9651, which drops the whole field, a malformed member is
    skipped alone: one vendor quirk should not hide the policies stated next to it."""
    out: list[tuple[BareItem, dict[str, BareItem]]] = []
    if value is None:
        return out
    s, i, n = value, 0, len(value)
    while i < n and len(out) < MAX_LIST_MEMBERS:
        i = _skip_ows(s, i)
        start = i
        try:
            item, i = _sf_item(s, i)
            params, i = _sf_params(s, i)
            i = _skip_ows(s, i)
            if i < n and s[i] != ",":
                raise _Malformed
            out.append((item, params))
        except _Malformed:
            i = _next_comma(s, start)
        i += 1
    return out


def _sf_item(s: str, i: int) -> tuple[BareItem, int]:
    if i >= len(s):
        raise _Malformed
    if s[i] == '"':
        return _sf_string(s, i + 1)
    if m := _SF_NUMBER.match(s, i):
        text = m.group()
        return (float(text) if "." in text else int(text)), m.end()
    if m := _SF_TOKEN.match(s, i):
        return m.group(), m.end()
    if m := _SF_BYTES.match(s, i):
        return m.group(1), m.end()
    if s.startswith(("?1", "?0"), i):
        return s[i + 1] == "1", i + 2
    raise _Malformed  # inner lists, dates, display strings: nothing a rate-limit field uses


def _sf_string(s: str, i: int) -> tuple[str, int]:
    chars: list[str] = []
    while i < len(s) and len(chars) <= 1024:
        c = s[i]
        if c == "\\":
            if i + 1 >= len(s) or s[i + 1] not in '"\\':
                raise _Malformed
            chars.append(s[i + 1])
            i += 2
        elif c == '"':
            return "".join(chars), i + 1
        elif not c.isprintable():
            raise _Malformed
        else:
            chars.append(c)
            i += 1
    raise _Malformed


def _sf_params(s: str, i: int) -> tuple[dict[str, BareItem], int]:
    params: dict[str, BareItem] = {}
    while True:
        j = _skip_ows(s, i)  # lenient: `100 ; w=60` is read too
        if j >= len(s) or s[j] != ";":
            return params, i
        j = _skip_ows(s, j + 1)
        m = _SF_KEY.match(s, j)
        if not m:
            raise _Malformed
        key, i = m.group().lower(), m.end()
        value: BareItem = True
        if i < len(s) and s[i] == "=":
            value, i = _sf_item(s, i + 1)
        params[key] = value


def _skip_ows(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t":
        i += 1
    return i


def _next_comma(s: str, i: int) -> int:
    """The position of the next top-level comma from `i` (commas inside quoted strings do not count)."""
    quoted = False
    while i < len(s):
        c = s[i]
        if quoted and c == "\\":
            i += 1
        elif c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            return i
        i += 1
    return i


# --- display -----------------------------------------------------------------------------------------


def _span(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _clock(at: float) -> str:
    try:
        return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{at:.0f}"
