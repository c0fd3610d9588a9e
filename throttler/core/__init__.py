"""The runtime core: time, errors, outcomes, quotas, pacing and the job envelope (pure, no AWS)."""
