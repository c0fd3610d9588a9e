"""The producer's client: validate a job exactly as the worker will, then put it on the stage's jobs queue.

A job the worker would refuse (not JSON, too large, unknown task, a bad `key` or `cost`, a URL whose host
is not allowed) is refused here with `InvalidJob` and a one-line reason, before anything is sent.

    producer = Producer.for_stage("dev")
    producer.send("http", {"method": "POST", "url": "https://api.example.com/v1/items"}, group="customer-42",
                  key="tenant-7", cost=2)

The allowed hosts are ALLOWED_HOSTS from the environment, else the ones the stage's throttler published
in the state table (its `stage` item, written on each run). Before the stage's first run, with no
ALLOWED_HOSTS, the host cannot be checked here (`hosts_checked` is False); the throttler still checks it
and dead-letters a job whose host is not allowed. This module ships in the Lambda zip: it imports only
what requirements.txt installs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from throttler.core.envelope import DEFAULT_MAX_MESSAGE_BYTES, parse_job
from throttler.core.errors import ConfigError, InvalidJob, StoreError
from throttler.naming import StageNames
from throttler.queue import SqsJobQueue
from throttler.tasks import ValidationContext, default_registry
from throttler.tasks.url import AllowList

logger = logging.getLogger(__name__)

# SQS's rule for MessageGroupId and MessageDeduplicationId: 1-128 printable ASCII characters.
SQS_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
JOB_FIELDS = ("task", "payload", "group", "id", "key", "cost")


def queue_url(sqs_client: Any, name: str) -> str:
    """Look a queue's URL up by name; StoreError names the queue when it does not exist."""
    from botocore.exceptions import ClientError

    try:
        url: str = sqs_client.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if "NonExistentQueue" in code or code == "QueueDoesNotExist":
            raise StoreError(f"queue {name} does not exist: is the stage deployed (or the local stack running)?") from exc
        raise StoreError(f"sqs get_queue_url failed: {code}") from exc
    return url


# ------------------------------------------------------------------------------------------- stage settings
@dataclass(frozen=True)
class PublishedSettings:
    """What the stage's throttler published in the state table's `stage` item on its last run, so that a
    producer or an operator's command needs neither serverless.yml nor the functions' environment."""

    allowed_hosts: tuple[str, ...] | None = None
    max_message_bytes: int | None = None
    default_quotas: str | None = None
    default_latency: str | None = None
    written_at: float | None = None

    @classmethod
    def from_item(cls, item: Mapping[str, Any] | None) -> PublishedSettings | None:
        """The `stage` item as read by the store (`Control.stage_settings`); None when there is none."""
        if not item:
            return None
        hosts = item.get("allowed_hosts")
        if isinstance(hosts, str):
            hosts = split_hosts(hosts)
        elif hosts is not None:
            hosts = tuple(str(h).strip() for h in hosts if str(h).strip())
        max_bytes = item.get("max_message_bytes")
        written_at = item.get("written_at")
        quotas = item.get("default_quotas")
        latency = item.get("default_latency")
        return cls(
            allowed_hosts=hosts,
            max_message_bytes=int(max_bytes) if max_bytes is not None else None,
            default_quotas=str(quotas) if quotas is not None else None,
            default_latency=str(latency) if latency is not None else None,
            written_at=float(written_at) if written_at is not None else None,
        )

    @classmethod
    def of_control(cls, control: Any) -> PublishedSettings | None:
        """From a `throttler.store.Control` (its `stage_settings`, where the store provides it)."""
        return cls.from_item(getattr(control, "stage_settings", None))


def read_published(dynamodb_client: Any, table: str) -> PublishedSettings | None:
    """The stage item, or None when the throttler has not run yet or it cannot be read (a producer's role
    may be allowed to send to the queue only)."""
    from throttler.store import DynamoStateStore

    try:
        return PublishedSettings.of_control(DynamoStateStore(dynamodb_client, table).read_control())
    except StoreError as exc:
        logger.warning("stage settings unreadable", extra={"table": table, "error": str(exc)})
        return None


def split_hosts(value: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in value.split(",") if h.strip())


def env_allowed_hosts() -> tuple[str, ...] | None:
    """ALLOWED_HOSTS from the environment (as the worker reads it), or None when it is not set."""
    value = os.environ.get("ALLOWED_HOSTS", "")
    return split_hosts(value) if value.strip() else None


def env_max_message_bytes() -> int | None:
    value = os.environ.get("MAX_MESSAGE_BYTES", "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"MAX_MESSAGE_BYTES must be a whole number, not {value!r}") from None
    if number < 1:
        raise ConfigError("MAX_MESSAGE_BYTES must be positive")
    return number


def env_secret_header_names() -> tuple[str, ...]:
    """The names of SECRET_HEADERS (header -> SSM parameter), which a message may not set."""
    try:
        secret = json.loads(os.environ.get("SECRET_HEADERS") or "{}")
    except ValueError:
        raise ConfigError("SECRET_HEADERS must be a JSON object") from None
    if not isinstance(secret, dict):
        raise ConfigError("SECRET_HEADERS must be a JSON object")
    return tuple(str(name) for name in secret)


def known_task_names() -> frozenset[str]:
    """The built-in tasks plus those of TASKS_MODULE (the same module the worker loads)."""
    default_registry.load_module(os.environ.get("TASKS_MODULE", ""))
    return default_registry.names


# ------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class OutgoingJob:
    """A validated job, ready to send: the message body, its group and its deduplication id (= job id)."""

    body: str
    group: str
    job_id: str


class JobBuilder:
    """Validates jobs as the worker will (JSON, size, task name and payload, key, cost, url and host) and
    builds their messages. `allowed_hosts=None`: the stage's allow-list is not known here, so any host
    passes this check (the throttler still checks it)."""

    def __init__(
        self,
        allowed_hosts: Iterable[str] | None,
        known_tasks: Iterable[str] | None = None,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        stage: str = "",
        secret_header_names: Iterable[str] = (),
    ):
        self.known_tasks = frozenset(known_tasks) if known_tasks is not None else known_task_names()
        self.max_bytes = max_bytes
        self.stage = stage
        self.hosts_checked = allowed_hosts is not None
        self.allowed_hosts: tuple[str, ...] = tuple(allowed_hosts or ())
        if allowed_hosts is None:
            self.validation = ValidationContext(AllowList((), any_host=True), frozenset(n.lower() for n in secret_header_names))
        else:
            # ConfigError for a malformed ALLOWED_HOSTS entry, or `*` outside the local stage.
            self.validation = ValidationContext.build(self.allowed_hosts, stage, secret_header_names)
        self.tasks = default_registry.view(self.known_tasks)

    def build(
        self,
        task: str,
        payload: Any,
        group: str,
        job_id: str | None = None,
        *,
        key: str | None = None,
        cost: int | None = None,
    ) -> OutgoingJob:
        """Validate one job; raises InvalidJob with a one-line reason."""
        if not isinstance(group, str) or not SQS_ID.match(group):
            raise InvalidJob(f"group must be 1-128 printable ASCII characters without spaces, not {group!r}")
        if job_id is not None and (not isinstance(job_id, str) or not SQS_ID.match(job_id)):
            raise InvalidJob(f"job id must be 1-128 printable ASCII characters without spaces, not {job_id!r}")
        envelope: dict[str, Any] = {"task": task, "payload": payload}
        if job_id is not None:
            envelope["id"] = job_id
        if key is not None:
            envelope["key"] = key
        if cost is not None:
            envelope["cost"] = cost
        try:
            body = json.dumps(envelope, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidJob(f"payload is not JSON: {exc}") from exc
        dedup_id = job_id or uuid.uuid4().hex
        job = parse_job(body, group, dedup_id, tasks=self.tasks, validation=self.validation, max_bytes=self.max_bytes)
        return OutgoingJob(body, group, job.job_id)

    def build_mapping(self, job: Mapping[str, Any], where: str = "") -> OutgoingJob:
        """A job given as `{"task", "payload", "group", "id"?, "key"?, "cost"?}`; `where` prefixes the reason
        (e.g. `line 3`)."""
        prefix = f"{where}: " if where else ""
        if not isinstance(job, Mapping):
            raise InvalidJob(f"{prefix}a job must be a JSON object with task, payload and group")
        unknown = sorted(set(job) - set(JOB_FIELDS))
        if unknown:
            raise InvalidJob(f"{prefix}unknown key(s) {', '.join(map(str, unknown))}: a job has {', '.join(JOB_FIELDS)}")
        missing = [k for k in ("task", "group") if not job.get(k)]
        if missing:
            raise InvalidJob(f"{prefix}missing {' and '.join(missing)}")
        try:
            return self.build(job["task"], job.get("payload", {}), job["group"], job.get("id"),
                              key=job.get("key"), cost=job.get("cost"))
        except InvalidJob as exc:
            raise InvalidJob(f"{prefix}{exc}") from exc


class Producer:
    """Sends jobs to a stage's FIFO jobs queue after the worker's own validation."""

    def __init__(
        self,
        sqs_client: Any,
        queue_url: str,
        allowed_hosts: Iterable[str] | None,
        known_tasks: Iterable[str] | None = None,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        stage: str = "",
        secret_header_names: Iterable[str] = (),
    ):
        self.queue = SqsJobQueue(sqs_client, queue_url, "")
        self.builder = JobBuilder(allowed_hosts, known_tasks, max_bytes, stage=stage, secret_header_names=secret_header_names)

    @classmethod
    def from_builder(cls, sqs_client: Any, queue_url: str, builder: JobBuilder) -> Producer:
        """A producer that validates with an existing builder."""
        producer = cls.__new__(cls)
        producer.queue = SqsJobQueue(sqs_client, queue_url, "")
        producer.builder = builder
        return producer

    @classmethod
    def for_stage(
        cls,
        stage: str,
        sqs_client: Any = None,
        *,
        dynamodb_client: Any = None,
        settings: PublishedSettings | None = None,
    ) -> Producer:
        """A producer for `stage`: the queue found by name, validation as the stage's worker does it.

        Allowed hosts: ALLOWED_HOSTS, else the stage's published settings (`settings`, or read from its
        state table with `dynamodb_client` or a default client). MAX_MESSAGE_BYTES likewise, else 256 KiB.
        """
        import boto3

        names = StageNames.of(stage)
        sqs_client = sqs_client if sqs_client is not None else boto3.client("sqs")
        hosts, max_bytes = env_allowed_hosts(), env_max_message_bytes()
        if hosts is None or max_bytes is None:
            if settings is None:
                client = dynamodb_client if dynamodb_client is not None else boto3.client("dynamodb")
                settings = read_published(client, names.state_table)
            if settings is not None:
                hosts = hosts if hosts is not None else settings.allowed_hosts
                max_bytes = max_bytes if max_bytes is not None else settings.max_message_bytes
        url = queue_url(sqs_client, names.jobs_queue)
        return cls(sqs_client, url, hosts, max_bytes=max_bytes or DEFAULT_MAX_MESSAGE_BYTES, stage=stage,
                   secret_header_names=env_secret_header_names())

    @property
    def hosts_checked(self) -> bool:
        """False when the stage's allow-list was not known: any host passed (the throttler checks it)."""
        return self.builder.hosts_checked

    def build(
        self, task: str, payload: Any, group: str, job_id: str | None = None, *, key: str | None = None, cost: int | None = None
    ) -> OutgoingJob:
        """Validate one job without sending it; raises InvalidJob with a one-line reason."""
        return self.builder.build(task, payload, group, job_id, key=key, cost=cost)

    def send(
        self, task: str, payload: Any, group: str, job_id: str | None = None, *, key: str | None = None, cost: int | None = None
    ) -> str:
        """Validate and send one job; returns its id (a fresh one when `job_id` is not given)."""
        return self.send_many([self.build(task, payload, group, job_id, key=key, cost=cost)])[0]

    def send_many(self, jobs: Iterable[Mapping[str, Any] | OutgoingJob]) -> list[str]:
        """Validate every job first (nothing is sent if one is invalid), then send in batches of 10, in order.

        Each job is a mapping with `task`, `payload`, `group` and optionally `id`, `key` and `cost`, or an
        OutgoingJob. Jobs of one group keep their order. A job id is its deduplication id: sending the same
        id again within SQS's 5-minute window is a no-op, so a producer may safely retry a failed call.
        """
        built = [j if isinstance(j, OutgoingJob) else self.builder.build_mapping(j, f"job {i + 1}") for i, j in enumerate(jobs)]
        self.queue.send([(j.body, j.group, j.job_id) for j in built])
        return [j.job_id for j in built]
