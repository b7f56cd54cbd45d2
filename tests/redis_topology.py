"""Real replicated Redis setups for tests and soaks: Sentinel (a master, replicas and
sentinels) and Cluster (masters, optionally each with a replica), every process a real
``redis-server`` on free loopback ports, started and stopped here.

Failovers are the real thing too: ``SENTINEL FAILOVER``, ``CLUSTER FAILOVER``, or a
master killed with SIGKILL.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import redis

from sidecar.redisconn.embedded import find_binary
from tests.harness import RedisProcess, free_port, wait_until

SERVICE = "callcov"
SLOTS = 16384


class SentinelProcess:
    def __init__(self, directory: Path, master_port: int, *, quorum: int, down_after_ms: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        self.process = subprocess.Popen(
            [find_binary(), str(conf), "--sentinel"], stdin=subprocess.DEVNULL
        )
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, retry=None)

    def master_port(self) -> int | None:
        try:
            address = self.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        except redis.RedisError:
            return None
        return int(address[1]) if address else None

    def replicas_known(self) -> int:
        try:
            return len(self.client.execute_command("SENTINEL", "REPLICAS", SERVICE))
        except redis.RedisError:
            return 0

    def stop(self) -> None:
        self.client.close()
        self.process.kill()
        self.process.wait()


class SentinelSet:
    """A master with ``replicas`` replicas, watched by ``sentinels`` sentinels (quorum:
    a majority). ``down_after_ms`` is how long a master may be silent before the
    sentinels fail it over (Redis's default is 30 s; tests want about 1 s)."""

    def __init__(
        self, base: Path, *, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 1000
    ) -> None:
        self.base = base
        self.servers: list[RedisProcess] = []
        self.sentinels: list[SentinelProcess] = []
        self._replicas = replicas
        self._sentinel_count = sentinels
        self._down_after_ms = down_after_ms

    def start(self) -> SentinelSet:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        master = RedisProcess(self._dir("redis0"))
        master.start()
        self.servers.append(master)
        for i in range(1, self._replicas + 1):
            replica = RedisProcess(
                self._dir(f"redis{i}"), args=("--replicaof", "127.0.0.1", str(master.port))
            )
            replica.start()
            self.servers.append(replica)
        wait_until(lambda: self._attached(master) == self._replicas, timeout=20)
        quorum = self._sentinel_count // 2 + 1
        for i in range(self._sentinel_count):
            self.sentinels.append(
                SentinelProcess(
                    self.base / f"sentinel{i}",
                    master.port,
                    quorum=quorum,
                    down_after_ms=self._down_after_ms,
                )
            )
        wait_until(self.settled, timeout=20)

    def _dir(self, name: str) -> Path:
        directory = self.base / name
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    @staticmethod
    def _attached(server: RedisProcess) -> int:
        try:
            return int(server.client().info("replication")["connected_slaves"])
        except redis.RedisError:
            return -1

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{nodes}/{SERVICE}"

    def master_port(self) -> int | None:
        """The master as the sentinels see it, once they all agree."""
        ports = {s.master_port() for s in self.sentinels}
        return ports.pop() if len(ports) == 1 else None

    def master(self) -> RedisProcess:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def settled(self) -> bool:
        """Every sentinel agrees on the master, which has every live replica attached,
        and every sentinel knows those replicas."""
        port = self.master_port()
        live = [s for s in self.servers if s.is_up()]
        if port is None or port not in {s.port for s in live}:
            return False
        if self._attached(self.master()) != len(live) - 1:
            return False
        return all(s.replicas_known() >= len(live) - 1 for s in self.sentinels)

    def failover(self) -> int:
        """A planned failover (``SENTINEL FAILOVER``); returns the old master's port."""
        old = self.master().port
        self.sentinels[0].client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        return old

    def kill_master(self) -> int:
        """A crash: the master gets SIGKILL. Returns its port."""
        master = self.master()
        master.stop()
        return master.port

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


def cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class ClusterNode:
    def __init__(self, directory: Path, *, node_timeout_ms: int = 15000) -> None:
        directory.mkdir(parents=True)
        self.port = cluster_port()
        args = [
            find_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / "nodes.conf"),
            "--cluster-node-timeout", str(node_timeout_ms),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        self._args = args
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, retry=None)
        try:
            wait_until(self.is_up, timeout=10)
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """Start again after ``stop``, same port and nodes.conf: it rejoins the cluster."""
        self.process = subprocess.Popen(self._args, stdin=subprocess.DEVNULL)
        wait_until(self.is_up, timeout=10)

    def is_up(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def info(self) -> str:
        info = self.client.execute_command("CLUSTER", "INFO")
        return info.decode() if isinstance(info, bytes) else str(info)

    def cluster_ok(self) -> bool:
        try:
            return "cluster_state:ok" in self.info()
        except redis.RedisError:
            return False

    def node_id(self) -> str:
        value = self.client.execute_command("CLUSTER", "MYID")
        return value.decode() if isinstance(value, bytes) else str(value)

    def role(self) -> str:
        try:
            reply = self.client.execute_command("ROLE")
        except redis.RedisError:
            return "down"
        role = reply[0]
        return role.decode() if isinstance(role, bytes) else str(role)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class ClusterSet:
    """``masters`` masters sharing the 16384 slots, formed with CLUSTER ADDSLOTS and MEET
    (no redis-cli needed), each with ``replicas`` replicas (CLUSTER REPLICATE)."""

    def __init__(
        self, base: Path, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 15000
    ) -> None:
        self.base = base
        self.masters: list[ClusterNode] = []
        self.replicas: list[ClusterNode] = []
        self._counts = (masters, replicas)
        self._timeout = node_timeout_ms

    def start(self) -> ClusterSet:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _node(self) -> ClusterNode:
        index = len(self.masters) + len(self.replicas)
        return ClusterNode(self.base / f"node{index}", node_timeout_ms=self._timeout)

    def _start(self) -> None:
        masters, replicas = self._counts
        for _ in range(masters):
            self.masters.append(self._node())
        bounds = [SLOTS * i // masters for i in range(masters + 1)]
        for node, start, end in zip(self.masters, bounds, bounds[1:], strict=False):
            node.client.execute_command("CLUSTER", "ADDSLOTS", *range(start, end))
        for _ in range(masters * replicas):
            self.replicas.append(self._node())
        first = self.masters[0]
        for node in [*self.masters[1:], *self.replicas]:
            first.client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        wait_until(lambda: all(n.cluster_ok() for n in self.masters), timeout=20)
        for i, replica in enumerate(self.replicas):
            master = self.masters[i % masters]
            wait_until(lambda r=replica: r.cluster_ok(), timeout=20)
            replica.client.execute_command("CLUSTER", "REPLICATE", master.node_id())
        wait_until(self.settled, timeout=30)

    @property
    def nodes(self) -> list[ClusterNode]:
        return [*self.masters, *self.replicas]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.masters[0].port}"

    def settled(self) -> bool:
        live = self._live()
        if not all(n.cluster_ok() for n in live):
            return False
        for node in live:
            if node.role() == "master" and self._counts[1]:
                info = node.client.info("replication")
                if int(info["connected_slaves"]) < 1:
                    return False
        return True

    def _live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.process.poll() is None]

    def node_for_key(self, key: str) -> ClusterNode:
        """The master serving ``key``'s slot, as a live node says now."""
        asked = self._live()[0].client
        slot = int(asked.execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, owner, *_ in asked.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(owner[1]))
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        wanted = master.node_id()
        for node in self._live():
            if node.role() == "slave":
                text = node.client.execute_command("CLUSTER", "NODES")
                text = text.decode() if isinstance(text, bytes) else str(text)
                mine = next(line for line in text.splitlines() if "myself" in line)
                if mine.split()[3] == wanted:
                    return node
        raise LookupError("no live replica of that master")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
