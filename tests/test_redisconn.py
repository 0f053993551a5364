"""common/redisconn.py: the connection check (PeekCheck) must still notice a connection with an
unread reply or one the server closed, now by a peek instead of redis-py's poll; and a burst of
commands past the pool's size waits for a connection, on one Redis and on a Redis Cluster.

The peek only runs on non-blocking OS sockets, i.e. under gevent as in the web worker: the
clients run in child processes monkey-patched like it, against a real Redis and cluster.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
import threading

import gevent.socket
import pytest
import redis
from procs import PY, ROOT, RedisServer

from common.redisconn import PeekCheck, peeking, pending, readable


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


def readable_steps(url: str) -> list[str]:
    """What `readable` answers on a subscribed connection: nothing yet, a confirmation, a
    message published while it waits, two messages in one go, a connection the server closed."""
    import gevent
    from gevent.monkey import is_module_patched

    conn = redis.Connection(**redis.ConnectionPool.from_url(url, protocol=2).connection_kwargs)
    other = redis.Redis.from_url(url)
    out = []
    try:
        out.append(f"idle: {readable(conn, 0.05)}")
        conn.send_command("SUBSCRIBE", "ch")
        out.append(f"confirmation: {readable(conn, 5)} {conn.read_response()[0]}")
        out.append(f"nothing more: {readable(conn, 0.05)}")
        if is_module_patched("socket"):
            later = gevent.spawn_later(0.05, other.publish, "ch", "later")
        else:
            later = threading.Timer(0.05, other.publish, ("ch", "later"))
            later.start()
        out.append(f"while waiting: {readable(conn, 5)} {conn.read_response()[2]}")
        other.publish("ch", "one")
        other.publish("ch", "two")
        got = []
        while len(got) < 2 and readable(conn, 5):
            got.append(conn.read_response()[2])
        out.append(f"two: {got}")
        other.client_kill_filter(_type="pubsub")
        try:
            readable(conn, 5) and conn.read_response()
        except redis.ConnectionError as exc:
            out.append(f"closed: {exc}")
    finally:
        conn.disconnect()
        other.close()
    return out


READABLE = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys; sys.path[:0] = ['tests', '.']
    import test_redisconn
    print("\\n".join(test_redisconn.readable_steps(sys.argv[1])))
""")


@pytest.mark.parametrize("mode", ["thread", "gevent"])
def test_readable_answers_as_can_read(mode):
    """`readable` (the pub/sub reader's wait for data: a peek, then a wait on gevent's loop)
    says False after its timeout with nothing sent, True for a reply already there or arriving
    while it waits, and a closed connection ends in ConnectionError; in plain threads too, where
    redis-py's own check runs."""
    server = RedisServer()
    try:
        if mode == "thread":
            lines = readable_steps(server.url)
        else:
            out = subprocess.run([PY, "-c", READABLE, server.url], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            lines = out.stdout.splitlines()
    finally:
        server.stop()
    assert lines == [
        "idle: False",
        "confirmation: True b'subscribe'",
        "nothing more: False",
        "while waiting: True b'later'",
        "two: [b'one', b'two']",
        "closed: Connection closed by server.",
    ]


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
    # the same, the call killed while its reply is awaited
    g = gevent.spawn(run, busy, ["{t}k"], [])
    gevent.sleep(0)  # g runs up to its read: the EVALSHA is sent
    g.kill()
    print("killed:", type(g.value).__name__, "after kill mid-call:", run(echo, ["{t}k"], ["k", 6, "l"]))
    pool = r.connection_pool
    idle = sum(1 for c in pool.pool.queue if c is not None)  # BlockingConnectionPool's free ones
    print("connections in use:", len(pool._connections) - idle)
""")


def test_the_script_runner_answers_as_redis_py_and_recovers():
    """Store's EVALSHA on a pooled connection (script_runner): the reply redis-py gives, a
    script Redis forgot is loaded again, a killed connection is replaced, a script's error is
    the caller's and leaves the connection usable, a call given up on (gevent Timeout, or its
    greenlet killed) leaves no reply behind for the next one, and every connection but the
    runner's idle one goes back to the pool."""
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
        "killed: GreenletExit after kill mid-call: ['{t}k', 'k', 7, 'l']",
        "connections in use: 1",  # the runner's idle one
    ], out.stdout + out.stderr


RUNNER_STUCK = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import os, signal, sys
    import gevent, redis
    from common import redisconn
    from common.redisconn import redis_client, script_runner
    r = redis_client(sys.argv[1], socket_timeout=0.5, socket_connect_timeout=0.5)
    run = script_runner(r)
    echo = r.register_script("return ARGV[1]")
    r.script_load(echo.script)
    print("before:", run(echo, [], ["a"]), run(echo, [], ["b"]))
    print("watching:", redisconn._watch.pid == os.getpid())
    redis_pid = int(sys.argv[2])
    os.kill(redis_pid, signal.SIGSTOP)  # Redis takes the command and never answers
    try:
        with gevent.Timeout(20, RuntimeError("the call hung")):  # reports a hang, times nothing
            run(echo, [], ["c"])
        print("answered while stopped?")
    except (redis.TimeoutError, redis.ConnectionError) as exc:
        print("stopped Redis:", type(exc).__name__)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    print("after:", run(echo, [], ["d"]), run(echo, [], ["e"]))
""")


def test_a_script_call_to_a_redis_that_stops_answering_ends_with_an_error():
    """The runner waits for a reply without a timer of its own (ReplyWatch): a Redis that stops
    answering (SIGSTOP) still ends the call with redis-py's timeout error instead of holding
    it, and once Redis answers again every call does."""
    own = RedisServer()
    try:
        out = subprocess.run([PY, "-c", RUNNER_STUCK, own.url, str(own.p.pid)], cwd=ROOT,
                             capture_output=True, text=True, timeout=90)
    finally:
        os.kill(own.p.pid, signal.SIGCONT)
        own.stop()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["before: a b", "watching: True"], out.stdout + out.stderr
    assert lines[2] in ("stopped Redis: TimeoutError", "stopped Redis: ConnectionError"), (
        out.stdout + out.stderr)
    assert lines[3:] == ["after: d e"], out.stdout + out.stderr


RUNNER_IDLE = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import os, sys
    import gevent
    from common.redisconn import IDLE_MAX, redis_client, script_runner
    r = redis_client(sys.argv[1])
    pool = r.connection_pool
    run = script_runner(r)
    echo = r.register_script("return ARGV[1]")
    slow = r.register_script(  # ~20 ms of Redis's time: calls in flight together pile up
        "local t0 = redis.call('TIME') local s = t0[1] * 1e6 + t0[2] "
        "while true do local t = redis.call('TIME') "
        "if t[1] * 1e6 + t[2] - s > 20000 then break end end return ARGV[1]")
    r.script_load(echo.script)  # known: no NOSCRIPT, so no redis-py call in the counts
    r.script_load(slow.script)

    def held():  # connections the pool handed out and has not had back
        return len(pool._connections) - sum(1 for c in pool.pool.queue if c is not None)

    def answers(script, tag, n):  # n calls in a row, each must get its own reply
        return all(run(script, [], [f"{tag} {i}"]) == f"{tag} {i}" for i in range(n))

    taken, given = [], []  # the pool's traffic: what the runner saves
    get, release = pool.get_connection, pool.release
    pool.get_connection = lambda: taken.append(1) or get()
    pool.release = lambda conn: given.append(1) or release(conn)
    print("in a row:", answers(echo, "row", 200), len(taken), len(given), held())
    calls = [gevent.spawn(run, slow, [], [f"burst {i}"]) for i in range(3 * IDLE_MAX)]
    gevent.joinall(calls, raise_error=True)
    right = [g.value for g in calls] == [f"burst {i}" for i in range(3 * IDLE_MAX)]
    print("burst:", right, len(pool._connections) > IDLE_MAX, held() == IDLE_MAX)

    pid = os.fork()  # the child must not use the parent's connections, nor the parent its
    if pid == 0:
        os._exit(0 if answers(echo, "child", 2000) else 1)
    parent = answers(echo, "parent", 2000)
    print("fork:", parent, os.waitpid(pid, 0)[1] == 0)

    print("restart?", flush=True)
    sys.stdin.readline()  # Redis restarted: every idle connection is dead, the script unknown
    # each dead one fails once and goes back to the pool (redis-py's way reconnects it)
    print("after restart:", answers(echo, "again", IDLE_MAX + 2), held())
""")


def test_the_script_runner_keeps_its_idle_connections_and_never_shares_one():
    """The runner keeps a few connections between calls: one serves calls in a row; calls in
    flight together each get their own, and only IDLE_MAX stay with the runner, the others go
    back to the pool; a forked child makes its own; after Redis restarted, the dead idle
    connections and the forgotten script fall back to redis-py's way and every call succeeds."""
    own = RedisServer()
    try:
        p = subprocess.Popen([PY, "-c", RUNNER_IDLE, own.url], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = []
        for line in p.stdout:  # up to the question, then Redis restarts under the child
            lines.append(line.rstrip("\n"))
            if line.startswith("restart?"):
                own.shutdown()
                own.start_again()
                p.stdin.write("go\n")
                p.stdin.flush()
        err = p.stderr.read()
        assert p.wait(60) == 0, err
    finally:
        own.stop()
    assert lines == [
        "in a row: True 1 0 1",
        "burst: True True True",
        "fork: True True",
        "restart?",
        "after restart: True 1",
    ], "\n".join(lines) + err


def test_a_cluster_client_keeps_redis_py_s_way(redis_cluster):
    from common.redisconn import cluster_client, script_runner
    client = cluster_client(redis_cluster.url)
    try:
        echo = client.register_script("return ARGV[1]")
        assert script_runner(client)(echo, ["{t}k"], ["x"]) == "x"
    finally:
        client.close()
