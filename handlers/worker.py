"""Lambda entry point of the worker: decorators and one call into the library."""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from throttler import composition
from throttler.observability import logger, tracer
from throttler.settings import Settings
from throttler.worker import WorkerService


@functools.cache
def _service() -> WorkerService:
    # Built on first use (not at import) and kept for warm invocations: clients and HTTP pool reused.
    return composition.build_worker(Settings.from_env())


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return _service().run_batch(event)
