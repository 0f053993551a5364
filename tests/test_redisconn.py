"""common/redisconn.py: the connection check (PeekCheck) must still notice a connection with an
unread reply or one the server closed, now by a peek instead of redis-py's poll; and a burst of
commands past the pool's size waits for a connection, on one Redis and on a Redis Cluster.

The peek only runs on non-blocking OS sockets, i.e. under gevent as in the web worker: the
clients run in child processes monkey-patched like it, against a real Redis and cluster.
"""
from __future__ import annotations

import socket
import subprocess
import textwrap

import gevent.socket
import pytest
import redis
from procs import PY, ROOT, RedisServer

from common.redisconn import PeekCheck, peeking, pending


@pytest.fixture
def gevent_pair():
    a, b = gevent.socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_pending_tells_nothing_data_and_closed_apart(gevent_pair):
    a, b = gevent_pair
    assert pending(a) is False
    b.sendall(b"+OK\r\n")
    assert pending(a) is True
    assert pending(a) is True, "a peek must leave the bytes for the reader"
    assert a.recv(16) == b"+OK\r\n"
    b.close()
    with pytest.raises(redis.ConnectionError):
        pending(a)


def test_pending_declines_a_socket_that_would_wait():
    a, b = socket.socketpair()
    try:
        a.settimeout(5)
        assert pending(a) is None  # redis-py's own check runs instead of a recv that waits
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("cls", [redis.Connection, redis.UnixDomainSocketConnection])
def test_plain_connections_peek_and_tls_ones_do_not(cls):
    once = peeking(cls)
    assert issubclass(once, PeekCheck) and issubclass(once, cls)
    assert peeking(once) is once
    assert peeking(redis.SSLConnection) is redis.SSLConnection


CHILD = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys, time
    from common.redisconn import PeekCheck, redis_client
    r = redis_client(sys.argv[1])
    pool = r.connection_pool
    assert isinstance(pool.get_connection(), PeekCheck)
    r.set("k", "v")
    # a reply left unread on a pooled connection: the next command must not read it
    c = pool.get_connection()
    c.send_command("SET", "k", "left-unread")
    deadline = time.monotonic() + 5
    while not c.can_read() and time.monotonic() < deadline:
        time.sleep(0.01)
    print("unread seen:", c.can_read())
    pool.release(c)
    print("after unread:", r.get("k"))
    # the server closes every connection: the next command reconnects
    other = redis_client(sys.argv[1])
    other.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    print("after kill:", r.get("k"))
""")


def test_a_worker_like_client_recovers_from_unread_and_closed_connections():
    server = RedisServer()
    try:
        out = subprocess.run([PY, "-c", CHILD, server.url], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines == ["unread seen: True", "after unread: left-unread",
                         "after kill: left-unread"], out.stdout + out.stderr
    finally:
        server.stop()


BURST = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import collections, sys, gevent
    from common.redisconn import POOL_MAX, cluster_client, redis_client
    r = (cluster_client if sys.argv[2] == "cluster" else redis_client)(sys.argv[1])
    failed = collections.Counter()
    def one():
        try:  # holds a connection for 0.3 s, on one node of a cluster (one hash tag)
            r.blpop("{redisconn-test}nothing", timeout=0.3)
        except Exception as exc:
            failed[type(exc).__name__] += 1
    gevent.joinall([gevent.spawn(one) for _ in range(POOL_MAX + 50)])
    print(dict(failed))
""")


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_a_burst_past_the_pool_waits_for_a_connection_instead_of_failing(kind, request):
    """POOL_MAX + 50 commands in flight at once, as when a hundred users connect to a worker
    together: every one is served (the cluster's pool used to refuse 50 of them at once with
    "Too many connections", and those users were told `unavailable`)."""
    own = None
    if kind == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    else:
        own = RedisServer()
        url = own.url
    try:
        out = subprocess.run([PY, "-c", BURST, url, kind], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    finally:
        if own is not None:
            own.stop()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{}", out.stdout + out.stderr


RUNNER = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys
    import gevent, redis
    from common.redisconn import redis_client, script_runner
    r = redis_client(sys.argv[1])
    run = script_runner(r)
    echo = r.register_script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1, ARGV[3]}")
    fail = r.register_script("return redis.error_reply('ERR refused by the script')")
    args = ["é text", 41, "1.5"]
    print("same as redis-py:", run(echo, ["{t}k"], args) == echo(keys=["{t}k"], args=args))
    print("reply:", run(echo, ["{t}k"], args))
    r.script_flush()  # as after a restart: Redis no longer knows the script
    print("after flush:", run(echo, ["{t}k"], ["a", 1, "b"]))
    redis_client(sys.argv[1]).execute_command("CLIENT", "KILL", "TYPE", "normal")
    print("after kill:", run(echo, ["{t}k"], ["c", 2, "d"]))
    try:
        run(fail, [], [])
    except redis.ResponseError as exc:
        print("error:", exc)
    print("after error:", run(echo, ["{t}k"], ["e", 3, "f"]))
    try:
        run(echo, ["{t}k"], ["\\ud800", 1, "x"])  # not UTF-8: refused before anything is sent
    except (UnicodeError, redis.DataError) as exc:
        print("unencodable:", type(exc).__name__)
    print("after unencodable:", run(echo, ["{t}k"], ["g", 4, "h"]))
    # a gevent Timeout (or a kill) while the reply is awaited: the connection must not go back
    # to the pool with that reply still to come, or the next call would read it as its own
    busy = r.register_script(
        "local t0 = redis.call('TIME') local s = t0[1] * 1e6 + t0[2] "
        "while true do local t = redis.call('TIME') "
        "if t[1] * 1e6 + t[2] - s > 200000 then break end end return 'late reply'")
    r.script_load(busy.script)  # known to Redis: the runner's own EVALSHA is the one waiting
    try:
        with gevent.Timeout(0.05):
            run(busy, ["{t}k"], [])
    except gevent.Timeout:
        print("timed out")
    print("after timeout:", run(echo, ["{t}k"], ["i", 5, "j"]))
    pool = r.connection_pool
    idle = sum(1 for c in pool.pool.queue if c is not None)  # BlockingConnectionPool's free ones
    print("connections in use:", len(pool._connections) - idle)
""")


def test_the_script_runner_answers_as_redis_py_and_recovers():
    """Store's EVALSHA on a pooled connection (script_runner): the reply redis-py gives, a
    script Redis forgot is loaded again, a killed connection is replaced, a script's error is
    the caller's and leaves the connection usable, a call given up on (gevent Timeout) leaves
    no reply behind for the next one, and every connection goes back to the pool."""
    own = RedisServer()
    try:
        out = subprocess.run([PY, "-c", RUNNER, own.url], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    finally:
        own.stop()
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "same as redis-py: True",
        "reply: ['{t}k', 'é text', 42, '1.5']",
        "after flush: ['{t}k', 'a', 2, 'b']",
        "after kill: ['{t}k', 'c', 3, 'd']",
        "error: refused by the script",
        "after error: ['{t}k', 'e', 4, 'f']",
        "unencodable: UnicodeEncodeError",
        "after unencodable: ['{t}k', 'g', 5, 'h']",
        "timed out",
        "after timeout: ['{t}k', 'i', 6, 'j']",
        "connections in use: 0",
    ], out.stdout + out.stderr


def test_a_cluster_client_keeps_redis_py_s_way(redis_cluster):
    from common.redisconn import cluster_client, script_runner
    client = cluster_client(redis_cluster.url)
    try:
        echo = client.register_script("return ARGV[1]")
        assert script_runner(client)(echo, ["{t}k"], ["x"]) == "x"
    finally:
        client.close()
