"""A local moto server on 127.0.0.1 with one stage's queues and table, created from serverless.yml."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import requests
from moto.server import ThreadedMotoServer

from throttler_tools.provision import provision

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass(frozen=True)
class Emulated:
    endpoint: str
    function_env: dict[str, str]  # the functions' environment (serverless.yml), resolved against what was created

    @property
    def aws_env(self) -> dict[str, str]:
        """What a process needs to reach the emulator as if it were AWS."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, **CREDENTIALS}


@contextlib.contextmanager
def emulated_stage(stage: str) -> Iterator[Emulated]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto's state lives in this process, shared by every server and mock in it: start clean, leave clean.
    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    try:
        clients = {
            name: boto3.client(name, region_name=REGION, endpoint_url=endpoint,  # type: ignore[call-overload]
                               aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
            for name in ("sqs", "dynamodb")
        }
        yield Emulated(endpoint, provision(clients["sqs"], clients["dynamodb"], stage))
    finally:
        with contextlib.suppress(requests.RequestException):
            requests.post(f"{endpoint}/moto-api/reset", timeout=10)
        server.stop()
