"""One contract suite over every StateStore backend (memory and DynamoDB under moto)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from throttler_tools.provision import provision
from throttler.store import DynamoStateStore, MemoryStateStore, StateStore


@pytest.fixture(params=["memory", "dynamodb"])
def store(request: pytest.FixtureRequest) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore()
        return
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        env = provision(boto3.client("sqs", region_name="us-east-1"), dynamodb, "local")
        yield DynamoStateStore(dynamodb, env["STATE_TABLE"])


def test_control_is_empty_at_first(store: StateStore) -> None:
    control = store.read_control()
    assert control.quotas is None and control.last_good is None and control.pause_until is None


def test_quotas_and_last_good_round_trip(store: StateStore) -> None:
    store.put_quotas({"second": 5, "minute": 100, "aligned": ["minute"]})
    store.put_last_good({"second": 5})
    control = store.read_control()
    assert control.quotas is not None and int(control.quotas["second"]) == 5 and list(control.quotas["aligned"]) == ["minute"]
    assert control.last_good == {"second": 5}


def test_pause_only_extends_unless_told_otherwise(store: StateStore) -> None:
    store.set_pause(100.0, "429")
    store.set_pause(50.0, "429")
    assert store.read_control().pause_until == 100.0
    store.set_pause(50.0, "operator", extend_only=False)
    assert store.read_control().pause_until == 50.0 and store.read_control().pause_reason == "operator"
    store.clear_pause()
    assert store.read_control().pause_until is None


def test_one_lease_holder_at_a_time(store: StateStore) -> None:
    assert store.acquire_lease("a", now=0.0, ttl_s=60)
    assert not store.acquire_lease("b", now=30.0, ttl_s=60)
    assert store.acquire_lease("a", now=30.0, ttl_s=60)  # renewal by the holder
    assert store.acquire_lease("b", now=91.0, ttl_s=60)  # expired: taken over
    store.release_lease("a")  # not the holder: no effect
    assert not store.acquire_lease("c", now=92.0, ttl_s=60)
    store.release_lease("b")
    assert store.acquire_lease("c", now=92.0, ttl_s=60)


def test_usage_writes_are_conditional_on_the_version(store: StateStore) -> None:
    assert store.load_usage().version == 0
    assert store.save_usage(0, '{"60":[[1,2]]}', 12.5)
    assert not store.save_usage(0, '{"60":[[1,3]]}', 13.0)  # a stale writer loses
    record = store.load_usage()
    assert (record.version, record.ledgers_json, record.last_slot) == (1, '{"60":[[1,2]]}', 12.5)
    assert store.save_usage(1, "{}", None)


def test_attempts_count_up(store: StateStore) -> None:
    assert store.get_attempts("j") == 0
    assert store.add_attempt("j", ttl_at=1e9) == 1
    assert store.add_attempt("j", ttl_at=1e9) == 2
    assert store.get_attempts("j") == 2


def test_success_records(store: StateStore) -> None:
    ids = [f"job-{i}" for i in range(130)]
    store.mark_done(ids[:60], ttl_at=1e9)
    assert store.done_ids(ids) == set(ids[:60])
    assert store.done_ids([]) == set()
