"""Bad input, fuzzed (SPEC promise 7): message bodies and envelopes, and quota items edited by hand.

Bodies go through the whole pipeline under moto (on a fresh stage per example): no run crashes, every
bad message is dead-lettered at once with a reason (attempts 0), and good jobs keep flowing, in other
groups and behind the bad message in its own group. Two fidelity checks stand in for what moto and the
in-process API adapter do not enforce: SQS's character set for bodies and attribute values, and the
latin-1 header values a real HTTP connection needs.
"""

from __future__ import annotations

import json
import logging
import re
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeSerializer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import Stage, http_job
from tests.reliability.conftest import (
    STAGE_TIERS,
    Campaign,
    Hook,
    ReservationAudit,
    Rig,
    Scheduler,
    account,
    client_error,
    fresh_stage,
    wall_clock,
)
from throttler.core.envelope import parse_job
from throttler.core.errors import ConfigError, InvalidJob
from throttler.core.quotas import parse_quota_item
from throttler.tasks import ValidationContext, default_registry

MAX_BYTES = 4096  # the stage's MAX_MESSAGE_BYTES here, so that "huge" stays under SQS's own 256 KiB
ALLOWED = ("127.0.0.1", "localhost")
CHECKS = ValidationContext.build([f"http://{host}:*" for host in ALLOWED], "local")
SQS_INVALID = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class SqsAndHttpFidelity(Hook):
    """What moto and the in-process adapter let through but real SQS and real HTTP refuse."""

    def before(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if op == "sqs.send_message_batch":
            for entry in kwargs["Entries"]:
                values = [entry["MessageBody"]] + [
                    a.get("StringValue", "") for a in entry.get("MessageAttributes", {}).values()
                ]
                if any(SQS_INVALID.search(v) for v in values):
                    raise client_error("InvalidMessageContents")(op)
        elif op == "api.request":
            for name, value in kwargs.get("headers", {}).items():
                f"{name}: {value}".encode("latin-1")  # what http.client does; raises UnicodeEncodeError


# ------------------------------------------------------------------------------------------ bodies
sqs_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40).filter(
    lambda s: not SQS_INVALID.search(s)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
wrong_types = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=2)
)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z]{2,5}){1,2}", fullmatch=True).filter(lambda h: h not in ALLOWED)
bad_urls = sqs_text | st.sampled_from(["ftp://127.0.0.1/x", "http://", "/relative", "http:///x", "127.0.0.1/ok"])
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
PAYLOAD_FIELDS = ("method", "url", "headers", "params", "json", "data", "timeout")
GOOD_PAYLOAD = {"method": "POST", "url": "http://127.0.0.1/ok"}
_DROP = object()


def envelope(**changes: Any) -> str:
    """A good envelope with some fields changed (or dropped), as a message body."""
    body: dict[str, Any] = {"task": "http", "payload": dict(GOOD_PAYLOAD)}
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not _DROP})


def payload(**changes: Any) -> str:
    """A good envelope whose http payload has some fields changed (or dropped)."""
    fields = {**GOOD_PAYLOAD, **changes}
    return envelope(payload={k: v for k, v in fields.items() if v is not _DROP})


mutations = st.one_of(
    json_values.map(json.dumps),  # random JSON
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),  # with raw unicode in the body
    sqs_text,  # not JSON at all (or JSON by chance)
    st.just("[" * 5000 + "]" * 5000),  # deeper than the parser goes
    wrong_types.map(lambda v: envelope(task=v)),
    (wrong_types | st.text(max_size=5)).map(lambda v: envelope(payload=v)),
    (wrong_types | st.just("") | st.text(min_size=129, max_size=140)).map(lambda v: envelope(id=v)),
    sqs_text.map(lambda v: envelope(id=v)),  # an id must work as a header and as a key
    st.text(min_size=1, max_size=10).filter(lambda k: k not in ("task", "payload", "id")).map(
        lambda k: envelope(**{k: 1})),  # unknown envelope fields
    st.sampled_from(["task", "payload"]).map(lambda k: envelope(**{k: _DROP})),
    sqs_text.filter(lambda t: t != "http").map(lambda t: envelope(task=t)),  # unknown tasks
    st.sampled_from(["method", "url"]).map(lambda k: payload(**{k: _DROP})),  # missing fields
    sqs_text.filter(lambda m: m.upper() not in METHODS).map(lambda m: payload(method=m)),
    bad_urls.map(lambda u: payload(url=u)),
    st.builds(lambda h, scheme: payload(url=f"{scheme}://{h}/x"), hosts, st.sampled_from(["http", "https"])),
    st.dictionaries(st.text(min_size=1, max_size=5), st.integers() | st.none(), min_size=1, max_size=2).map(
        lambda h: payload(headers=h)),
    st.sampled_from([0, -1, 31, 1e9, "soon"]).map(lambda t: payload(timeout=t)),
    st.integers(MAX_BYTES, 4 * MAX_BYTES).map(lambda n: payload(data="x" * n)),  # huge
    sqs_text.map(lambda d: payload(json={"a": 1}, data=d)),
    sqs_text.filter(lambda k: k not in PAYLOAD_FIELDS).map(lambda k: payload(**{k: "?"})),
)


def verdict(body: str, job_id: str) -> str:
    """The validator's own verdict: '' for a job it accepts, else its reason."""
    try:
        parse_job(body, "g", job_id, tasks=default_registry.view({"http"}), validation=CHECKS, max_bytes=MAX_BYTES)
    except InvalidJob as exc:
        return str(exc)
    return ""


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(mutations, min_size=1, max_size=5))
@example(bodies=[envelope(**{"\b": 1})])  # found by this test: the reason quoted a control character
@example(bodies=[envelope(id="a\nb"), envelope(id="\u65e5\u672c")])  # found by this test: ids unfit for a header
def test_fuzz_bad_messages_are_dead_lettered_with_a_reason_while_good_jobs_flow(
    bodies: list[str], campaign: Campaign
) -> None:
    started = wall_clock()
    with fresh_stage(MAX_MESSAGE_BYTES=str(MAX_BYTES)) as stage:
        jobs: list[tuple[str, str, str]] = []
        for i, body in enumerate(bodies):
            jobs += [(body, f"bad{i}", f"bad-{i}"), (http_job("/ok", f"bad{i}", 1), f"bad{i}", f"after-{i}")]
        jobs += [(http_job("/ok", f"good{i % 3}", i), f"good{i % 3}", f"good-{i}") for i in range(9)]
        stage.enqueue(jobs)
        audit = ReservationAudit(stage.clock)

        scheduler = Scheduler(stage)
        scheduler.drain(lambda: Rig(stage, [SqsAndHttpFidelity(), audit]))

        assert scheduler.failures == []  # no run crashed
        # A body the validator accepts after all runs as the job its envelope names (its own id, if any).
        job_ids = {j[2]: j[2] for j in jobs}
        for i, body in enumerate(bodies):
            if not verdict(body, f"bad-{i}"):
                job_ids[f"bad-{i}"] = json.loads(body).get("id") or f"bad-{i}"
        tally = account(stage, list(dict.fromkeys(job_ids.values())), tiers=STAGE_TIERS, audit=audit)
        tally.assert_safe()
        successes = stage.api.successes_by_key()
        assert all(successes[job_ids[f"good-{i}"]] == 1 for i in range(9))
        for i, body in enumerate(bodies):
            assert successes[job_ids[f"after-{i}"]] == 1  # its group moved on
            if verdict(body, f"bad-{i}"):  # a bad message: dead-lettered at once, with a reason
                record = tally.dlq[f"bad-{i}"]
                assert record["reason"].strip() and record["attempts"] == "0" and record["body"] == body
                assert record["group"] == f"bad{i}"
            else:  # valid after all: it ran like any other job (its call is to /ok, so it succeeded)
                assert successes[job_ids[f"bad-{i}"]] == 1
    bad = sum(1 for i, body in enumerate(bodies) if verdict(body, f"bad-{i}"))
    campaign.record("fuzz-messages", tally, "hypothesis examples", started=started)
    campaign.rows["fuzz-messages"]["outcomes"]["fuzzed bodies dead-lettered at once (attempts 0)"] += bad
    campaign.rows["fuzz-messages"]["outcomes"]["fuzzed bodies valid after all, ran normally"] += len(bodies) - bad


# ------------------------------------------------------------------------------------------ quotas
tier_names = st.sampled_from(["second", "minute", "hour", "day", "90s", "5m", "2h", "1d", "0s", "32d", "Second", "sec"])
meta_names = st.sampled_from(["aligned", "concurrency", "margin_ms", "updated_at", "updated_by"])
attribute_names = tier_names | meta_names | st.text(min_size=1, max_size=10).filter(lambda n: n != "pk")
scalars = (
    st.none() | st.booleans() | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.text(max_size=8)
    | st.sampled_from(["5", "-1", "0", " 7 ", "ten", "second", "day"])
)
attribute_values = (
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3),
        max_leaves=6,
    )
    | st.sets(st.integers(0, 100), min_size=1, max_size=3)  # DynamoDB number and string sets
    | st.sets(st.sampled_from(["second", "day", "x"]), min_size=1)
)
GOOD = {"second": 4, "minute": 100}
edits = st.dictionaries(attribute_names, attribute_values, min_size=0, max_size=5)
quota_items = edits | st.builds(  # a valid item with a few attributes edited, added or set to junk
    lambda base, changed: {**base, **changed},
    st.sampled_from([GOOD, {"minute": 600, "day": 10000, "aligned": ["day"]}, {"second": 2, "concurrency": 3}]),
    st.dictionaries(attribute_names, attribute_values, min_size=1, max_size=2),
)


def dynamo_item(item: dict[str, Any]) -> dict[str, Any]:
    """As an operator's console edit would store it (numbers become DynamoDB numbers)."""

    def plain(value: Any) -> Any:
        if isinstance(value, float):
            return Decimal(repr(value))
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    serializer = TypeSerializer()
    return {k: serializer.serialize(plain(v)) for k, v in {**item, "pk": "quotas"}.items()}


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(item=quota_items)
def test_fuzz_hand_edited_quota_items_fall_back_to_the_last_good_configuration(
    stage: Stage, campaign: Campaign, item: dict[str, Any]
) -> None:
    from handlers.throttler import emit_metrics
    from throttler.observability import metrics

    # Given a stage whose last good configuration is GOOD, and an item an operator edited by hand
    stage.store.put_last_good(GOOD)
    stage.dynamodb.put_item(TableName=stage.env["STATE_TABLE"], Item=dynamo_item(item))
    stored = stage.store.read_control().quotas or {}
    try:
        expected = parse_quota_item(stored)
        valid = True
    except ConfigError:
        expected, valid = parse_quota_item(GOOD), False
    errors = Errors()
    logging.getLogger("throttler").addHandler(errors)

    # When a run starts
    try:
        run = Rig(stage).build()
        summary = run.run(stage.clock.now() + 5)
    finally:
        logging.getLogger("throttler").removeHandler(errors)
    stage.advance(1)

    # Then it uses the item if it is valid, or else the last good configuration, saying so
    assert run.config == expected
    assert summary.invalid_config is (not valid)
    assert ("invalid quota configuration" in errors.messages) is (not valid)
    emit_metrics(summary)
    assert (metrics.serialize_metric_set().get("InvalidQuotaConfig") == [1.0]) is (not valid)
    metrics.clear_metrics()
    if valid:  # and a valid one becomes the new last good configuration
        assert parse_quota_item(stage.store.read_control().last_good or {}) == expected
    campaign.rows["fuzz-quotas"]["cases"] += 1
    campaign.rows["fuzz-quotas"]["outcomes"]["valid, used" if valid else "invalid, last good used"] += 1


def test_fuzz_quota_item_invalid_with_no_good_configuration_dispatches_nothing(
    stage: Stage, campaign: Campaign
) -> None:
    stage.extra_env["DEFAULT_QUOTAS"] = ""
    stage.dynamodb.put_item(TableName=stage.env["STATE_TABLE"], Item=dynamo_item({"minute": "lots", "second": [1]}))
    stage.enqueue([(http_job("/ok", "a", i), "a", f"a-{i}") for i in range(3)])
    summary = Rig(stage).run()
    assert summary.invalid_config and summary.dispatched == 0 and stage.api.calls == [] and stage.depth() == 3
    stage.store.put_quotas(GOOD)  # the operator fixes the item: work resumes
    stage.advance(5)
    Scheduler(stage).drain(lambda: Rig(stage))
    tally = account(stage, [f"a-{i}" for i in range(3)], tiers=((1, 4), (60, 100)))
    tally.assert_safe()
    campaign.record("fuzz-quotas", tally, "invalid, no good configuration: nothing dispatched until fixed")
