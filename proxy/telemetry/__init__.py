"""What the proxy tells operators: one JSON access line per request, and Prometheus metrics."""

from proxy.telemetry.accesslog import ACCESS_LOGGER, AccessLog, configure_logging
from proxy.telemetry.metrics import ProxyMetrics

__all__ = ["ACCESS_LOGGER", "AccessLog", "ProxyMetrics", "configure_logging"]
