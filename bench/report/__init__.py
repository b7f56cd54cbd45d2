"""The bench's markdown report, rendered from a finished run: ``document`` assembles it
from the sections in ``throughput``, ``targets`` and ``experiments``."""

from bench.report.document import render

__all__ = ["render"]
