"""Shared fixtures: a stage in virtual time (throttler_tools/sim), on the in-memory twins or on moto.

`world` is the fast one (in-memory SQS model and state table); `moto_world` puts the same stage on
moto's SQS and DynamoDB (built from serverless.yml), with freezegun following the virtual clock, so the
AWS adapters run under the same scenarios.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Throttler")
os.environ.setdefault("POWERTOOLS_DEV", "false")

from throttler_tools.sim.world import START, Backends, World, WorldConfig, job_body

__all__ = ["START", "World", "WorldConfig", "job_body"]


@pytest.fixture
def make_world() -> Callable[..., World]:
    """A stage in virtual time on the in-memory twins: make_world(quotas={...}, api_tiers=[...], ...)."""

    def make(**config: Any) -> World:
        return World(WorldConfig(**config))

    return make


@pytest.fixture
def make_moto_world() -> Iterator[Callable[..., World]]:
    """The same, on moto's SQS and DynamoDB (freezegun follows the virtual clock)."""
    import boto3
    from freezegun import freeze_time
    from moto import mock_aws

    from throttler.queue import SqsJobQueue
    from throttler.store import DynamoStateStore, DynamoWorkerRecords
    from throttler_tools.moto_patches import patch_moto_fifo_order
    from throttler_tools.provision import provision

    patch_moto_fifo_order()
    with freeze_time("2026-03-02 09:00:00") as frozen, mock_aws():

        def backends(clock: Any, stage: str) -> Backends:
            sqs = boto3.client("sqs", region_name="us-east-1")
            dynamodb = boto3.client("dynamodb", region_name="us-east-1")
            env = provision(sqs, dynamodb, stage)
            table = env["STATE_TABLE"]
            return Backends(
                SqsJobQueue(sqs, env["JOBS_QUEUE_URL"], env["DLQ_URL"], clock),
                DynamoStateStore(dynamodb, table),
                DynamoWorkerRecords(dynamodb, table),
                env,
            )

        def make(**config: Any) -> World:
            return World(WorldConfig(**config), backends=backends, on_advance=lambda s: frozen.tick(s))

        yield make
