"""A stand-in for the CallCov backend used by the walkthrough, docker-compose and the
tests: it echoes what it received. Not part of the request path.
"""

__all__ = ["upstream"]
