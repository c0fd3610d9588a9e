"""Fixtures for the dashboard: the CLI tests' emulated stage (moto's server on 127.0.0.1 with stage `local`
provisioned from serverless.yml, emptied before each test), a dashboard served against it, and, for the browser
test, a real throttler draining that stage into a fake API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cli.conftest import Cli, Emulator, module_stack, run  # noqa: F401 - fixtures shared with the CLI tests
from throttler_tools.cli.base import StageAws
from throttler_tools.dashboard import Dashboard, DashboardServer
from throttler_tools.dashboard.server import TOKEN_HEADER


@dataclass
class Served:
    """A dashboard server on 127.0.0.1 and a small HTTP client for it."""

    server: DashboardServer
    cli: Cli

    @property
    def board(self) -> Dashboard:
        return self.server.dashboard

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return self._call(urllib.request.Request(self.server.url.rstrip("/") + path, headers=headers or {}))

    def state(self) -> dict[str, Any]:
        status, _, body = self.get("/api/state")
        assert status == 200
        return dict(json.loads(body))

    def post(self, path: str, data: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        sent = {"Content-Type": "application/json", TOKEN_HEADER: self.server.token, **(headers or {})}
        request = urllib.request.Request(self.server.url.rstrip("/") + path, data=json.dumps(data).encode(),
                                         headers=sent, method="POST")
        status, _, body = self._call(request)
        return status, json.loads(body)

    @staticmethod
    def _call(request: urllib.request.Request) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()


@pytest.fixture
def served(run: Cli) -> Iterator[Served]:  # noqa: F811 - the fixture imported above
    """A dashboard of stage `local` on the emulator (which `run` has just emptied and provisioned)."""
    board = Dashboard(StageAws("local"), min_refresh_s=0.0)
    with DashboardServer(board, "127.0.0.1", 0) as server:
        yield Served(server, run)
