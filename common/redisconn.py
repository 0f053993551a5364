"""Redis clients: one Redis (REDIS_URL) or a Redis Cluster (REDIS_CLUSTER_URL), one way each."""
from __future__ import annotations

import socket

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from .config import Settings
from .keys import CLUSTER_SHARDS, Keys

POOL_MAX = 100  # Redis connections per process (per node of a cluster)
POOL_WAIT = 10.0  # seconds a command may wait for a free one
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
        reader = getattr(self._parser, "_reader", None)  # hiredis's; None: the Python parser
        if timeout or self._sock is None or reader is None:
            return super().can_read(timeout)
        if reader.has_data():
            return True
        answer = pending(self._sock)
        return super().can_read(timeout) if answer is None else answer


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


def peeking(cls: type) -> type:
    """`cls` with PeekCheck, unless TLS (bytes on the OS socket are not the reader's data)."""
    if issubclass(cls, redis.SSLConnection) or issubclass(cls, PeekCheck):
        return cls
    return type(f"Peeking{cls.__name__}", (PeekCheck, cls), {})


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
