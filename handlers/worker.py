"""Lambda entry point of the worker: decorators and one call into the library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from throttler.composition import Composition
from throttler.observability import composed_handler, remaining_s


def make_handler(compose: Callable[[], Composition]) -> Callable[[Any, Any], dict[str, Any]]:
    """The handler for a composition (built on the first invocation, kept while the container is warm)."""
    return composed_handler(compose, lambda c, event, context: c.worker().run_batch(event, remaining_s(context)))


handler = make_handler(Composition.from_env)
