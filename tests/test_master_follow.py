"""After a switch, the Sentinel pool connects to the master ``+switch-master`` announced,
not to whatever a sentinel names (one that has not heard of the switch yet still names
the deposed master, which takes connections until it is demoted); once the pin is
over, Sentinel is asked again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sidecar.config.model import RedisConfig
from sidecar.redisconn.client import connect
from sidecar.redisconn.master_watch import new_master
from tests.harness import RedisProcess
from tests.redis_topology import SentinelSet


def test_the_new_master_is_read_from_the_switch_message() -> None:
    assert new_master("127.0.0.1 35819 127.0.0.1 41681") == ("127.0.0.1", 41681)
    assert new_master("10.0.0.5 6379 10.0.0.6 6380") == ("10.0.0.6", 6380)
    for malformed in ("", "127.0.0.1 35819", "a b c d e", "127.0.0.1 1 127.0.0.2 x"):
        assert new_master(malformed) is None, malformed


def test_an_announced_master_takes_the_connections_until_the_pin_is_over(
    tmp_path: Path,
) -> None:
    (tmp_path / "announced").mkdir()
    announced = RedisProcess(tmp_path / "announced")
    sentinel = SentinelSet(tmp_path / "sentinel", replicas=0, sentinels=1).start()
    try:
        announced.start()

        async def writes() -> None:
            client = connect(sentinel.url, RedisConfig())
            pool = client.connection_pool
            await client.set("where", "named by sentinel")
            pool.follow(("127.0.0.1", announced.port))  # type: ignore[attr-defined]
            await pool.disconnect(inuse_connections=False)  # MasterWatch's drop
            await client.set("where", "announced")
            pool.follow(("127.0.0.1", announced.port), seconds=0)  # type: ignore[attr-defined]
            await pool.disconnect(inuse_connections=False)
            await client.set("where", "asked again")
            await client.aclose()

        asyncio.run(writes())
        assert announced.client().get("where") == b"announced"
        assert sentinel.master().client().get("where") == b"asked again"
    finally:
        announced.stop()
        sentinel.stop()
