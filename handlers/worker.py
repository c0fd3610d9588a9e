"""Lambda entry point of the worker: decorators and one call into the library."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from throttler import composition
from throttler.observability import instrumented
from throttler.settings import Settings


@instrumented
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return composition.worker_service(Settings.from_env()).run_batch(event)
