"""web/subscriber.py on a real Redis and a real 3-master Redis Cluster, in both of its modes.

`thread`: the Subscriber in this process, its readers plain threads (pytest is not monkey-patched).
`gevent`: the Subscriber in a child process monkey-patched by gevent as the web worker is, so its
readers are greenlets (the production mode); the child reports what it receives on stdout (`S`
confirmations, `M` messages) and answers `?` on stdin with its `subscribed`, CPU time and clock.
"""
from __future__ import annotations

import collections
import json
import logging
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from procs import PY, ROOT, RedisServer, wait_until
from redis.crc import key_slot

from common.keys import CLUSTER_SHARDS, Keys
from common.redisconn import cluster_client, redis_client

# Names of their own: the session's cluster stack (tests/conftest.py) runs a matcher that
# broadcasts `stats` on SOCKETIO_CHANNEL's default on the same cluster.
BROADCAST = "subscriber-test-broadcast"
PREFIX = "subtest"


# backends ---------------------------------------------------------------------------------------
class Backend:
    """One Redis or the cluster, this worker's channels on it, and a publisher like the scripts'."""

    def __init__(self, kind: str, url: str, server):
        self.kind, self.url, self.server = kind, url, server
        self.cluster = kind == "cluster"
        keys = Keys(PREFIX, CLUSTER_SHARDS if self.cluster else 1)
        self.channels = list(keys.worker_channels("w1"))
        self.foreign = list(keys.worker_channels("w2"))  # another worker's: never delivered
        self.all = {*self.channels, BROADCAST}
        self.pub = self.client()

    def client(self):
        return cluster_client(self.url) if self.cluster else redis_client(self.url)

    def publish(self, channel: str, data: str) -> int:
        """SPUBLISH a worker channel on a cluster (as the Lua scripts do), else PUBLISH."""
        if self.cluster and channel != BROADCAST and ":w:" in channel:
            return self.pub.spublish(channel, data)
        return self.pub.publish(channel, data)


@pytest.fixture(scope="module")
def single_redis():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "cluster"])
def backend(request):
    if request.param == "redis":
        server = request.getfixturevalue("single_redis")
        server.client.flushall()
        b = Backend("redis", server.url, server)
    else:
        server = request.getfixturevalue("redis_cluster")
        server.flush()
        b = Backend("cluster", server.url, server)
    yield b
    b.pub.close()


# the subscriber under test, in either mode -------------------------------------------------------
class Run:
    """A running Subscriber of `backend`'s channels; `events` gets ("S", channel) for each
    confirmation and ("M", payload, received at (monotonic)) for each message, in order."""

    def __init__(self, mode: str, backend: Backend):
        self.mode, self.backend = mode, backend
        self.events: queue.Queue = queue.Queue()
        self.logs: list[str] = []
        if mode == "thread":
            from web.subscriber import Subscriber

            self.handler = _ListHandler(self.logs)
            logger = logging.getLogger("web.subscriber")
            self.level = logger.level
            logger.setLevel(logging.INFO)
            logger.addHandler(self.handler)
            self.client = backend.client()
            self.sub = Subscriber(self.client, backend.channels, BROADCAST,
                                  lambda ch: self.events.put(("S", ch)))
            self.consumer = threading.Thread(target=self._consume, daemon=True)
            self.consumer.start()
        else:
            self.log = tempfile.NamedTemporaryFile(prefix="subscriber-", suffix=".log",
                                                   delete=False)
            spec = {"kind": backend.kind, "url": backend.url, "channels": backend.channels}
            self.p = subprocess.Popen([PY, "-c", CHILD, json.dumps(spec)], cwd=ROOT,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self.log)
            self.answers: queue.Queue = queue.Queue()
            threading.Thread(target=self._read_child, daemon=True).start()

    def _consume(self):
        for data in self.sub.listen():
            self.events.put(("M", data, time.monotonic()))

    def _read_child(self):
        for line in self.p.stdout:
            kind, _, rest = line.decode().rstrip("\n").partition(" ")
            if kind == "S":
                self.events.put(("S", rest))
            elif kind == "M":
                at, data = rest.split(" ")
                self.events.put(("M", bytes.fromhex(data), float(at)))
            elif kind == "R":
                subscribed, cpu, now = rest.split(" ")
                self.answers.put((subscribed == "1", float(cpu), float(now)))

    def state(self) -> tuple[bool, float | None, float]:
        """(subscribed, CPU seconds of the child or None, monotonic time)."""
        if self.mode == "thread":
            return self.sub.subscribed, None, time.monotonic()
        self.p.stdin.write(b"?\n")
        self.p.stdin.flush()
        return self.answers.get(timeout=10)

    def subscribed(self) -> bool:
        return self.state()[0]

    def log_lines(self) -> list[str]:
        if self.mode == "thread":
            return list(self.logs)
        return Path(self.log.name).read_text(errors="replace").splitlines()

    def close(self):
        if self.mode == "thread":
            self.sub.close()
            self.consumer.join(5)
            assert not self.consumer.is_alive(), "listen() did not end after close()"
            assert not any(r.is_alive() for r in self.sub._readers.values())
            logger = logging.getLogger("web.subscriber")
            logger.removeHandler(self.handler)
            logger.setLevel(self.level)
            self.client.close()
        else:
            self.p.stdin.close()
            self.p.wait(10)


class _ListHandler(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record):
        self.into.append(f"{record.levelname} {record.getMessage()}")


# The gevent child: patched first, as web/__main__.py does, then this module imported.
CHILD = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys; sys.path[:0] = ['tests', '.']\n"
    "import test_subscriber; test_subscriber.child(sys.argv[1])\n"
)


def child(spec_json: str) -> None:
    """The Subscriber under gevent: its events on stdout, `?` on stdin answered with its state."""
    import os

    import gevent
    from gevent.fileobject import FileObjectPosix
    from gevent.monkey import is_module_patched

    from web.subscriber import Subscriber

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    assert is_module_patched("threading"), "the readers would be OS threads"
    spec = json.loads(spec_json)
    client = cluster_client(spec["url"]) if spec["kind"] == "cluster" else redis_client(spec["url"])
    out = sys.stdout

    def emit(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    sub = Subscriber(client, spec["channels"], BROADCAST, lambda ch: emit(f"S {ch}"))

    def answer():
        for _ in FileObjectPosix(sys.stdin.fileno(), "rb", close=False):
            emit(f"R {int(sub.subscribed)} {time.process_time()!r} {time.monotonic()!r}")
        os._exit(0)  # stdin closed: the test has gone

    gevent.spawn(answer)
    for data in sub.listen():
        emit(f"M {time.monotonic()!r} {data.hex()}")


@pytest.fixture(params=["thread", "gevent"])
def mode(request):
    return request.param


@pytest.fixture
def run(mode, backend):
    r = Run(mode, backend)
    yield r
    r.close()


# waiting ----------------------------------------------------------------------------------------
def collect(run: Run, done, timeout: float, what: str) -> list[tuple]:
    """Events until done(events) is true; fail after `timeout` s with what arrived."""
    got: list[tuple] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        try:
            got.append(run.events.get(timeout=max(0.0, left)))
        except queue.Empty:
            raise AssertionError(f"no {what} within {timeout} s; got {got[-60:]}\n"
                                 + "\n".join(run.log_lines()[-40:])) from None
    return got


def confirmed(events) -> list[str]:
    return [e[1] for e in events if e[0] == "S"]


def messages(events) -> list[bytes]:
    return [e[1] for e in events if e[0] == "M"]


def all_confirmed(channels: set[str]):
    return lambda events: set(confirmed(events)) >= channels


def started(run: Run) -> list[str]:
    """Wait for the first confirmation of every channel; return the confirmations."""
    events = collect(run, all_confirmed(run.backend.all), 20, "confirmation of every channel")
    assert not messages(events)
    wait_until(run.subscribed, 10, "subscribed to be true")
    return confirmed(events)


def one_on_each(run: Run, tag: str, timeout: float = 20) -> None:
    """Publish one message on every channel; each must arrive, once."""
    b = run.backend
    expected = {f"{ch}|{tag}".encode() for ch in b.all}
    for ch in b.all:
        assert b.publish(ch, f"{ch}|{tag}") >= 1, f"nobody subscribed to {ch}"
    events = collect(run, lambda ev: len(messages(ev)) >= len(expected), timeout,
                     f"one message on each of {len(expected)} channels")
    assert sorted(messages(events)) == sorted(expected)


# tests ------------------------------------------------------------------------------------------
def test_every_message_arrives_once_in_order_and_no_other(run):
    b = run.backend
    first = started(run)
    assert collections.Counter(first) == collections.Counter(b.all), "each channel confirmed once"
    assert len(b.channels) == (CLUSTER_SHARDS + 1 if b.cluster else 1)

    for ch in b.foreign:  # another worker's channels, and another broadcast channel, first
        b.publish(ch, "foreign")
    b.pub.publish("another-broadcast", "foreign")
    rounds = 20
    for i in range(rounds):
        for ch in b.all:
            b.publish(ch, f"{ch}|{i}")
    events = collect(run, lambda ev: len(ev) >= rounds * len(b.all), 30,
                     f"{rounds} messages on each channel")
    assert not confirmed(events), "no subscription was confirmed again"
    got = messages(events)
    assert all(type(m) is bytes for m in got)  # undecoded: python-socketio decodes them
    assert b"foreign" not in got
    per_channel = collections.defaultdict(list)
    for m in got:
        ch, _, i = m.decode().rpartition("|")
        per_channel[ch].append(int(i))
    assert per_channel == {ch: list(range(rounds)) for ch in b.all}
    assert run.subscribed()


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_one_redis_killing_the_pubsub_connection_resubscribes_every_channel(run):
    b = run.backend
    started(run)
    assert b.server.kill_clients("pubsub") >= 1
    events = collect(run, all_confirmed(b.all), 20, "every channel confirmed again")
    assert not messages(events)
    wait_until(run.subscribed, 10, "subscribed to be true again")
    one_on_each(run, "after")
    lost = [line for line in run.log_lines() if " lost " in line]
    assert len(lost) == 1, run.log_lines()


@pytest.mark.parametrize("backend", ["cluster"], indirect=True)
def test_a_cluster_node_killed_and_restarted_resubscribes_its_channels_only(run):
    b, cluster = run.backend, run.backend.server
    started(run)
    victim = 1
    node = cluster.nodes[victim]
    on_victim = {ch for ch in b.channels if cluster.node_of(ch) is node}
    assert len(on_victim) >= CLUSTER_SHARDS // 3

    cluster.kill(victim)
    wait_until(lambda: not run.subscribed(), 10, "subscribed to be false with a node down")
    # down long enough for the cluster to notice (node timeout 1 s): several attempts fail
    wait_until(lambda: cluster.nodes[0].info()["cluster_state"] == "fail", 20,
               "the cluster to mark the killed node failed")
    cluster.restart(victim)
    events = collect(run, all_confirmed(on_victim), 30, "the restarted node's channels confirmed")
    again = set(confirmed(events))
    assert again <= on_victim | {BROADCAST}, f"channels of live nodes resubscribed: {again}"
    wait_until(run.subscribed, 20, "subscribed to be true again")
    assert not messages(events)
    one_on_each(run, "after restart")
    lines = run.log_lines()
    lost = [line for line in lines if " lost " in line]
    back = [line for line in lines if "subscribed again" in line]
    assert len(lost) == 1 and node.address in lost[0], lines
    assert len(back) == 1 and node.address in back[0], lines


def _move(cluster, channel: str, owner) -> None:
    """Move the (empty) slot of `channel` to `owner`: IMPORTING, MIGRATING, then NODE on all."""
    slot = key_slot(channel.encode())
    source = cluster.node_of(channel)
    ids = {n.address: n.client.execute_command("CLUSTER MYID") for n in cluster.nodes}
    assert not source.client.execute_command("CLUSTER GETKEYSINSLOT", slot, 1)
    owner.client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.address])
    source.client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[owner.address])
    for n in sorted(cluster.nodes, key=lambda n: n is not owner):  # the new owner first
        n.client.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[owner.address])


@pytest.mark.parametrize("backend", ["cluster"], indirect=True)
def test_a_channel_whose_slot_moves_is_subscribed_on_its_new_node(run):
    b, cluster = run.backend, run.backend.server
    started(run)
    channel = b.channels[5]
    home = cluster.node_of(channel)
    elsewhere = next(n for n in cluster.nodes if n is not home)
    try:
        _move(cluster, channel, elsewhere)
        events = collect(run, all_confirmed({channel}), 20, f"{channel} confirmed on its new node")
        assert set(confirmed(events)) == {channel}
        wait_until(run.subscribed, 10, "subscribed to be true")
        assert cluster.node_of(channel) is elsewhere
        one_on_each(run, "moved")  # SPUBLISH on the new node: it counts our subscription
    finally:
        _move(cluster, channel, home)
        cluster.wait_ok()
    events = collect(run, all_confirmed({channel}), 20, f"{channel} confirmed back home")
    wait_until(run.subscribed, 10, "subscribed to be true")
    one_on_each(run, "moved back")


@pytest.mark.parametrize("mode", ["gevent"], indirect=True)
def test_measure_idle_cpu_and_delivery_latency(run):
    """Figures, printed not asserted: run with -s to see them."""
    b = run.backend
    started(run)
    _, cpu0, t0 = run.state()
    time.sleep(2)  # the measured idle span, not a wait for anything
    _, cpu1, t1 = run.state()
    idle = (cpu1 - cpu0) / (t1 - t0)

    targets = sorted(b.all)
    latencies = []
    for i in range(1000):
        ch = targets[i % len(targets)]
        payload = f"{ch}|{i}"
        sent = time.monotonic()
        b.publish(ch, payload)
        (event,) = collect(run, lambda ev: len(ev) >= 1, 10, f"message {i}")
        assert event[:2] == ("M", payload.encode())
        latencies.append(event[2] - sent)
    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = statistics.median(ms), ms[989]

    # A burst on the worker channels (a cluster pipeline refuses PUBLISH), pipelined as fast as
    # Redis takes it: the rate at which the subscriber reads.
    burst = 10_000
    pipe = b.pub.pipeline(transaction=False)
    started_at = time.monotonic()
    for i in range(burst):
        ch = b.channels[i % len(b.channels)]
        (pipe.spublish if b.cluster else pipe.publish)(ch, f"{ch}|b{i}")
    pipe.execute()
    published = time.monotonic() - started_at
    events = collect(run, lambda ev: len(ev) >= burst, 60, f"a burst of {burst}")
    assert len(messages(events)) == burst
    received = events[-1][2] - started_at
    print(f"\n[subscriber {b.kind}/{run.mode}] idle CPU over {t1 - t0:.1f} s: {idle * 100:.3f} % "
          f"of a core; delivery of 1000 messages (one at a time, over {len(targets)} channels): "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms; a burst of {burst}: "
          f"published in {published:.3f} s, all received {received:.3f} s after the start "
          f"({burst / received:,.0f} messages/s)")
