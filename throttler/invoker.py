"""The invoker seam: how the throttler hands a batch to a worker.

`LambdaInvoker` calls the worker function synchronously (one thread per batch in flight);
`InProcessInvoker` calls the worker library directly: inline in virtual time (tests, benchmark) or
on threads (local stack). Both round-trip the request through JSON, as Lambda would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from botocore.exceptions import ClientError

from throttler.core.errors import RetryableTaskError


class WorkerNotRun(Exception):
    """The worker never started (throttled or refused invoke): no call was made."""


class WorkerFailed(Exception):
    """The worker started but did not return results (crash, timeout): calls may have been made."""


class Invoker(Protocol):
    def submit(self, request: dict[str, Any]) -> Future[dict[str, Any]]:
        """Start a batch; the future yields the worker's response or raises WorkerNotRun/WorkerFailed."""

    def shutdown(self) -> None:
        """Stop accepting batches (waits for none)."""


class LambdaInvoker:
    def __init__(self, client: Any, function_name: str, max_in_flight: int = 8):
        self._lambda = client
        self._function = function_name
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="invoke")

    def submit(self, request: dict[str, Any]) -> Future[dict[str, Any]]:
        return self._pool.submit(self._invoke, request)

    def _invoke(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._lambda.invoke(
                FunctionName=self._function, InvocationType="RequestResponse", Payload=json.dumps(request).encode()
            )
        except ClientError as exc:
            raise WorkerNotRun(exc.response["Error"]["Code"]) from exc
        payload = response["Payload"].read()
        if response.get("FunctionError"):
            raise WorkerFailed(f"worker error: {response['FunctionError']}")
        result: dict[str, Any] = json.loads(payload)
        return result

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


class InProcessInvoker:
    """`target` is the worker: `WorkerService.run_batch`, or the worker handler with a context."""

    def __init__(self, target: Callable[[dict[str, Any]], dict[str, Any]], threaded: bool = False, max_in_flight: int = 8):
        self._target = target
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="worker") if threaded else None

    def submit(self, request: dict[str, Any]) -> Future[dict[str, Any]]:
        if self._pool is not None:
            return self._pool.submit(self._invoke, request)
        future: Future[dict[str, Any]] = Future()
        try:
            future.set_result(self._invoke(request))
        except Exception as exc:  # noqa: BLE001 - surfaced through the future like the Lambda path
            future.set_exception(exc)
        return future

    def _invoke(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._target(json.loads(json.dumps(request)))
        except (WorkerNotRun, WorkerFailed):
            raise
        except RetryableTaskError as exc:  # pragma: no cover - tasks' errors are results, not raises
            raise WorkerFailed(str(exc)) from exc
        except Exception as exc:
            raise WorkerFailed(f"worker raised {type(exc).__name__}") from exc
        result: dict[str, Any] = json.loads(json.dumps(response))
        return result

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
