"""The simulation's regression set (throttler_tools/sim/regression.py): each seed lives through its day
and every promise is checked; a failure prints the seed's one-line replay command."""

from __future__ import annotations

import pytest

from throttler_tools.sim.regression import REGRESSION, Case
from throttler_tools.sim.runner import run_seed


@pytest.mark.parametrize("case", REGRESSION, ids=lambda c: f"seed{c.seed}-{c.profile}")
def test_regression_seed_keeps_every_promise(case: Case) -> None:
    result = run_seed(case.seed, case.days, case.jobs, None, case.scale)
    assert result.profile == case.profile, "the seed draws another scenario now: pick the seed again"
    assert result.ok, "\n".join([case.why, *result.violations, f"replay: {result.replay}"])

