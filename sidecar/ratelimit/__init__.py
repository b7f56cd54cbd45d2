"""Per-user rate limits shared by every instance through Redis: the rules compiled from
config and the GCRA limiter that checks them.
"""

__all__ = ["limiter", "rules"]
