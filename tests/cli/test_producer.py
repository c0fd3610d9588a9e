"""The producer's Python client refuses, at the source, every job the worker would refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest

from tests.cli.conftest import Cli
from throttler.core.errors import ConfigError, InvalidJob, StoreError
from throttler.naming import StageNames
from throttler.producer import JobBuilder, OutgoingJob, Producer, PublishedSettings
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


def test_a_job_carries_its_quota_key_and_cost(run: Cli, producer: Producer) -> None:
    producer.send("http", {"method": "GET", "url": URL}, group="g", job_id="k-1", key="tenant-7", cost=3)
    [message] = run.messages()
    assert json.loads(message["Body"]) == {"task": "http", "payload": {"method": "GET", "url": URL}, "id": "k-1",
                                           "key": "tenant-7", "cost": 3}
    assert producer.send_many([{"task": "http", "payload": {"method": "GET", "url": URL}, "group": "g", "key": "t", "cost": 2}])


@pytest.mark.parametrize(
    ("key", "cost", "reason"),
    [
        ("", None, "envelope key"),
        ("k" * 129, None, "envelope key"),
        ("tab\there", None, "envelope key"),
        (None, 0, "envelope cost"),
        (None, -4, "envelope cost"),
        (None, 10**13, "envelope cost"),
        (None, True, "envelope cost"),
        (None, "2", "envelope cost"),
    ],
)
def test_a_bad_key_or_cost_is_refused_at_the_source(run: Cli, producer: Producer, key: object, cost: object, reason: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        producer.send("http", {"method": "GET", "url": URL}, group="g", key=key, cost=cost)  # type: ignore[arg-type]
    assert reason in str(refused.value) and "\n" not in str(refused.value)
    assert run.depth() == 0


def test_for_stage_takes_allowed_hosts_from_the_environment(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_HOSTS", "a.example, http://b.example:*")
    producer = Producer.for_stage("local", run.sqs)
    assert producer.hosts_checked and producer.builder.allowed_hosts == ("a.example", "http://b.example:*")
    producer.send("http", {"method": "GET", "url": "http://b.example:8080/x"}, group="g")
    with pytest.raises(InvalidJob, match=r"host 'c\.example' is not in ALLOWED_HOSTS"):
        producer.send("http", {"method": "GET", "url": "https://c.example/x"}, group="g")


def test_for_stage_takes_allowed_hosts_and_size_from_the_published_stage_settings(run: Cli) -> None:
    settings = PublishedSettings.from_item({"allowed_hosts": ["http://127.0.0.1:*"], "max_message_bytes": 600,
                                            "default_quotas": "second=1", "written_at": 1.0})
    producer = Producer.for_stage("local", run.sqs, settings=settings)
    assert producer.hosts_checked
    producer.send("http", {"method": "GET", "url": URL}, group="g")
    with pytest.raises(InvalidJob, match="not in ALLOWED_HOSTS"):
        producer.send("http", {"method": "GET", "url": "https://api.example.com/x"}, group="g")
    with pytest.raises(InvalidJob, match="over the 600-byte limit"):
        producer.send("http", {"method": "POST", "url": URL, "data": "x" * 700}, group="g")


def test_published_settings_read_the_stage_item_in_either_form() -> None:
    assert PublishedSettings.from_item(None) is None
    assert PublishedSettings.from_item({"allowed_hosts": "a.example, b.example"}).allowed_hosts == ("a.example", "b.example")  # type: ignore[union-attr]
    published = PublishedSettings.from_item({"allowed_hosts": {"x.example"}, "max_message_bytes": Decimal(1024),
                                             "written_at": Decimal("12.5"), "default_latency": "low"})
    assert published == PublishedSettings(("x.example",), 1024, None, "low", 12.5)


def test_for_stage_before_the_first_run_sends_without_checking_the_host(run: Cli) -> None:
    """No ALLOWED_HOSTS and nothing published yet: the producer cannot know the allow-list (the throttler
    still checks it), but every other check holds."""
    producer = Producer.for_stage("local", run.sqs, dynamodb_client=run.stack.client("dynamodb"))
    assert not producer.hosts_checked
    producer.send("http", {"method": "GET", "url": "https://anything.example/x"}, group="g")
    with pytest.raises(InvalidJob, match="unknown task"):
        producer.send("htp", {"method": "GET", "url": URL}, group="g")
    assert run.depth() == 1


def test_for_stage_finds_the_queue_by_name(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_HOSTS", "http://127.0.0.1:*")
    producer = Producer.for_stage("local", run.sqs)
    producer.send("http", {"method": "GET", "url": URL}, group="g")
    assert run.depth() == 1
    with pytest.raises(StoreError, match=r"queue throttler-nope-jobs\.fifo does not exist: is the stage deployed"):
        Producer.for_stage("nope", run.sqs)
    with pytest.raises(ConfigError, match="invalid stage name"):
        Producer.for_stage("no spaces", run.sqs)


def test_resource_names_follow_the_stage() -> None:
    assert StageNames.of("prod").as_dict() == {
        "jobs_queue": "throttler-prod-jobs.fifo",
        "dlq": "throttler-prod-dlq.fifo",
        "state_table": "throttler-prod-state",
        "throttler_function": "throttler-prod-throttler",
        "worker_function": "throttler-prod-worker",
    }


def test_the_producer_imports_with_the_runtime_alone() -> None:
    """It ships in the Lambda zip: importing it must not reach into the tools (nor PyYAML)."""
    code = (
        "import sys, throttler.producer, throttler.naming\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('throttler_tools', 'yaml', 'moto', 'click'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
