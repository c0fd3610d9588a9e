"""The worker: a batch's state machine, its production driver, its calls, and how batches reach it."""
