"""The producer's client: validate a job exactly as the worker will, then put it on the jobs queue.

A job the worker would refuse (not JSON, too large, unknown task, a URL whose host is not allowed) is
refused here with `InvalidJob` and a one-line reason, before anything is sent.

    producer = Producer.for_stage("dev")
    producer.send("http", {"method": "POST", "url": "https://api.example.com/v1/items"}, group="customer-42")
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from throttler.core.envelope import DEFAULT_MAX_MESSAGE_BYTES, parse_job
from throttler.core.errors import InvalidJob, StoreError
from throttler.queue import SqsJobQueue

# SQS's rule for MessageGroupId and MessageDeduplicationId: 1-128 printable ASCII characters.
SQS_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


def resource_names(stage: str) -> dict[str, str]:
    """The stage's resource names, as serverless.yml builds them."""
    return {
        "jobs_queue": f"throttler-{stage}-jobs.fifo",
        "dlq": f"throttler-{stage}-dlq.fifo",
        "state_table": f"throttler-{stage}-state",
    }


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


def stage_allowed_hosts(stage: str) -> tuple[str, ...]:
    """ALLOWED_HOSTS from the environment, else the stage's `allowedHosts` parameter in serverless.yml."""
    value = os.environ.get("ALLOWED_HOSTS")
    if not value:
        from throttler_tools.stackdef import params

        value = str(params(stage).get("allowedHosts", ""))
    return tuple(h.strip() for h in value.split(",") if h.strip())


def known_task_names() -> frozenset[str]:
    """The built-in tasks plus those of TASKS_MODULE (the same module the worker loads)."""
    from throttler.tasks import default_registry

    default_registry.load_module(os.environ.get("TASKS_MODULE", ""))
    return default_registry.names


@dataclass(frozen=True)
class OutgoingJob:
    """A validated job, ready to send: the message body, its group and its deduplication id (= job id)."""

    body: str
    group: str
    job_id: str


class JobBuilder:
    """Validates jobs as the worker will (JSON, size, task name, url and host) and builds their messages."""

    def __init__(
        self,
        allowed_hosts: Iterable[str],
        known_tasks: Iterable[str] | None = None,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        stage: str = "",
        secret_header_names: Iterable[str] = (),
    ):
        from throttler.tasks import ValidationContext, default_registry

        self.allowed_hosts = tuple(allowed_hosts)
        self.known_tasks = frozenset(known_tasks) if known_tasks is not None else known_task_names()
        self.max_bytes = max_bytes
        self.stage = stage
        # ConfigError for a malformed ALLOWED_HOSTS entry, or `*` outside the local stage.
        self.validation = ValidationContext.build(self.allowed_hosts, stage, secret_header_names)
        self.tasks = default_registry.view(self.known_tasks)

    @classmethod
    def for_stage(cls, stage: str) -> JobBuilder:
        """Validation settings as the stage's worker has them (ALLOWED_HOSTS, MAX_MESSAGE_BYTES, TASKS_MODULE)."""
        max_bytes = int(os.environ.get("MAX_MESSAGE_BYTES") or DEFAULT_MAX_MESSAGE_BYTES)
        secret_names = json.loads(os.environ.get("SECRET_HEADERS") or "{}")
        return cls(stage_allowed_hosts(stage), max_bytes=max_bytes, stage=stage, secret_header_names=secret_names)

    def build(self, task: str, payload: Any, group: str, job_id: str | None = None) -> OutgoingJob:
        """Validate one job; raises InvalidJob with a one-line reason."""
        if not isinstance(group, str) or not SQS_ID.match(group):
            raise InvalidJob(f"group must be 1-128 printable ASCII characters without spaces, not {group!r}")
        if job_id is not None and (not isinstance(job_id, str) or not SQS_ID.match(job_id)):
            raise InvalidJob(f"job id must be 1-128 printable ASCII characters without spaces, not {job_id!r}")
        envelope: dict[str, Any] = {"task": task, "payload": payload}
        if job_id is not None:
            envelope["id"] = job_id
        try:
            body = json.dumps(envelope, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidJob(f"payload is not JSON: {exc}") from exc
        dedup_id = job_id or uuid.uuid4().hex
        job = parse_job(
            body,
            group,
            dedup_id,
            tasks=self.tasks,
            validation=self.validation,
            max_bytes=self.max_bytes,
        )
        return OutgoingJob(body, group, job.job_id)

    def build_mapping(self, job: Mapping[str, Any], where: str = "") -> OutgoingJob:
        """A job given as `{"task", "payload", "group", "id"?}`; `where` prefixes the reason (e.g. `line 3`)."""
        prefix = f"{where}: " if where else ""
        if not isinstance(job, Mapping):
            raise InvalidJob(f"{prefix}a job must be a JSON object with task, payload and group")
        unknown = sorted(set(job) - {"task", "payload", "group", "id"})
        if unknown:
            raise InvalidJob(f"{prefix}unknown key(s) {', '.join(unknown)}: a job has task, payload, group and id")
        missing = [k for k in ("task", "group") if not job.get(k)]
        if missing:
            raise InvalidJob(f"{prefix}missing {' and '.join(missing)}")
        try:
            return self.build(job["task"], job.get("payload", {}), job["group"], job.get("id"))
        except InvalidJob as exc:
            raise InvalidJob(f"{prefix}{exc}") from exc


class Producer:
    """Sends jobs to a stage's FIFO jobs queue after the worker's own validation."""

    def __init__(
        self,
        sqs_client: Any,
        queue_url: str,
        allowed_hosts: Iterable[str],
        known_tasks: Iterable[str] | None = None,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        stage: str = "",
        secret_header_names: Iterable[str] = (),
    ):
        self.queue = SqsJobQueue(sqs_client, queue_url, "")
        self.builder = JobBuilder(allowed_hosts, known_tasks, max_bytes, stage=stage, secret_header_names=secret_header_names)

    @classmethod
    def for_stage(cls, stage: str, sqs_client: Any = None) -> Producer:
        """A producer for `stage`: queue URL looked up by name, validation settings as the stage's worker has them."""
        if sqs_client is None:
            import boto3

            sqs_client = boto3.client("sqs")
        builder = JobBuilder.for_stage(stage)
        url = queue_url(sqs_client, resource_names(stage)["jobs_queue"])
        return cls(
            sqs_client, url, builder.allowed_hosts, builder.known_tasks, builder.max_bytes,
            stage=stage, secret_header_names=builder.validation.secret_header_names,
        )

    def build(self, task: str, payload: Any, group: str, job_id: str | None = None) -> OutgoingJob:
        """Validate one job without sending it; raises InvalidJob with a one-line reason."""
        return self.builder.build(task, payload, group, job_id)

    def send(self, task: str, payload: Any, group: str, job_id: str | None = None) -> str:
        """Validate and send one job; returns its id (a fresh one when `job_id` is not given)."""
        return self.send_many([self.build(task, payload, group, job_id)])[0]

    def send_many(self, jobs: Iterable[Mapping[str, Any] | OutgoingJob]) -> list[str]:
        """Validate every job first (nothing is sent if one is invalid), then send in batches of 10, in order.

        Each job is a mapping with `task`, `payload`, `group` and optionally `id`, or an OutgoingJob.
        Jobs of one group keep their order. A job id is its deduplication id: sending the same id again
        within SQS's 5-minute window is a no-op, so a producer may safely retry a failed call.
        """
        built = [j if isinstance(j, OutgoingJob) else self.builder.build_mapping(j, f"job {i + 1}") for i, j in enumerate(jobs)]
        self.queue.send([(j.body, j.group, j.job_id) for j in built])
        return [j.job_id for j in built]
