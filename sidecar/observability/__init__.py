"""What an operator sees: the per-request record, the JSON access log, structured logs
with their redaction, the Prometheus metrics, and OpenTelemetry traces (spans.py is what
the request path sees of them; tracing.py, loaded only when enabled, makes them).
"""

__all__ = ["accesslog", "logs", "metrics", "record", "spans", "tracing"]
