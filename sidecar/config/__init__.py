"""The configuration: one YAML file with ``${VAR}`` interpolation, validated all at once so
that every problem is reported with its YAML path before any port is bound.
"""

__all__ = ["checks", "console", "interpolate", "loading", "model"]
