"""throttler: drain an SQS FIFO queue of API jobs as fast as the API's quotas allow, never faster."""

__version__ = "0.1.0"
