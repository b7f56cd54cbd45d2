"""A stand-in for the CallCov backend used by the walkthrough, docker-compose and the
tests: it echoes what it received, and signs a demo user in for the API Keys page. Not
part of the request path.
"""

__all__ = ["login", "upstream"]
