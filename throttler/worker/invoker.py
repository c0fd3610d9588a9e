"""The invoker seam: how the throttler hands a batch to a worker.

`LambdaInvoker` calls the worker function synchronously, one thread per batch in flight, with botocore's
retries OFF: a retry after a dropped connection or a read timeout would deliver the same batch twice
(the worker's claim stops the second delivery anyway). `InProcessInvoker` calls a worker function
directly (the local stack), on threads; both round-trip the request and response through JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from throttler.core.protocol import BatchRequest, BatchResponse

# Errors Lambda returns before the function ran: nothing was called.
NOT_RUN_CODES = {
    "TooManyRequestsException",
    "ServiceException",
    "ResourceNotReadyException",
    "ResourceNotFoundException",
    "EC2ThrottledException",
    "RequestTooLargeException",
    "InvalidRequestContentException",
    "AccessDeniedException",
    "ResourceConflictException",
    "KMSAccessDeniedException",
    "InvalidRuntimeException",
    "UnsupportedMediaTypeException",
}


class WorkerNotRun(Exception):
    """The worker never started (throttled or refused invoke): no call was made."""


class WorkerFailed(Exception):
    """The worker started but did not return results (crash, timeout, lost response): calls may have been made."""


class WorkerLost(WorkerFailed):
    """The answer was lost on the way (a dropped connection, a read timeout, a Lambda service error): the worker
    may still be running its batch, so its jobs stay with it until its record is final or its timeout passed."""


class Invoker(Protocol):
    def submit(self, request: BatchRequest) -> Future[BatchResponse]:
        """Start a batch; the future yields the worker's response or raises WorkerNotRun/WorkerFailed."""

    def shutdown(self) -> None:
        """Stop accepting batches (waits for none)."""


class LambdaInvoker:
    def __init__(self, client: Any, function_name: str, max_in_flight: int = 16):
        self._lambda = client
        self._function = function_name
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="invoke")

    def submit(self, request: BatchRequest) -> Future[BatchResponse]:
        return self._pool.submit(self._invoke, request)

    def _invoke(self, request: BatchRequest) -> BatchResponse:
        try:
            response = self._lambda.invoke(
                FunctionName=self._function, InvocationType="RequestResponse", Payload=request.to_json()
            )
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in NOT_RUN_CODES:
                raise WorkerNotRun(code) from exc
            raise WorkerLost(code) from exc
        except BotoCoreError as exc:  # a dropped connection or a read timeout: it may be running still
            raise WorkerLost(type(exc).__name__) from exc
        payload = response["Payload"].read()
        if response.get("FunctionError"):
            raise WorkerFailed(f"worker error: {response['FunctionError']}")
        return BatchResponse.from_dict(json.loads(payload))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


class InProcessInvoker:
    """`target` is the worker: a function from the request's JSON data to the response's (the handler)."""

    def __init__(self, target: Callable[[dict[str, Any]], dict[str, Any]], max_in_flight: int = 16):
        self._target = target
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="worker")

    def submit(self, request: BatchRequest) -> Future[BatchResponse]:
        return self._pool.submit(self._invoke, request)

    def _invoke(self, request: BatchRequest) -> BatchResponse:
        try:
            response = self._target(json.loads(request.to_json()))
        except (WorkerNotRun, WorkerFailed):
            raise
        except Exception as exc:
            raise WorkerFailed(f"worker raised {type(exc).__name__}") from exc
        return BatchResponse.from_dict(json.loads(json.dumps(response)))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
