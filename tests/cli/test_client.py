"""The producer's Python client refuses, at the source, every job the worker would refuse."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import Cli
from throttler.client import JobBuilder, OutgoingJob, Producer, resource_names, stage_allowed_hosts
from throttler.core.errors import InvalidJob, StoreError
from throttler.tasks import default_registry, task

URL = "http://127.0.0.1:9000/v1/items"


@pytest.fixture
def producer(run: Cli) -> Producer:
    return Producer(run.sqs, run.jobs_url, allowed_hosts=["http://127.0.0.1:*"], known_tasks={"http"}, max_bytes=2048)


def test_send_puts_the_envelope_on_the_queue_with_group_and_id(run: Cli, producer: Producer) -> None:
    job_id = producer.send("http", {"method": "POST", "url": URL, "json": {"name": "x"}}, group="customer-42", job_id="order-7")
    assert job_id == "order-7"
    [message] = run.messages()
    assert json.loads(message["Body"]) == {
        "task": "http",
        "payload": {"method": "POST", "url": URL, "json": {"name": "x"}},
        "id": "order-7",
    }
    assert message["Attributes"]["MessageGroupId"] == "customer-42"
    assert message["Attributes"]["MessageDeduplicationId"] == "order-7"


def test_sending_the_same_id_twice_is_deduplicated(run: Cli, producer: Producer) -> None:
    for _ in range(2):
        producer.send("http", {"method": "GET", "url": URL}, group="g", job_id="once")
    assert run.depth() == 1


def test_send_many_keeps_order_within_each_group(run: Cli, producer: Producer) -> None:
    jobs = [
        {"task": "http", "payload": {"method": "GET", "url": f"{URL}?n={i}"}, "group": f"g{i % 3}", "id": f"j{i:02d}"}
        for i in range(25)
    ]
    assert producer.send_many(jobs) == [f"j{i:02d}" for i in range(25)]
    got = {g: [json.loads(m["Body"])["id"] for m in ms] for g, ms in run.take_all().items()}
    assert got == {f"g{k}": [f"j{i:02d}" for i in range(k, 25, 3)] for k in range(3)}


@pytest.mark.parametrize(
    ("task_name", "payload", "group", "job_id", "reason"),
    [
        ("htp", {"method": "GET", "url": URL}, "g", None, "unknown task 'htp'"),
        (
            "http",
            {"method": "GET", "url": "https://api.example.com/x"},
            "g",
            None,
            "host 'api.example.com' is not in ALLOWED_HOSTS",
        ),
        ("http", {"method": "GET", "url": "ftp://127.0.0.1/x"}, "g", None, "url scheme 'ftp' is not allowed"),
        ("http", {"method": "GET"}, "g", None, "http payload url: Field required"),
        ("http", {"method": "GET", "url": URL, "timeout": 999}, "g", None, "timeout"),
        ("http", {"method": "GET", "url": URL, "json": {}, "data": "x"}, "g", None, "give json or data, not both"),
        ("http", {"method": "GET", "url": URL, "cookies": {}}, "g", None, "cookies"),
        ("http", {"method": "POST", "url": URL, "data": "x" * 3000}, "g", None, "over the 2048-byte limit"),
        ("http", {"method": "GET", "url": URL, "json": {1, 2}}, "g", None, "payload is not JSON"),
        ("http", {"method": "GET", "url": URL, "json": float("nan")}, "g", None, "payload is not JSON"),
        ("http", ["GET", URL], "g", None, "envelope payload"),
        ("http", {"method": "GET", "url": URL}, "", None, "group must be"),
        ("http", {"method": "GET", "url": URL}, "a b", None, "group must be"),
        ("http", {"method": "GET", "url": URL}, "g", "é", "job id must be"),
    ],
)
def test_a_bad_job_is_refused_with_a_clear_reason(
    run: Cli, producer: Producer, task_name: str, payload: object, group: str, job_id: str | None, reason: str
) -> None:
    with pytest.raises(InvalidJob) as refused:
        producer.send(task_name, payload, group=group, job_id=job_id)
    assert reason in str(refused.value)
    assert "\n" not in str(refused.value)
    assert run.depth() == 0


def test_send_many_sends_nothing_when_one_job_is_bad(run: Cli, producer: Producer) -> None:
    good = {"task": "http", "payload": {"method": "GET", "url": URL}, "group": "g"}
    bad = {"task": "http", "payload": {"method": "GET", "url": "http://10.0.0.1/"}, "group": "g"}
    with pytest.raises(InvalidJob, match=r"^job 3: host '10.0.0.1'"):
        producer.send_many([good, good, bad, good])
    with pytest.raises(InvalidJob, match="job 1: missing group"):
        producer.send_many([{"task": "http", "payload": {}}])
    assert run.depth() == 0


def test_prebuilt_jobs_are_sent_as_built(run: Cli, producer: Producer) -> None:
    built = producer.build("http", {"method": "GET", "url": URL}, "g", "pre-1")
    assert isinstance(built, OutgoingJob) and built.job_id == "pre-1"
    assert producer.send_many([built]) == ["pre-1"]
    assert run.depth() == 1


def test_custom_tasks_registered_by_the_tasks_module_are_known(monkeypatch: pytest.MonkeyPatch) -> None:
    @task("send_invoice_for_client_test")
    def send_invoice(payload: dict, ctx: object) -> None:
        return None

    try:
        builder = JobBuilder(["127.0.0.1"])
        assert builder.build("send_invoice_for_client_test", {"invoice": 7}, "g").body
    finally:
        default_registry._tasks.pop("send_invoice_for_client_test", None)


def test_allowed_hosts_come_from_the_environment_or_the_stage_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLOWED_HOSTS", raising=False)
    assert stage_allowed_hosts("local") == ("127.0.0.1", "localhost")
    assert stage_allowed_hosts("dev") == ("api.example.com",)
    monkeypatch.setenv("ALLOWED_HOSTS", "a.example, http://b.example:*")
    assert stage_allowed_hosts("dev") == ("a.example", "http://b.example:*")


def test_for_stage_finds_the_queue_by_name(run: Cli) -> None:
    producer = Producer.for_stage("local", run.sqs)
    producer.send("http", {"method": "GET", "url": URL}, group="g")
    assert run.depth() == 1
    with pytest.raises(StoreError, match=r"queue throttler-nope-jobs\.fifo does not exist"):
        Producer.for_stage("nope", run.sqs)


def test_resource_names_follow_the_stage() -> None:
    assert resource_names("prod") == {
        "jobs_queue": "throttler-prod-jobs.fifo",
        "dlq": "throttler-prod-dlq.fifo",
        "state_table": "throttler-prod-state",
    }
