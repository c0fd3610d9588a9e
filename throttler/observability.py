"""The one Powertools logger, metrics and tracer the handlers share."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

NAMESPACE = "Throttler"

logger = Logger(service="throttler", log_uncaught_exceptions=True)
metrics = Metrics(namespace=NAMESPACE, service="throttler")
tracer = Tracer(service="throttler", disabled=os.environ.get("POWERTOOLS_TRACE_DISABLED", "true") == "true")
