"""The run parses the quota item again only when what it read changed: any change, however small, applies at the
next control read (SPEC: within 5 s), and a value of another type is a change (a console BOOL is refused where
the number it equals in Python is not)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import throttler.dispatch.config as config_module
from throttler.core.fairness import FairShare
from throttler.dispatch.config import InForce
from throttler.dispatch.summary import RunSettings, RunSummary
from throttler.dispatch.usage import UsageBook
from throttler.store.memory import MemoryStateStore


def in_force() -> tuple[MemoryStateStore, InForce]:
    store = MemoryStateStore()
    return store, InForce(RunSettings(), store, UsageBook(store, "run-1"), FairShare(), RunSummary())


def applied(store: MemoryStateStore, run: InForce, item: dict[str, Any], now: float) -> str:
    store.put_quotas(item)
    run.apply(store.read_control(), now)
    assert run.config is not None
    return run.config.describe()


def test_an_unchanged_item_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[object] = []
    real = config_module.resolve_quotas
    monkeypatch.setattr(config_module, "resolve_quotas", lambda *a: parsed.append(a) or real(*a))
    store, run = in_force()
    applied(store, run, {"second": 50}, 0.0)
    applied(store, run, {"second": 50}, 2.0)  # the last good item was written after the first read: a change
    before = len(parsed)
    for now in (4.0, 6.0, 8.0):
        assert applied(store, run, {"second": 50}, now) == "second=50"
    assert len(parsed) == before
    assert applied(store, run, {"second": 49}, 10.0) == "second=49" and len(parsed) == before + 1


@pytest.mark.parametrize("number", [1, Decimal(1)])  # Decimal: what the DynamoDB store reads
def test_fixing_a_boolean_limit_to_the_number_it_equals_applies_at_the_next_read(number: object) -> None:
    store, run = in_force()
    assert applied(store, run, {"second": 50}, 0.0) == "second=50"
    assert applied(store, run, {"second": True}, 2.0) == "second=50"  # refused: the last good one stays
    assert run.summary.invalid_config and run.quota.error is not None
    assert applied(store, run, {"second": number}, 4.0) == "second=1"
    assert run.quota.error is None


def test_a_boolean_written_over_the_number_it_equals_is_reported_invalid() -> None:
    store, run = in_force()
    for now in (0.0, 2.0):  # the second read sees the last good item the first one wrote
        assert applied(store, run, {"second": 0, "minute": 100}, now) == "second=0 minute=100"
    assert not run.summary.invalid_config
    applied(store, run, {"second": False, "minute": 100}, 4.0)
    assert run.summary.invalid_config and run.quota.error is not None and "False" in run.quota.error
