"""Which stage a dashboard shows: the CLI's `StageAws`, or a stage reached through clients someone else built
(the local stack's emulator clients)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from throttler_tools.cli.base import StageAws


class ClientsStage(StageAws):
    """A stage whose AWS clients come from `client(service)` (e.g. the local stack's, for its emulator)."""

    def __init__(self, stage: str, client: Callable[[str], Any]):
        super().__init__(stage)
        self._client_of = client

    def client(self, service: str) -> Any:
        return self._client_of(service)


def stage_source(stage: Any, stage_name: str = "local") -> Any:
    """`stage` as the dashboard reads it: a StageAws as it is; an object with a `client(service)` method, or such
    a function, wrapped (its clients reach the stage `stage_name`)."""
    if all(hasattr(stage, name) for name in ("store", "queue", "names", "defaults")):
        return stage
    client = getattr(stage, "client", None)
    if callable(client):
        return ClientsStage(stage_name, client)
    if callable(stage):
        return ClientsStage(stage_name, stage)
    raise TypeError(f"a dashboard needs a StageAws or a client(service) function, not {type(stage).__name__}")
