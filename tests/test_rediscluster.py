"""The 3-master Redis Cluster of tests/rediscluster.py, and the redis-py cluster features the chat
relies on when it runs on one: routing by slot, Lua scripts, sharded pub/sub, a node's restart.
"""
from __future__ import annotations

import time

import pytest
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from procs import wait_stopped
from rediscluster import SLOTS, RedisClusterServer


@pytest.fixture
def cluster(redis_cluster):
    """The session's cluster, flushed for this test, once the stacks of earlier tests that ran on
    it have stopped (their last scripts would count in this test's commandstats)."""
    wait_stopped()
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def rc(cluster):
    """redis-py's cluster client from the seed URL alone, as REDIS_CLUSTER_URL gives it."""
    client = RedisCluster.from_url(cluster.url, decode_responses=True)
    yield client
    client.close()


def key_per_node(rc: RedisCluster, pattern: str) -> list[str]:
    """One name of `pattern` (with {i}) for each master, in the order of rc.get_primaries()."""
    found: dict[str, str] = {}
    for i in range(10_000):
        name = pattern.format(i=i)
        found.setdefault(rc.get_node_from_key(name).name, name)
        if len(found) == len(rc.get_primaries()):
            return [found[n.name] for n in rc.get_primaries()]
    raise AssertionError(f"no name of {pattern!r} for every master: {found}")


def sharded_messages(ps, count: int, timeout: float = 10, publish=None,
                     errors: list | None = None) -> list[dict]:
    """Read `count` sharded messages (subscribe confirmations included) within `timeout`.

    `publish`, if given, runs before every poll: for a subscriber that only receives what is
    published after it subscribed again. With `errors`, a poll's ConnectionError is kept there
    and polling goes on (redis-py raises it when every node of the pubsub failed in one pass)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        if publish:
            publish()
        try:
            m = ps.get_sharded_message(timeout=0.2)
        except RedisConnectionError as exc:
            if errors is None:
                raise
            errors.append(exc)
            continue
        if m:
            got.append(m)
    assert len(got) == count, f"got {got} of {count} sharded messages in {timeout} s"
    return got


def test_three_masters_serve_all_slots(cluster):
    slots = cluster.slots()
    assert sorted(slots) == sorted(n.address for n in cluster.nodes)
    assert sum(slots.values()) == SLOTS
    assert all(n >= SLOTS // 3 for n in slots.values()), slots
    assert cluster.url == cluster.urls[0]
    for n in cluster.nodes:
        info = n.info()
        assert info["cluster_state"] == "ok" and info["cluster_size"] == "3", info
        nodes = n.client.execute_command("CLUSTER NODES")
        assert sorted(nodes) == sorted(slots), nodes
        assert all(v["flags"].removeprefix("myself,") == "master" and v["connected"]
                   for v in nodes.values()), nodes


def test_a_cluster_client_from_the_seed_writes_keys_on_every_node(cluster, rc):
    assert {n.name for n in rc.get_primaries()} == {n.address for n in cluster.nodes}
    cluster.reset_stats()
    for i in range(300):
        rc.set(f"k{i}", i)
    # this test's keys only: the session's cluster stack (tests/conftest.py) writes its own
    sizes = {n.address: len(n.client.keys("k*")) for n in cluster.nodes}
    assert sum(sizes.values()) == 300 and all(sizes.values()), sizes
    sets = {a: stats.get("set", {}).get("calls", 0) for a, stats in cluster.commandstats().items()}
    assert sets == sizes, (sets, sizes)
    for name in ("k0", "k1", "k2", "{chat}:queue"):
        assert cluster.node_of(name).address == rc.get_node_from_key(name).name
    cluster.flush()
    assert sum(len(n.client.keys("k*")) for n in cluster.nodes) == 0


def test_a_script_runs_on_the_node_that_serves_its_keys_slot(cluster, rc):
    script = rc.register_script(
        "redis.call('SET', KEYS[1], ARGV[1]) "
        "return redis.call('INCRBY', KEYS[2], ARGV[1])")
    # a tag of this test's own: the session's stacks (their matcher runs scripts every 0.25 s)
    # use {chat}, and they run on while this test does, so command counters would not be ours
    keys = ["{rctest}:a", "{rctest}:b"]
    assert script(keys=keys, args=[5]) == 5
    assert script(keys=keys, args=[5]) == 10  # EVALSHA again: the script stays loaded
    assert rc.get("{rctest}:a") == "5"
    owner = cluster.node_of("{rctest}:a")
    # it ran where its keys live: both are on that node, and no other node holds a key there
    slot = rc.keyslot("{rctest}:a")
    held = {n.address: n.client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
            for n in cluster.nodes}
    assert held == {n.address: (2 if n is owner else 0) for n in cluster.nodes}, held
    assert owner.client.execute_command("SCRIPT", "EXISTS", script.sha) == [1]
    # redis-py routes EVALSHA by its keys and refuses keys of two slots before sending.
    with pytest.raises(RedisClusterException, match="same key slot"):
        script(keys=["{a}:x", "{b}:x"], args=[1])


def test_sharded_pubsub_through_redis_py_on_every_node(cluster, rc):
    channels = key_per_node(rc, "{{room{i}}}:events")
    ps = rc.pubsub()
    ps.ssubscribe(*channels)
    assert sorted(ps.node_pubsub_mapping) == sorted(n.address for n in cluster.nodes)
    confirmed = sharded_messages(ps, 3)
    assert sorted(m["channel"] for m in confirmed) == sorted(channels)
    assert {m["type"] for m in confirmed} == {"ssubscribe"}
    for ch in channels:
        assert rc.spublish(ch, f"to {ch}") == 1
    got = sharded_messages(ps, 3)
    assert sorted((m["type"], m["channel"], m["data"]) for m in got) == sorted(
        ("smessage", ch, f"to {ch}") for ch in channels)
    ps.close()


def test_a_script_spublishes_to_a_channel_of_its_keys_slot_only(cluster, rc):
    script = rc.register_script(
        "local n = redis.call('INCR', KEYS[1]) "
        "redis.call('SPUBLISH', ARGV[1], ARGV[2] .. n) return n")
    key, channel = "{chat}:seq", "{chat}:events"
    ps = rc.pubsub()
    ps.ssubscribe(channel)
    sharded_messages(ps, 1)
    assert script(keys=[key], args=[channel, "n="]) == 1
    (m,) = sharded_messages(ps, 1)
    assert (m["type"], m["channel"], m["data"]) == ("smessage", channel, "n=1")
    # A channel served by another node is refused by Redis 7 inside the script.
    elsewhere = next(c for c in key_per_node(rc, "{{ch{i}}}")
                     if rc.get_node_from_key(c).name != rc.get_node_from_key(key).name)
    with pytest.raises(ResponseError, match="non local key"):
        script(keys=[key], args=[elsewhere, "n="])
    ps.close()


def test_a_killed_node_restarts_with_its_slots_and_its_sharded_subscribers_come_back():
    own = RedisClusterServer()
    try:
        rc = RedisCluster.from_url(own.url, decode_responses=True)
        ps = rc.pubsub()
        victim = 1
        channel = next(c for c in key_per_node(rc, "{{k{i}}}:ch")
                       if rc.get_node_from_key(c).name == own.nodes[victim].address)
        ps.ssubscribe(channel)
        sharded_messages(ps, 1)
        slots_before = own.slots()
        own.kill(victim)
        assert not own.nodes[victim].alive()
        own.restart(victim)
        assert own.slots() == slots_before
        rc.set(channel, "after restart")
        assert own.nodes[victim].client.get(channel) == "after restart"
        # The subscriber's next polls reconnect and SSUBSCRIBE again (confirmed), then receive;
        # its only node having failed, the first poll may raise ConnectionError.
        errors: list = []
        got = sharded_messages(ps, 2, publish=lambda: rc.spublish(channel, "back"),
                               errors=errors)
        assert [m["type"] for m in got] == ["ssubscribe", "smessage"], got
        assert len(errors) <= 1, errors
        ps.close()
        rc.close()
    finally:
        own.stop()
