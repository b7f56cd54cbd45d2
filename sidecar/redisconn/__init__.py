"""Connections to Redis: clients built from ``redis.url`` (single, Sentinel, Cluster),
error translation and durability, the hot path's auto-pipeline, following the master
through a failover, and the embedded Redis for single-host setups.
"""

__all__ = ["autopipeline", "client", "embedded", "master_watch"]
