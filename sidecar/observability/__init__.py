"""What an operator sees: the per-request record, the JSON access log, structured logs
with their redaction, and the Prometheus metrics.
"""

__all__ = ["accesslog", "logs", "metrics", "record"]
