"""The handlers' library end to end under moto: each test names the SPEC promise it proves."""

from __future__ import annotations

from tests.conftest import Stage, http_job


def test_ordering_kept_across_interleaved_groups_with_a_failure_in_one(stage: Stage) -> None:
    jobs = []
    for seq in range(6):
        for group in ("a", "b", "c"):
            path = "/status/400" if (group == "b" and seq == 2) else "/ok"
            jobs.append((http_job(path, group, seq), group, f"{group}-{seq}"))
    stage.enqueue(jobs)
    stage.drain()
    assert stage.api.order_violations == 0
    for group in ("a", "b", "c"):
        seqs = [c.seq for c in stage.api.calls if c.group == group]
        assert seqs == list(range(6)), (group, seqs)
    dlq = stage.dlq_messages()
    assert [m["MessageAttributes"]["error_reason"]["StringValue"] for m in dlq] == ["http 400"]
    assert stage.depth() == 0


def test_nothing_lost_every_job_succeeds_once(stage: Stage) -> None:
    stage.enqueue([(http_job("/ok", f"g{i % 7}", i), f"g{i % 7}", f"job-{i}") for i in range(120)])
    stage.drain()
    assert stage.depth() == 0
    assert stage.dlq_messages() == []
    assert sorted(stage.api.successes_by_key()) == sorted(f"job-{i}" for i in range(120))
    assert set(stage.api.successes_by_key().values()) == {1}
    assert stage.api.violations == 0
