"""The composition root: the only place that builds boto3 clients and wires the runtime's services.

Nothing here runs at import time. `Composition.from_env()` is what the Lambda handlers use; tests, the
local stack and the simulation build their own Composition (other clients, clock, invoker or HTTP
session factory) and pass it in: there is no global wiring to swap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from throttler.core.clock import Clock, SystemClock
from throttler.core.envelope import Job, parse_job
from throttler.dispatch.run import ThrottlerRun
from throttler.dispatch.summary import RunSettings
from throttler.queue import JobQueue, QueuedMessage, SqsJobQueue
from throttler.queue.dead_letters import job_id_of
from throttler.settings import Settings
from throttler.store import DynamoStateStore, DynamoWorkerRecords
from throttler.tasks import default_registry
from throttler.tasks import http as http_task
from throttler.tasks.registry import TaskRegistry, ValidationContext
from throttler.tasks.secrets import secret_headers_getter
from throttler.tasks.url import endpoint_target
from throttler.worker.invoker import Invoker, LambdaInvoker
from throttler.worker.service import WorkerConfig, WorkerService

# botocore's standard retries for the state table and the queues: throttling and 5xx are retried.
AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


def lambda_config(worker_timeout_s: float) -> Config:
    """Invoke is never retried by botocore: after a dropped connection or a read timeout, a retry would
    deliver the same batch twice (the worker's claim stops a second run anyway)."""
    return Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=int(worker_timeout_s) + 15)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def aws_client(service: str, *, config: Config | None = None, endpoint_url: str | None = None, **credentials: Any) -> Any:
    """A boto3 client; honours AWS_ENDPOINT_URL (boto3 reads it itself), the region and credentials."""
    session = boto3.session.Session()
    kwargs: dict[str, Any] = {"region_name": region(), "config": config or AWS_CONFIG, **credentials}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return session.client(service, **kwargs)  # type: ignore[call-overload]


@dataclass
class Composition:
    settings: Settings
    clients: Callable[[str], Any] = field(default=lambda service: aws_client(service))
    clock: Clock = field(default_factory=SystemClock)
    invoker: Callable[[Composition], Invoker] | None = None
    new_session: Callable[[int], Any] = http_task.new_session
    registry: TaskRegistry = field(default_factory=lambda: default_registry)
    get_parameter: Callable[[str], Any] | None = None  # SSM reads (None: Powertools against AWS_ENDPOINT_URL or AWS)
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Composition:
        return cls(Settings.from_env())

    def client(self, service: str) -> Any:
        if service not in self._cache:
            self._cache[service] = self.clients(service)
        return self._cache[service]

    # ------------------------------------------------------------------ shared parts
    def validation(self) -> ValidationContext:
        if "validation" not in self._cache:
            s = self.settings
            # The stage's own AWS endpoint (an emulator on the local stack) and the Lambda runtime API are never
            # a job's target, even where the allow-list says `http://127.0.0.1:*`.
            denied = [target for url in s.never_call for target in endpoint_target(url)]
            self._cache["validation"] = ValidationContext.build(
                s.allowed_hosts, s.stage, [h for h, _ in s.secret_headers], s.response_max_bytes, denied, s.in_lambda
            )
        validation: ValidationContext = self._cache["validation"]
        return validation

    def tasks(self) -> TaskRegistry:
        self.registry.load_module(self.settings.tasks_module)
        return self.registry

    def parser(self) -> Callable[[QueuedMessage], Job]:
        tasks, validation, max_bytes = self.tasks(), self.validation(), self.settings.max_message_bytes

        def parse(message: QueuedMessage) -> Job:
            # A redriven copy carries its job id as an attribute when its body had no room for it.
            return parse_job(
                message.body, message.group, job_id_of(message), tasks=tasks, validation=validation, max_bytes=max_bytes
            )

        return parse

    def store(self) -> DynamoStateStore:
        return DynamoStateStore(self.client("dynamodb"), self.settings.state_table)

    def queue(self) -> JobQueue:
        return SqsJobQueue(self.client("sqs"), self.settings.jobs_queue_url, self.settings.dlq_url)

    def run_settings(self) -> RunSettings:
        s = self.settings
        return RunSettings(
            s.default_quotas,
            s.default_latency,
            s.max_attempts,
            s.retry_base_s,
            s.retry_max_s,
            s.worker_timeout_s,
            s.worker_max_parallel,
            s.allowed_hosts,
            s.max_message_bytes,
        )

    # ------------------------------------------------------------------ the two functions
    def run(self, owner: str | None = None) -> ThrottlerRun:
        if self.invoker is not None:
            invoker = self.invoker(self)
        else:
            client = self._cache.get("lambda-invoke") or aws_client(
                "lambda", config=lambda_config(self.settings.worker_timeout_s)
            )
            self._cache["lambda-invoke"] = client
            invoker = LambdaInvoker(client, self.settings.worker_function)
        return ThrottlerRun(
            settings=self.run_settings(),
            store=self.store(),
            queue=self.queue(),
            invoker=invoker,
            clock=self.clock,
            parse=self.parser(),
            owner=owner,
        )

    def worker(self) -> WorkerService:
        if "worker" not in self._cache:
            s = self.settings
            self._cache["worker"] = WorkerService(
                config=WorkerConfig(self.validation(), s.max_message_bytes, s.worker_max_parallel),
                records=DynamoWorkerRecords(self.client("dynamodb"), s.state_table),
                clock=self.clock,
                registry=self.tasks(),
                secret_headers=secret_headers_getter(s.secret_headers, self.get_parameter),
                new_session=self.new_session,
            )
        worker: WorkerService = self._cache["worker"]
        return worker
