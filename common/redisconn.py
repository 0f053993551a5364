"""Redis clients: one Redis (REDIS_URL) or a Redis Cluster (REDIS_CLUSTER_URL), one way each."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from time import monotonic as _clock

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

try:  # the web worker's sockets, once monkey-patched (gevent is a dependency)
    import gevent
    from gevent.socket import socket as _GeventSocket
    from gevent.socket import wait_read as _wait_read
except ImportError:  # pragma: no cover
    _GeventSocket = None

from .config import Settings
from .keys import CLUSTER_SHARDS, Keys

POOL_MAX = 100  # Redis connections per process (per node of a cluster)
POOL_WAIT = 10.0  # seconds a command may wait for a free one
IDLE_MAX = 8  # of those, kept between calls by a script runner (script_runner)
WATCH_EVERY = 1.0  # seconds between two looks for script replies overdue (ReplyWatch)
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # once: an enum's `|` costs a call each time


class PeekCheck:
    """A connection whose "is anything unread waiting?" is one non-blocking MSG_PEEK.

    redis-py asks that each time its pool hands a connection out (a reply left unread would
    answer the next command), with `select.poll`; under gevent that is a poll object and a
    watcher on the event loop for every command: ~2.5 % of a web worker's CPU at 1000 users
    (py-spy, loadtests/RESULTS.md). Where the OS socket is non-blocking (gevent's, i.e. the web
    worker's) one `recv(MSG_PEEK | MSG_DONTWAIT)` answers the same question; elsewhere (a socket
    with a timeout would wait in that recv) and with a timeout, redis-py's own check runs.
    """

    def can_read(self, timeout: float = 0) -> bool:
        answer = None if timeout else unread(self)
        return super().can_read(timeout) if answer is None else answer


def unread(conn) -> bool | None:
    """Whether `conn` has a reply (or its start) to read, without waiting: hiredis's buffer,
    else one peek; None when that cannot tell (the Python parser, no socket, a socket that
    cannot be peeked without waiting)."""
    reader = getattr(conn._parser, "_reader", None)  # hiredis's; None: the Python parser
    if conn._sock is None or reader is None:
        return None
    if reader.has_data():
        return True
    return pending(conn._sock)


def pending(sock) -> bool | None:
    """Whether `sock` has bytes to read, from one peek; None when it cannot be peeked without
    waiting. A socket the server closed raises redis-py's ConnectionError, as its check does."""
    raw = getattr(sock, "_sock", sock)  # gevent's socket wraps the OS one
    if raw.gettimeout() != 0.0:
        return None
    try:
        data = raw.recv(1, _PEEK)
    except BlockingIOError:
        return False
    except OSError as exc:
        raise redis.ConnectionError(f"Error while checking the connection: {exc}") from exc
    if not data:
        raise redis.ConnectionError("Connection closed by server.")
    return True


def readable(conn: redis.Connection, timeout: float) -> bool:
    """`conn.can_read(timeout)`: whether a reply is there to read, waiting up to `timeout` s.

    redis-py's check with a timeout polls the socket twice (a `select.poll` each: under gevent
    a poll object, a watcher and a Timeout), then peeks: the web worker's pub/sub reader, which
    asks before each message, spent 6.0 % of a loaded worker's Python time there (py-spy
    --gil). On gevent's plain sockets: hiredis's buffer, else one peek, else one wait for the
    socket on gevent's loop. A socket the server closed is readable, and the read that follows
    raises ConnectionError, as the check did. Other sockets (TLS, OS threads) get redis-py's.
    """
    sock = conn._sock
    answer = unread(conn) if type(sock) is _GeventSocket else None
    if answer is None:
        return conn.can_read(timeout)
    if not answer:
        try:
            _wait_read(sock.fileno(), timeout)
        except socket.timeout:
            return False
    return True


def peeking(cls: type) -> type:
    """`cls` with PeekCheck, unless TLS (bytes on the OS socket are not the reader's data)."""
    if issubclass(cls, redis.SSLConnection) or issubclass(cls, PeekCheck):
        return cls
    return type(f"Peeking{cls.__name__}", (PeekCheck, cls), {})


try:  # redis-py's own packer when hiredis is installed (pyproject.toml), the same bytes
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency
    _pack = None

ScriptCall = Callable[[Script, Sequence, Sequence], object]


def script_runner(client) -> ScriptCall:
    """How `client` runs a registered script: `run(script, keys, args)`.

    On one Redis, EVALSHA straight on a connection of the runner's own: pack, send, read.
    redis-py's way (Script.__call__ -> evalsha -> execute_command -> a Retry wrapper, a failure
    callback, timing for its observability hooks, a per-argument encoder in Python) cost a web
    worker 35 us of CPU a call against 15 - 20 us this way (a loop of 20,000 calls under
    gevent), and the message script is one call per chat message: ~19 % of a loaded web
    worker's Python time went to redis-py's layers (py-spy --gil, loadtests/RESULTS.md).
    Whatever is not the plain case goes back to redis-py, which does it as before: a script
    Redis does not know (NOSCRIPT after a restart: Script loads it), and a connection that
    fails or times out (closed here, then redis-py's retries, as for any command; a script
    that may have run is one its callers already retry: message.lua de-duplicates by id).
    A Redis Cluster client (routing by slot) and a client without hiredis keep redis-py's way.

    The runner keeps up to IDLE_MAX connections between calls (`_Idle`) rather than taking one
    from the pool and giving it back each time.
    """
    if type(client) is not redis.Redis or _pack is None:
        return lambda script, keys, args: script(keys=keys, args=args)
    pool = client.connection_pool
    idle = _Idle(pool)
    take, keep = idle.take, idle.keep
    await_reply = _watch.await_reply

    def run(script: Script, keys: Sequence, args: Sequence):
        packed = _pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        conn = take()
        try:
            sock = conn._sock
            if sock is None:  # not connected: redis-py's way connects it
                conn.send_packed_command((packed,))
            else:
                conn.check_health()  # a PING first when idle past health_check_interval
                # One send, sendall for any rest: gevent's sendall asks the kernel for the send
                # buffer's size (getsockopt) on every call (1.2 % of a loaded web worker's
                # Python time) for a command that one send takes whole.
                sent = sock.send(packed)
                if sent < len(packed):
                    sock.sendall(memoryview(packed)[sent:])
                if type(sock) is _GeventSocket:
                    await_reply(conn, sock)
            reply = conn.read_response()
        except ResponseError as exc:  # an error reply, read whole: the connection is clean
            keep(conn)
            if not isinstance(exc, NoScriptError):
                raise
        except BaseException as exc:
            # a failure, a timeout, or a gevent Timeout or kill between send and read: the reply
            # may still be on its way, and must never be read as the next call's
            conn.disconnect()
            pool.release(conn)
            if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
                raise
        else:
            keep(conn)
            return reply
        return script(keys=keys, args=args)  # redis-py's way: loads it, retries
    return run


class ReplyWatch:
    """Waits for a script's reply without a timer of its own, and cuts the ones overdue.

    gevent's socket waits for a read with its timeout (socket_timeout) as a gevent Timeout,
    made, started and closed around each wait: ~3 % of a loaded web worker's Python time
    (py-spy --gil), one per chat message. Here a call waits on its socket's own read watcher
    and notes when its reply is due; one greenlet per process looks every WATCH_EVERY seconds
    and closes the socket of a call past due, which wakes that call with an error (gevent
    cancels the waits on a socket it closes): the runner then goes redis-py's way, whose
    socket timeout ends it if Redis still does not answer. So a stuck Redis holds a call for
    socket_timeout to socket_timeout + WATCH_EVERY, as before within a second. The look and
    the close run without a switch between them: the socket closed is the late call's.
    """

    def __init__(self):
        self.due: dict = {}  # connection -> when its reply is overdue (time.monotonic)
        self.pid = None  # the process the watching greenlet runs in (none yet, or forked)

    def await_reply(self, conn, sock) -> None:
        timeout = conn.socket_timeout
        if timeout is not None:
            if self.pid != _pid[0]:
                self.pid = _pid[0]
                gevent.spawn(self._watch)
            self.due[conn] = _clock() + timeout
        try:
            sock.hub.wait(sock._read_event)
        finally:
            self.due.pop(conn, None)

    def _watch(self) -> None:
        while self.pid == _pid[0]:
            gevent.sleep(WATCH_EVERY)
            now = _clock()
            for conn, due in list(self.due.items()):
                if due <= now and self.due.pop(conn, None) is not None:
                    sock = conn._sock
                    if sock is not None:
                        sock.close()


_watch = ReplyWatch()


# This process's id, kept current across forks: os.getpid() is a system call, and a check per
# script call showed as 1.8 % of a loaded web worker's Python time.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


class _Idle:
    """The script runner's idle connections: a stack, topped up from the pool, at most IDLE_MAX.

    The pool's get_connection and release around each call (a pid check and a lock each, a
    gevent queue, its observability counters, a peek for unread data) were 3.4 % + 2.0 % of a
    loaded web worker's Python time (py-spy --gil), 5.1 us of CPU a call under gevent, for what
    a list's pop and append do here in 0.4 us, without a lock: both are atomic, and nothing
    yields between them under gevent. A connection comes back here only with every reply read,
    so the peek has nothing to find; a server that closed it is found by the call (a
    ConnectionError: redis-py's way then) or by redis-py's health check before the send.
    Connections taken from the pool count against its bound, and those past IDLE_MAX go back
    to it: other commands are never kept from more than IDLE_MAX of its POOL_MAX.
    """

    def __init__(self, pool: redis.ConnectionPool):
        self._pool = pool
        self._stack: list = []

    def take(self):
        try:
            conn = self._stack.pop()  # one caller each, OS threads too (the pop is atomic)
        except IndexError:
            return self._pool.get_connection()
        if conn.pid == _pid[0]:
            return conn
        self._stack.clear()  # made before a fork: the parent's (redis-py's pool forgets them too)
        return self._pool.get_connection()

    def keep(self, conn) -> None:
        """Give back a connection with nothing left to read."""
        if len(self._stack) < IDLE_MAX and not conn.should_reconnect():
            self._stack.append(conn)
        else:
            self._pool.release(conn)


def redis_client(url: str, **kwargs) -> redis.Redis:
    """A client of one Redis for short commands; blocking reads use their own timeout
    (redis-py #4119).

    Its pool is bounded and blocking: when Redis stalls for a moment, a web worker's greenlets
    (one per busy connection) wait for one of POOL_MAX connections instead of failing with
    redis-py's "Too many connections" (its default pool refuses a 101st connection).
    """
    kwargs.setdefault("socket_connect_timeout", 5)
    kwargs.setdefault("socket_timeout", 10)
    kwargs.setdefault("health_check_interval", 30)
    kwargs.setdefault("retry_on_timeout", True)
    pool = redis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=POOL_MAX,
                                                 timeout=POOL_WAIT, **kwargs)
    pool.connection_class = peeking(pool.connection_class)
    return redis.Redis(connection_pool=pool)


def cluster_client(url: str, **kwargs) -> RedisCluster:
    """A Redis Cluster client from one seed node (redis-py finds the others).

    Each node's pool is bounded and blocking, like redis_client's: with redis-py's default pool
    a burst of more than POOL_MAX commands in flight on one node (a hundred users connecting to
    a worker at once) failed at once with "Too many connections", and those users were told
    `unavailable`. A node that fails is given up on after two quick retries (redis-py's
    default, ten with up to 1 s each, held a request 4 - 6 s), so a worker answers `unavailable`
    and the client resumes, as on one Redis.
    """
    kwargs.setdefault("socket_connect_timeout", 5)
    kwargs.setdefault("socket_timeout", 10)
    kwargs.setdefault("max_connections", POOL_MAX)
    kwargs.setdefault("connection_pool_class", redis.BlockingConnectionPool)
    kwargs.setdefault("timeout", POOL_WAIT)  # the blocking pool's wait for a free connection
    kwargs.setdefault("retry", Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 2))
    return RedisCluster.from_url(url, decode_responses=True, **kwargs)


def connect(settings: Settings, **kwargs) -> redis.Redis | RedisCluster:
    """The chat's Redis, whichever kind the settings name."""
    if settings.redis_cluster_url:
        return cluster_client(settings.redis_cluster_url, **kwargs)
    return redis_client(settings.redis_url, **kwargs)


def keys_of(settings: Settings) -> Keys:
    """The key layout: one chat shard on one Redis, CLUSTER_SHARDS on a cluster."""
    return Keys(settings.redis_prefix, CLUSTER_SHARDS if settings.redis_cluster_url else 1)
