"""Redis clients: one Redis (REDIS_URL) or a Redis Cluster (REDIS_CLUSTER_URL), one way each."""
from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from .config import Settings
from .keys import CLUSTER_SHARDS, Keys

POOL_MAX = 100  # Redis connections per process (per node of a cluster)
POOL_WAIT = 10.0  # seconds a command may wait for a free one (one Redis)


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
    return redis.Redis(connection_pool=pool)


def cluster_client(url: str, **kwargs) -> RedisCluster:
    """A Redis Cluster client from one seed node (redis-py finds the others).

    Not a blocking pool: redis-py's cluster client takes an exhausted one for a failed node and
    retries for seconds. A node that fails is given up on after two quick retries (redis-py's
    default, ten with up to 1 s each, held a request 4 - 6 s), so a worker answers `unavailable`
    and the client resumes, as on one Redis.
    """
    kwargs.setdefault("socket_connect_timeout", 5)
    kwargs.setdefault("socket_timeout", 10)
    kwargs.setdefault("max_connections", POOL_MAX)
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
