"""One session per batch (SPEC "Security of a job"): no cookie travels from one job to another, nothing comes from
the environment (proxies, .netrc credentials), the pool matches the batch's parallelism, urllib3 retries nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.http_servers import LocalApi
from throttler.core.clock import SystemClock
from throttler.tasks import ValidationContext
from throttler.tasks.http import DeadlineAdapter, http_task, new_session
from throttler.tasks.registry import TaskContext

CHECKS = ValidationContext.build(["http://127.0.0.1:*"], "local")


def run(session, url: str, job_id: str) -> None:  # type: ignore[no-untyped-def]
    now = SystemClock().now()
    http_task({"method": "GET", "url": url}, TaskContext(job_id, "g", SystemClock(), session, CHECKS, now + 1, now + 10))


def test_no_cookie_is_carried_from_one_job_to_the_next_in_one_session() -> None:
    with LocalApi() as api:
        session = new_session(2)
        run(session, f"{api.url}/set-cookie", "job-1")
        run(session, f"{api.url}/ok", "job-2")
        session.cookies.set("planted", "by-someone-else")  # nothing can even be put in the jar
        run(session, f"{api.url}/ok", "job-3")
        session.close()
    assert api.seen[0].path == "/set-cookie"
    assert api.seen[1].all("Cookie") == [] and api.seen[2].all("Cookie") == []
    assert list(session.cookies) == []


def test_nothing_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login stolen password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there: a proxied call would fail
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with LocalApi() as api:
        session = new_session(1)
        run(session, f"{api.url}/ok", "job-1")
        session.close()
    assert api.seen[0].all("Authorization") == [] and api.seen[0].path == "/ok"


def test_the_pool_is_sized_to_the_batch_and_urllib3_retries_nothing() -> None:
    session = new_session(16)
    adapter = session.get_adapter("https://api.example.com/")
    assert isinstance(adapter, DeadlineAdapter) and session.get_adapter("http://127.0.0.1/") is adapter
    assert adapter._pool_maxsize == 16  # type: ignore[attr-defined]
    assert adapter.max_retries.total == 0 and not session.trust_env
    session.close()
