"""End to end: the local stack (moto's server, the scheduled throttler, the in-process worker) on wall-clock time,
with real HTTP servers on loopback. Helpers shared by the tests of this folder."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def eventually(condition: Callable[[], bool], within_s: float = 30.0, every_s: float = 0.05) -> bool:
    """Wait for an outcome of the running stack (polling, with a deadline)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(every_s)
    return condition()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def plain_client(service: str, endpoint: str) -> Any:
    """A boto3 client as any producer would build one: nothing from this project."""
    import boto3

    return boto3.session.Session().client(service, endpoint_url=endpoint, region_name="us-east-1",  # type: ignore[call-overload]
                                          aws_access_key_id="testing", aws_secret_access_key="testing")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def send_raw(sqs: Any, queue_url: str, body: dict[str, Any] | str, group: str, job_id: str) -> None:
    """Put a message on the queue as anyone allowed to send may: no validation at the source."""
    text = body if isinstance(body, str) else json.dumps(body)
    sqs.send_message(QueueUrl=queue_url, MessageBody=text, MessageGroupId=group, MessageDeduplicationId=job_id)
