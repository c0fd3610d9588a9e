"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by `make browser`) driven by
the `playwright` wheel, against a dashboard served on an emulated stage that a real throttler is draining into a
fake API. The page loads; a tier's count rises as jobs flow; a bad value shows the CLI's error and writes
nothing; a pause from the page stops dispatch (the state table shows it, and the API gets no call after it);
resume starts it again. Screenshots go to .cache/dashboard/ (DASHBOARD_SCREENSHOT=docs/dashboard.png refreshes
the one in the docs)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Cli, one_line_error
from tests.dashboard.pipeline import Pipeline
from throttler.queue import SqsJobQueue
from throttler_tools.cli.base import StageAws
from throttler_tools.dashboard import Dashboard, DashboardServer
from throttler_tools.fakeapi import FakeApi

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# As the machine's own probe starts it: no sandbox as root, and no background connections to a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
SHOTS = ROOT / ".cache" / "dashboard"
JOBS = 48  # more than the test lets flow (about 25 calls)
QUOTAS = {"second": 4, "minute": 150, "per_key": {"minute": 90}, "keys": {"tenant-a": {"weight": 2}}}

pytestmark = pytest.mark.slow


def _browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright wheel is not installed: `make install` installs requirements-dev.txt")
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.skip("Debian's chromium is not installed and this machine could not install it "
                    "(`make browser` runs apt-get install chromium, which needs root)")
    return sync_playwright


def eventually(condition: Callable[[], Any], within_s: float = 20.0, every_s: float = 0.1) -> Any:
    end = time.monotonic() + within_s
    while True:
        found = condition()
        if found or time.monotonic() > end:
            return found
        time.sleep(every_s)


@pytest.fixture
def page(run: Cli) -> Iterator[Any]:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                             args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
            yield context.new_page()
        finally:
            browser.close()


def enqueue(run: Cli, jobs: int = JOBS) -> None:
    """`jobs` calls in 6 groups over two keys, a message that is not JSON (dead-lettered at once, with why) and a
    job the API answers 404 (a permanent failure). Kept small: moto's SQS costs O(depth) per message sent."""
    queue = SqsJobQueue(run.sqs, run.jobs_url, run.dlq_url)
    batch = []
    for i in range(jobs):
        group, key = f"customer-{i % 6}", ("tenant-a" if i % 3 else "tenant-b")
        body = {"task": "http", "key": key,
                "payload": {"method": "POST", "url": f"http://127.0.0.1:9/ok?group={group}&seq={i}", "json": {"n": i}}}
        batch.append((json.dumps(body), group, f"job-{i:04d}"))
    batch.insert(3, ("{not json", "customer-bad", "poison-1"))
    batch.insert(7, (json.dumps({"task": "http", "payload": {"method": "GET", "url": "http://127.0.0.1:9/status/404"}}),
                     "customer-404", "gone-1"))
    queue.send(batch)


def used(page: Any, tier: str) -> int:
    value = page.get_attribute(f'[data-tier="{tier}"]', "data-used")
    return int(value) if value is not None else -1


def shoot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_the_dashboard_in_a_browser_follows_a_running_throttler_and_pauses_it(run: Cli, page: Any) -> None:
    started = time.monotonic()
    run.store.put_quotas(QUOTAS)
    enqueue(run)
    api = FakeApi(tiers=[(1, 4), (60, 150)])
    board = Dashboard(StageAws("local"), min_refresh_s=0.3)
    pipeline = Pipeline(run.stack.endpoint, run.stack.env, api, run_s=3.0)
    with DashboardServer(board, "127.0.0.1", 0) as server:
        pipeline.start()
        try:
            # Given the page, when jobs flow, then the minute tier's window fills as calls are reserved.
            page.goto(server.url)
            page.wait_for_selector('[data-tier="minute"]')
            assert page.title() == "throttler · local"
            assert eventually(lambda: used(page, "minute") > 0), "no call was reserved"
            first = used(page, "minute")
            assert eventually(lambda: used(page, "minute") >= first + 6), (first, used(page, "minute"))
            # Between the local pipeline's runs of 3 s no lease may be held for a moment (the pill then says NOT
            # PAUSED): looked at once, it failed a fresh clone on a busy machine.
            assert eventually(lambda: page.text_content("#state-pill") == "DISPATCHING"), page.text_content("#state-pill")
            assert eventually(lambda: page.query_selector('#dead-letters tbody tr td.reason'), 30), "no dead letter shown"
            assert eventually(lambda: page.query_selector('#keys tbody tr[data-key="tenant-a"]'), 30), "no key shown"
            shoot(page, "1-flowing")

            # A bad value shows the CLI's own error, and nothing is written.
            cli_error = one_line_error(run("quota", "set", "second=fast"))
            page.select_option("#quota-scope", "stage")
            page.fill("#quota-assignments", "second=fast")
            page.click("#quota-button")
            page.wait_for_selector("#quota-message.error")
            assert cli_error == "Error: " + page.text_content("#quota-message")
            assert run.store.read_control().quotas == QUOTAS

            # A pause from the page: the state table shows it; the run that was dispatching stops within 5 s, and
            # a run that starts after it dispatches nothing (it stays to its deadline, watching for a resume).
            used_before_pause = used(page, "minute")
            page.fill("#pause-duration", "10m")
            page.click("#pause-button")
            page.wait_for_selector("#pause-message.ok")
            control = run.store.read_control()
            assert control.pause_reason == "operator" and control.pause_until is not None
            paused_at = control.pause_until - 600  # the dashboard's clock when it wrote the pause
            assert eventually(lambda: page.text_content("#state-pill") == "PAUSED", 5)
            later = lambda: [s for s in pipeline.summaries if s.started_at > paused_at]  # noqa: E731
            assert eventually(lambda: later(), 20), "no run started after the pause ended"
            assert (later()[0].dispatched, bool(later()[0].paused_until)) == (0, True)
            assert [round(c.at - paused_at, 2) for c in api.calls if c.at > paused_at + 5] == []
            assert [c for c in api.calls if c.at >= later()[0].started_at] == []
            assert run.depth() > 0  # the jobs wait; none is lost
            shoot(page, "2-paused")

            # Resume from the page: dispatch starts again within 5 s, and the tier counts rise again.
            resumed_at, before = time.time(), len(api.calls)
            page.click("#resume-button")
            page.wait_for_selector("#pause-message.ok")
            assert "resumed: lifted the operator's pause; dispatch restarts" in page.text_content("#pause-message")
            assert eventually(lambda: len(api.calls) > before, 15), "no call after resume"
            assert api.calls[before].at - resumed_at < 5
            assert eventually(lambda: page.text_content("#state-pill") == "DISPATCHING", 10)
            assert eventually(lambda: used(page, "minute") >= used_before_pause + 6, 15), "the minute tier did not rise"
            final = shoot(page, "dashboard")
        finally:
            pipeline.stop()
    assert pipeline.failures == [] and api.violations == 0 and api.order_violations == 0
    target = os.environ.get("DASHBOARD_SCREENSHOT")
    if target:
        shutil.copyfile(final, ROOT / target)
    print(f"\nscreenshots in {SHOTS} ({time.monotonic() - started:.1f} s)")


def test_the_page_shows_learned_limits_and_the_apis_word_and_what_dispatch_follows(run: Cli, page: Any) -> None:
    from throttler.core.pacing import ApiBudget, ApiPolicy, ApiState, Learned, Meter

    now = time.time()
    run.store.put_quotas({"second": "auto:50", "minute": 120})
    meter = Meter()
    history = [[now - 90, 25, "raised"], [now - 30, 17, "429"]]
    meter.learned["second"] = Learned(17.6, bad=25, changed_at=now - 30, history=history)
    meter.api = ApiState([ApiPolicy(100, 60.0, now + 100), ApiPolicy(7, 10.0, now + 100)], ApiBudget(40, now + 30, now - 1, 2),
                         now - 1, "RateLimit-Policy q=100 w=60")
    assert run.store.commit_usage(0, meter.to_json(), {}, {}, [])
    with DashboardServer(Dashboard(StageAws("local"), min_refresh_s=0.0), "127.0.0.1", 0) as server:
        page.goto(server.url)
        page.wait_for_selector('[data-tier="api:10s"]')
        assert page.get_attribute('[data-tier="second"]', "data-limit") == "17"
        assert page.text_content('[data-tier="second"] .extra') == "learned 17 (configured auto:50)"
        assert page.text_content('[data-tier="minute"] .extra').startswith("the API says 100 per 1 min, 38 calls left, resets in")
        assert page.text_content("#follows").startswith("paced by the API says 7 per 10 s")
        learned = page.text_content("#learned")
        assert "learned second: 25 (raised" in learned and "17 (429" in learned
        assert "the API said: RateLimit-Policy q=100 w=60" in learned
        assert page.text_content("#batches") == "0 batches sent and not settled"
        shoot(page, "learned-and-api")
