"""Composition root: builds clients and services lazily from Settings (handlers and CLI).

Nothing here runs at import time; every boto3 client honours AWS_ENDPOINT_URL (boto3 reads it itself)
and the usual region and credential settings.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import requests
from botocore.config import Config

from throttler.core.clock import Clock, SystemClock
from throttler.dispatcher import ThrottlerRun
from throttler.invoker import Invoker, LambdaInvoker
from throttler.queue import JobQueue, SqsJobQueue
from throttler.settings import Settings
from throttler.store import DynamoStateStore
from throttler.tasks import default_registry
from throttler.tasks import http as _http  # noqa: F401 - registers the built-in http task
from throttler.worker import WorkerConfig, WorkerService


@dataclass
class Wiring:
    """Overrides for the local stack and tests: an in-process invoker, a virtual clock, moto clients."""

    clock: Clock | None = None
    get_client: Callable[[str], Any] | None = None
    invoker_factory: Callable[[Settings], Invoker] | None = None
    session: requests.Session | None = None
    executor_factory: Callable[[int], Any] | None = None


_wiring = Wiring()
_worker_cache: dict[Settings, WorkerService] = {}


def configure(wiring: Wiring | None = None) -> None:
    """Replace the wiring (None restores AWS defaults) and forget cached services."""
    global _wiring
    _wiring = wiring or Wiring()
    _worker_cache.clear()


def wiring() -> Wiring:
    return _wiring


BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=70)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@functools.cache
def client(service: str) -> Any:
    return boto3.session.Session().client(service, region_name=region(), config=BOTO_CONFIG)  # type: ignore[call-overload]


def load_tasks(settings: Settings) -> frozenset[str]:
    default_registry.load_module(settings.tasks_module)
    return default_registry.names


def secret_headers_getter(settings: Settings) -> Callable[[], dict[str, str]]:
    """Headers whose values live in SSM Parameter Store (SecureString), cached for 5 minutes."""
    if not settings.secret_headers:
        return dict

    def fetch() -> dict[str, str]:
        from aws_lambda_powertools.utilities import parameters

        return {
            header: str(parameters.get_parameter(name, decrypt=True, max_age=300))
            for header, name in settings.secret_headers
        }

    return fetch


def _clients(get_client: Callable[[str], Any] | None) -> Callable[[str], Any]:
    return get_client or _wiring.get_client or client


def build_store(settings: Settings, get_client: Callable[[str], Any] | None = None) -> DynamoStateStore:
    return DynamoStateStore(_clients(get_client)("dynamodb"), settings.state_table)


def build_queue(settings: Settings, get_client: Callable[[str], Any] | None = None) -> JobQueue:
    return SqsJobQueue(_clients(get_client)("sqs"), settings.jobs_queue_url, settings.dlq_url)


def worker_service(settings: Settings) -> WorkerService:
    """The worker handler's service, built on first use and kept for warm invocations."""
    if settings not in _worker_cache:
        _worker_cache[settings] = build_worker(settings)
    return _worker_cache[settings]


def build_worker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    get_client: Callable[[str], Any] | None = None,
    session: requests.Session | None = None,
    executor_factory: Callable[[int], Any] | None = None,
) -> WorkerService:
    load_tasks(settings)
    return WorkerService(
        config=WorkerConfig(settings.allowed_hosts, settings.max_message_bytes, settings.done_ttl_s),
        store=build_store(settings, get_client),
        clock=clock or _wiring.clock or SystemClock(),
        registry=default_registry,
        session=session or _wiring.session,
        secret_headers=secret_headers_getter(settings),
        executor_factory=executor_factory or _wiring.executor_factory,
    )


def build_run(
    settings: Settings,
    *,
    invoker: Invoker | None = None,
    clock: Clock | None = None,
    get_client: Callable[[str], Any] | None = None,
    owner: str | None = None,
) -> ThrottlerRun:
    if invoker is None:
        factory = _wiring.invoker_factory
        invoker = factory(settings) if factory else LambdaInvoker(_clients(get_client)("lambda"), settings.worker_function)
    return ThrottlerRun(
        settings=settings,
        store=build_store(settings, get_client),
        queue=build_queue(settings, get_client),
        invoker=invoker,
        clock=clock or _wiring.clock or SystemClock(),
        known_tasks=load_tasks(settings),
        owner=owner,
    )
