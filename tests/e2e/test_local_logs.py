"""The local stack's log lines (issue 15 #6): each names the function that wrote it, whichever handler ran last
in this one process, in one short line for a person or as JSON for a machine."""

from __future__ import annotations

import io
import json
import logging
import threading

from throttler_tools.locallogs import invocation, local_logs, summary_fields

NAMES = {"throttler": "throttler-local-throttler", "worker": "throttler-local-worker", "local": "local-stack",
         "echo-api": "echo-api"}


def log_from(thread_name: str, logger: str, message: str, **extra: object) -> None:
    def emit() -> None:
        logging.getLogger(logger).warning(message, extra=extra)

    thread = threading.Thread(target=emit, name=thread_name)
    thread.start()
    thread.join()


def test_each_json_line_names_its_own_function_even_after_the_worker_ran_in_this_process() -> None:
    stream = io.StringIO()
    with local_logs(NAMES, json_lines=True, stream=stream):
        with invocation("worker", NAMES["worker"], "req-w", "arn:w"):
            logging.getLogger("throttler.worker.service").warning("batch already claimed", extra={"batch": "b1"})
        log_from("call_0", "throttler.worker.calls", "task raised")  # a worker's call thread: no invocation mark
        with invocation("throttler", NAMES["throttler"], "req-t", "arn:t"):
            logging.getLogger("throttler.dispatch.run").warning("lease lost")
        log_from("echo", "throttler_tools.echoapi", "request received", method="POST")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["message"], r["function_name"]) for r in records] == [
        ("batch already claimed", "throttler-local-worker"),
        ("task raised", "throttler-local-worker"),
        ("lease lost", "throttler-local-throttler"),
        ("request received", "echo-api"),
    ]
    assert records[0]["function_request_id"] == "req-w" and records[2]["function_request_id"] == "req-t"


def test_the_human_format_is_one_short_line_with_the_fields_that_matter() -> None:
    stream = io.StringIO()
    summary = {"end_reason": "successor", "received": 3, "dispatched": 3, "succeeded": 3, "retried": 0,
               "handed_over_to": "abc", "started_at": 100.0, "ended_at": 110.25, "use": {"second": {"used": 3}}}
    with local_logs(NAMES, stream=stream), invocation("throttler", NAMES["throttler"], "r", "a"):
        logging.getLogger("throttler.dispatch.run").warning("run finished", extra={"summary": summary})
        logging.getLogger("throttler.dispatch.outbox").warning("job dead-lettered", extra={"job_id": "j1", "reason": "x" * 200})
    first, second = stream.getvalue().splitlines()
    assert first.endswith("throttler WARNING run finished  end=successor received=3 dispatched=3 succeeded=3 handed over 10.2 s")
    assert " job dead-lettered  job_id=j1 reason=" in second and second.endswith("…") and len(second) < 160
    assert "{" not in first


def test_the_handlers_logger_is_put_back_as_it_was() -> None:
    from throttler.observability import logger

    handler = logger.registered_handler
    formatter, level, filters = handler.formatter, logger.log_level, list(handler.filters)
    with local_logs(NAMES, stream=io.StringIO(), level="ERROR"):
        assert logger.log_level == logging.ERROR
    assert (handler.formatter, logger.log_level, handler.filters) == (formatter, level, filters)
    assert summary_fields({"no_config": True}) == ["no quota configuration: nothing dispatched"]
