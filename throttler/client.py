"""Moved to `throttler.producer` (the public producer client); this alias keeps old imports working.

Delete it once nothing imports `throttler.client` (throttler_tools/demo.py did).
"""

from throttler.producer import JobBuilder, OutgoingJob, Producer, queue_url

__all__ = ["JobBuilder", "OutgoingJob", "Producer", "queue_url"]
