"""Dispatcher defects the benchmark found: wasted requests, and a run that never reached its deadline."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Stage, http_job

# Both runs below used to spin forever at their deadline: fail instead of hanging.
pytestmark = pytest.mark.timeout(60)


def test_run_end_releases_held_messages_of_many_groups_ten_per_request(stage: Stage) -> None:
    # Given a backlog spread over many groups, and a run too short to dispatch it all
    stage.enqueue([(http_job("/ok", f"g{i % 30}", i // 30), f"g{i % 30}", f"job-{i}") for i in range(120)])
    released: list[int] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        released.append(len(params["Entries"]))

    stage.sqs.meta.events.register("provide-client-params.sqs.ChangeMessageVisibilityBatch", count)

    # When the run ends holding messages of several groups
    summary = stage.run(seconds=2.0)

    # Then they go back to the queue in full batches of ten, not one request per group
    held_at_end = summary.received - summary.dispatched
    assert held_at_end > 10
    assert sum(released) == held_at_end
    assert len(released) == -(-held_at_end // 10)
    # And every job still succeeds once, in order
    stage.drain()
    assert stage.depth() == 0
    assert stage.api.order_violations == 0
    assert set(stage.api.successes_by_key().values()) == {1}


def test_run_returns_at_its_deadline_when_no_slot_fits_before_it(stage: Stage) -> None:
    # Given held messages and a deadline closer than one batch lead: the next slot cannot go out in this run
    stage.enqueue([(http_job("/ok", f"g{i % 30}", i // 30), f"g{i % 30}", f"job-{i}") for i in range(120)])
    deadline = stage.clock.now() + 2.0

    # When the run gets there, it neither spins nor dispatches past its deadline (virtual time only moves
    # when the loop waits, so planning again at once would never return)
    summary = stage.make_run().run(deadline)

    # Then it ends, having dispatched only within its time, and nothing is lost
    assert summary.dispatched > 0
    assert max(call.at for call in stage.api.calls) <= deadline
    stage.drain()
    assert stage.depth() == 0
    assert set(stage.api.successes_by_key().values()) == {1}
