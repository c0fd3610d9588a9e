"""Lambda entry point of the worker: decorators and one call into the library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from throttler.composition import Composition
from throttler.observability import instrumented, set_stage_dimension


def make_handler(compose: Callable[[], Composition]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The handler for a composition (built on the first invocation, kept while the container is warm)."""
    built: list[Composition] = []

    @instrumented
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if not built:
            built.append(compose())
        set_stage_dimension(built[0].settings.stage)
        remaining = context.get_remaining_time_in_millis() / 1000 if hasattr(context, "get_remaining_time_in_millis") else None
        return built[0].worker().run_batch(event, remaining)

    return handler


handler = make_handler(Composition.from_env)
