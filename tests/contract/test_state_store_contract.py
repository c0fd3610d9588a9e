"""One contract suite over every state-table backend (memory, and DynamoDB under moto): the rules each
write follows, including the expected outcomes that are return values (a held lease, a lost race)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from throttler.store import (
    DynamoStateStore,
    DynamoWorkerRecords,
    KeyMeterWrite,
    MemoryStateStore,
    OpenBatch,
    StateStore,
    ThrottleSignal,
    WorkerRecords,
)
from throttler.store.base import OPERATOR_SIGNAL
from throttler_tools.provision import provision


@pytest.fixture(params=["memory", "dynamodb"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[StateStore, WorkerRecords]]:
    if request.param == "memory":
        store = MemoryStateStore()
        yield store, store
        return
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        env = provision(boto3.client("sqs", region_name="us-east-1"), dynamodb, "local")
        yield DynamoStateStore(dynamodb, env["STATE_TABLE"]), DynamoWorkerRecords(dynamodb, env["STATE_TABLE"])


@pytest.fixture
def store(backend: tuple[StateStore, WorkerRecords]) -> StateStore:
    return backend[0]


@pytest.fixture
def records(backend: tuple[StateStore, WorkerRecords]) -> WorkerRecords:
    return backend[1]


def test_control_is_empty_at_first(store: StateStore) -> None:
    control = store.read_control()
    assert control.quotas is None and control.last_good is None and control.pause_until is None
    assert control.throttle is None and control.lease is None


def test_quotas_and_last_good_round_trip_with_nested_per_key_maps(store: StateStore) -> None:
    item = {
        "second": 5,
        "minute": "auto:100",
        "aligned": ["minute"],
        "per_key": {"minute": 10},
        "keys": {"tenant a": {"minute": 20, "weight": 3}},
        "margin_ms": 2.5,
    }
    store.put_quotas(item)
    store.put_last_good(item)
    control = store.read_control()
    assert control.quotas is not None
    assert int(control.quotas["second"]) == 5 and control.quotas["minute"] == "auto:100"
    assert int(control.quotas["keys"]["tenant a"]["weight"]) == 3 and float(control.quotas["margin_ms"]) == 2.5
    assert control.last_good == {**item}


def test_pause_only_extends_unless_told_otherwise_and_resume_forgets_the_latest_429(
    store: StateStore, records: WorkerRecords
) -> None:
    store.set_pause(100.0, "429")
    store.set_pause(50.0, "shorter")
    assert store.read_control().pause_until == 100.0
    store.set_pause(50.0, "operator", extend_only=False)
    assert store.read_control().pause_until == 50.0
    records.throttle(ThrottleSignal(10.0, 30.0, "b1"))
    store.clear_pause()
    control = store.read_control()
    assert control.pause_until is None and control.throttle is None


def test_each_scope_keeps_its_own_429_a_key_never_takes_another_keys_or_the_stages_place(
    records: WorkerRecords, store: StateStore
) -> None:
    # Found by the review of issue 12 (1a, 1c): the record held one signal, so key B's 429 took the place of key
    # A's (A's calls went on up to 4.3 s after its 429) or of the operator's pause mirrored there.
    store.publish_throttle(ThrottleSignal(5.0, 86_000.0, OPERATOR_SIGNAL))
    records.throttle(ThrottleSignal(20.0, 30.0, "b2", "A"))
    records.throttle(ThrottleSignal(20.5, 2.0, "b3", "B"))
    records.throttle(ThrottleSignal(21.0, 1.0, "b4", "A"), now=21.0)  # ends sooner than A's first: A's stays
    control = store.read_control()
    assert control.throttle == ThrottleSignal(5.0, 86_000.0, OPERATOR_SIGNAL)
    assert control.key_throttles == {
        "A": ThrottleSignal(20.0, 30.0, "b2", "A"),
        "B": ThrottleSignal(20.5, 2.0, "b3", "B"),
    }
    signals, _ = records.watch([])
    assert sorted(signals, key=lambda s: s.at) == [
        ThrottleSignal(5.0, 86_000.0, OPERATOR_SIGNAL),
        ThrottleSignal(20.0, 30.0, "b2", "A"),
        ThrottleSignal(20.5, 2.0, "b3", "B"),
    ]
    records.throttle(ThrottleSignal(60.0, None, "b9", "A"), now=60.0)  # after A's pause: the new one counts
    assert store.read_control().key_throttles["A"] == ThrottleSignal(60.0, None, "b9", "A")


@pytest.mark.parametrize("key", ['q"uote', "a#b.c d", "key#x", ":a0", "[0]", "k" * 128])
def test_any_printable_key_keeps_its_own_signal(records: WorkerRecords, store: StateStore, key: str) -> None:
    records.throttle(ThrottleSignal(20.0, 3.0, "b1", key))
    assert store.read_control().key_throttles == {key: ThrottleSignal(20.0, 3.0, "b1", key)}
    assert store.forget_key_throttles([ThrottleSignal(20.0, 3.0, "b1", key)])
    assert store.read_control().key_throttles == {}


def test_ended_key_signals_are_forgotten_only_while_unchanged(records: WorkerRecords, store: StateStore) -> None:
    records.throttle(ThrottleSignal(20.0, 1.0, "b2", "A"))
    records.throttle(ThrottleSignal(20.0, 1.0, "b3", "B"))
    records.throttle(ThrottleSignal(30.0, None, "b1"))
    read = store.read_control().key_throttles
    records.throttle(ThrottleSignal(90.0, 5.0, "b7", "B"), now=90.0)  # B's new 429 after the read
    assert not store.forget_key_throttles([read["A"], read["B"]])  # B changed: nothing is removed
    assert set(store.read_control().key_throttles) == {"A", "B"}
    assert store.forget_key_throttles([read["A"]])
    control = store.read_control()
    assert set(control.key_throttles) == {"B"} and control.throttle == ThrottleSignal(30.0, None, "b1")
    store.clear_pause()  # `resume` forgets every 429
    control = store.read_control()
    assert control.throttle is None and control.key_throttles == {}


def test_a_second_stage_wide_429_with_a_shorter_retry_after_does_not_shorten_the_pause(
    records: WorkerRecords, store: StateStore
) -> None:
    # Found by the review of issue 12: the 429 of a call already in flight (Retry-After 1) replaced the first
    # (Retry-After 30) and batches went on calling 1.6-2.7 s after the first 429.
    records.throttle(ThrottleSignal(31.915, 30.0, "b51"), now=31.915)
    records.throttle(ThrottleSignal(31.965, 1.0, "b51"), now=31.965)
    assert store.read_control().throttle == ThrottleSignal(31.915, 30.0, "b51")
    records.throttle(ThrottleSignal(70.0, 1.0, "b60"), now=70.0)  # after that pause: the new one counts
    assert store.read_control().throttle == ThrottleSignal(70.0, 1.0, "b60")
    records.throttle(ThrottleSignal(70.5, None, "b61"), now=70.5)  # no Retry-After: ends before 71
    assert store.read_control().throttle == ThrottleSignal(70.0, 1.0, "b60")
    records.throttle(ThrottleSignal(72.0, None, "b62"), now=72.0)
    assert store.read_control().throttle == ThrottleSignal(72.0, None, "b62")


def test_a_throttle_record_dated_far_ahead_gives_way_to_a_real_429_and_is_bounded_when_read(
    records: WorkerRecords, store: StateStore
) -> None:
    # Found by the security review: a forged record (at=1e9, Retry-After 1e9) paused the stage for decades and
    # made every genuine 429 after it fail its conditional write.
    records.throttle(ThrottleSignal(1e9, 1e9, "forged"))
    forged = store.read_control().throttle
    assert forged is not None
    bounded = forged.bounded(now=100.0)
    assert bounded.at <= 105.0 and bounded.retry_after_s is not None and bounded.retry_after_s <= 86_700.0
    records.throttle(ThrottleSignal(100.0, 2.0, "real"))
    signal = store.read_control().throttle
    assert signal is not None and signal.batch_id == "real"


def test_one_lease_holder_then_a_successor_takes_over_by_hand_over(store: StateStore) -> None:
    assert store.acquire_lease("a", 0.0, 30.0).owner == "a"
    assert store.acquire_lease("b", 1.0, 30.0).owner == "a"
    assert store.request_handover("b", "a", 1.0, 40.0)
    assert not store.request_handover("c", "a", 2.0, 40.0)  # one successor at a time
    lease = store.read_control().lease
    assert lease is not None and lease.successor == "b"
    assert not store.hand_over("a", "c", 3.0, 30.0)
    assert store.hand_over("a", "b", 3.0, 30.0)
    lease = store.read_control().lease
    assert lease is not None and lease.owner == "b" and lease.successor is None
    assert not store.renew_lease("a", 4.0, 30.0) and store.renew_lease("b", 4.0, 30.0)
    store.release_lease("a")  # not the holder: nothing happens
    assert store.acquire_lease("c", 10.0, 30.0).owner == "b"
    assert store.acquire_lease("c", 40.0, 30.0).owner == "c"  # b's lease expired


def test_usage_commits_are_fenced_by_the_version_key_meters_included(store: StateStore) -> None:
    assert store.load_usage().version == 0
    assert store.commit_usage(0, '{"l":{}}', {"k1": KeyMeterWrite("{}", 100.0)}, {"b1": OpenBatch("run", 50.0, 9.0)}, [])
    assert store.load_usage().open_batches["b1"] == OpenBatch("run", 50.0, 9.0)
    assert not store.commit_usage(0, '{"l":{"60":[[1,1]]}}', {"k1": KeyMeterWrite('{"x":1}', 100.0)}, {}, [])
    assert store.load_key_meters(["k1", "k2"]) == {"k1": "{}", "k2": None}
    assert store.commit_usage(1, None, {}, {"b2": OpenBatch("run", 60.0, 12.5)}, ["b1"], done_until=500.0)
    record = store.load_usage()
    assert record.version == 2 and record.stage_meter == '{"l":{}}' and set(record.open_batches) == {"b2"}
    assert record.open_batches["b2"] == OpenBatch("run", 60.0, 12.5)  # its last slot: later batches follow it
    assert record.done_until == 500.0
    store.close_open_batches(["b2"])
    assert store.load_usage().open_batches == {} and store.load_usage().version == 2


def test_attempts_count_and_reset(store: StateStore) -> None:
    assert store.add_attempt("j1", 1000.0) == 1 and store.add_attempt("j1", 1000.0) == 2
    assert store.get_attempts(["j1", "j2"]) == {"j1": 2, "j2": 0}
    store.reset_attempts(["j1"])
    assert store.get_attempts(["j1"]) == {"j1": 0}


def test_success_records_and_batch_records(store: StateStore, records: WorkerRecords) -> None:
    store.mark_done(["j1"], 1000.0)
    assert store.done_ids(["j1", "j2"]) == {"j1"}
    assert records.claim("b1", "run", 1.0, 1000.0)
    assert not records.claim("b1", "run", 2.0, 1000.0)  # a second delivery of the same invoke
    records.record("b1", ["j1"], [], False)
    records.record("b1", ["j2"], ["j3"], True, throttled_at=5.0)
    batch = store.read_batches(["b1", "nope"])["b1"]
    assert batch.succeeded == {"j1", "j2"} and batch.called == {"j3"} and batch.final and batch.throttled_at == 5.0
    signals, final = records.watch(["b1", "b9"])
    assert signals == [] and final == {"b1"}
    assert batch.met_429 is None


def test_a_batch_record_keeps_the_429_its_worker_met(store: StateStore, records: WorkerRecords) -> None:
    # For a run that never gets the worker's answer, when the worker could not publish the 429 either.
    assert records.claim("b1", "run", 1.0, 1000.0) and records.claim("b2", "run", 1.0, 1000.0)
    records.record("b1", [], ["j1"], True, throttled_at=5.0, met_429=ThrottleSignal(5.5, 30.0, "b1"))
    records.record("b2", [], ["j2"], True, throttled_at=6.0, met_429=ThrottleSignal(6.25, None, "b2", "tenant é/1"))
    found = store.read_batches(["b1", "b2"])
    assert found["b1"].met_429 == ThrottleSignal(5.5, 30.0, "b1")
    assert found["b2"].met_429 == ThrottleSignal(6.25, None, "b2", "tenant é/1")
    assert records.watch([]) == ([], set())  # the shared record is not touched


def test_a_record_left_in_the_format_before_key_items_neither_pauses_the_stage_nor_blocks_forgetting(
    records: WorkerRecords, store: StateStore
) -> None:
    # Found by the review of the key-scoped record: the previous version kept a key's 429 at the item's top
    # level; read as a key's signal, it could never be removed, and every forget that included it failed.
    old = {"pk": "worker#throttle", "at": 100.0, "retry_after_s": 1.0, "batch": "old", "key": "OLD"}
    if isinstance(store, MemoryStateStore):
        store.items["worker#throttle"] = dict(old)
    else:
        assert isinstance(store, DynamoStateStore)
        store._client.put_item(TableName=store._table, Item={  # the raw item, as the old version wrote it
            "pk": {"S": "worker#throttle"}, "at": {"N": "100"}, "retry_after_s": {"N": "1"}, "batch": {"S": "old"},
            "key": {"S": "OLD"},
        })
    control = store.read_control()
    assert control.throttle is None and control.key_throttles == {}
    records.throttle(ThrottleSignal(120.0, 1.0, "b1", "N0"))
    assert store.forget_key_throttles(list(store.read_control().key_throttles.values()))
    records.throttle(ThrottleSignal(130.0, 2.0, "b2"))  # the stage's first signal takes the old item's place
    assert store.read_control().throttle == ThrottleSignal(130.0, 2.0, "b2")
