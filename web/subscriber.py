"""The web worker's pub/sub reader for directed delivery, on one Redis or on a Redis Cluster.

A worker reads its own channels (Keys.worker_channels: one per hash tag; on a cluster they are
sharded channels, SSUBSCRIBEd on the master of their tag's slot) and the broadcast channel
(classic SUBSCRIBE: on a cluster a PUBLISH reaches subscribers on every node, so one node is
enough). One reader per node holds one connection to it, subscribed to the channels that node
serves, and all readers feed one queue that `listen` drains: a slow or failed node delays no other,
and a channel's messages keep their order (one channel is on one connection at a time).

Pub/sub keeps nothing: what is published while a channel is not subscribed is lost. So every
confirmation of a (s)subscribe reaches `on_subscribed`, in the stream's order (after the messages
read before it), for the caller to replay state from then on.

Readers are threads, so the tests can run them as such; the web worker is monkey-patched by gevent
first thing (web/__main__.py), which makes them greenlets and the queue cooperative.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ConnectionError, MovedError, RedisError
from redis.retry import Retry

from common.redisconn import readable

log = logging.getLogger("web.subscriber")

# Back-off between attempts to connect and subscribe again after a lost connection; also the
# shortest spacing of two reads of a cluster's slot map.
RETRY_FIRST = 0.1
RETRY_MAX = 1.0
# A reader waits this long for data before it looks at its plan (a new one from a changed slot
# map) and at close(); each wait is one poll, so this is also most of the idle cost.
POLL = 1.0
# A silent connection gets a PING after this long, and is given up after as long again without a
# byte: a node that vanished without closing the TCP connection is noticed within 10 s.
PING_AFTER = 5.0
DEAD_AFTER = 5.0

# What of the client's connection settings a pub/sub connection takes: where and how to connect.
# The rest (cluster hooks, maintenance notifications, decoding, retries) is the client's own.
_CONNECTION_KEYS = frozenset((
    "host", "port", "path", "db", "username", "password", "credential_provider",
    "socket_connect_timeout", "socket_timeout", "socket_keepalive", "socket_keepalive_options",
    "client_name"))

_MESSAGE = (b"message", b"smessage")
_SUBSCRIBED = (b"subscribe", b"ssubscribe")
_UNSUBSCRIBED = (b"unsubscribe", b"sunsubscribe")


def _connector(pool: redis.ConnectionPool,
               name: str | None = None) -> Callable[[], redis.Connection]:
    """A factory of fresh, unpooled connections like the pool's, for one subscriber's reader.

    Unpooled and without retries: the reader alone decides when to reconnect, so every new
    subscription is one it sent and saw confirmed (redis-py's PubSub reconnects and subscribes
    again inside a read). RESP2 and bytes: messages are plain arrays, payloads stay undecoded.
    `name`: the CLIENT SETNAME of each (Keys.client_name), so that CLIENT LIST tells whose
    listener a connection is.
    """
    kwargs = {k: v for k, v in pool.connection_kwargs.items()
              if k in _CONNECTION_KEYS or k.startswith("ssl")}
    kwargs.update(decode_responses=False, protocol=2, health_check_interval=0,
                  retry=Retry(NoBackoff(), 0))
    if name:
        kwargs["client_name"] = name
    cls = pool.connection_class
    if issubclass(cls, redis.Connection):  # TCP (or TLS), not a unix socket
        kwargs["socket_keepalive"] = True
    return lambda: cls(**kwargs)


class Subscriber:
    """Every message of `channels` (sharded on a cluster) and `broadcast`, from every node."""

    def __init__(self, client: redis.Redis | RedisCluster, channels: list[str] | tuple[str, ...],
                 broadcast: str, on_subscribed: Callable[[str], None],
                 sharded: bool | None = None, name: str | None = None):
        """Start reading at once. `sharded` (default: whether `client` is a cluster client) says
        whether `channels` are SSUBSCRIBEd; the broadcast channel never is. On a cluster a
        sharded channel is read on the master of its slot, the others on the master of the
        broadcast channel's slot. `name`: the client name of every connection it opens."""
        self._client = client
        self._name = name
        self._cluster = isinstance(client, RedisCluster)
        sharded = self._cluster if sharded is None else sharded
        self._channels = {c.encode(): sharded for c in channels}
        self._channels[broadcast.encode()] = False
        self._broadcast = broadcast.encode()
        self._on_subscribed = on_subscribed
        # a payload (bytes), a channel Redis confirmed (str), or None: closed
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._replan = threading.Event()
        self._readers: dict[str, _Reader] = {}
        self._planner = None
        try:
            self._assign()
        except RedisError as exc:  # a slot not covered yet: the planner reads the map again
            log.warning("pub/sub: no node for every channel yet (%s); retrying", exc)
            self._replan.set()
        if self._cluster:
            self._planner = threading.Thread(target=self._plan_loop, name="pubsub planner",
                                             daemon=True)
            self._planner.start()

    # the consumer -------------------------------------------------------------------------------
    def listen(self) -> Iterator[bytes]:
        """Yield each message's payload, forever (until close); call on_subscribed in between."""
        get = self._queue.get
        while True:
            item = get()
            if type(item) is bytes:
                yield item
            elif item is None:
                self._queue.put(None)  # for any other listener
                return
            else:
                try:
                    self._on_subscribed(item)
                except Exception:
                    log.exception("on_subscribed(%s) failed", item)

    @property
    def subscribed(self) -> bool:
        """Whether every channel is subscribed right now (a gap is under way when not)."""
        confirmed: set[bytes] = set()
        for reader in list(self._readers.values()):
            confirmed |= reader.confirmed
        return confirmed >= self._channels.keys()

    def close(self, timeout: float = POLL + 1) -> None:
        """Stop every reader (each within one POLL) and end listen()."""
        self._stop.set()
        self._replan.set()
        self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in [self._planner, *self._readers.values()]:
            if t is not None and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    # the plan: which node reads which channel ---------------------------------------------------
    def _assign(self) -> None:
        """Give each node's reader the channels it serves now; start and retire readers."""
        plan: dict[str, dict[bytes, bool]] = {}
        for channel, sharded in self._channels.items():
            node = self._node_of(channel if sharded else self._broadcast)
            plan.setdefault(node, {})[channel] = sharded
        for name in [n for n in self._readers if n not in plan]:
            self._readers.pop(name).wanted = {}  # it unsubscribes nothing: it hangs up
        for name, wanted in plan.items():
            reader = self._readers.get(name)
            if reader is None:
                reader = self._readers[name] = _Reader(self, name, wanted)
                reader.start()
            else:
                reader.wanted = wanted

    def _node_of(self, channel: bytes) -> str:
        if not self._cluster:
            kw = self._client.connection_pool.connection_kwargs
            return kw.get("path") or f"{kw.get('host')}:{kw.get('port')}"
        return self._client.get_node_from_key(channel).name

    def _connect(self, name: str) -> redis.Connection:
        """A new connection to node `name` (a cluster's node is looked up again each time)."""
        if not self._cluster:
            return _connector(self._client.connection_pool, self._name)()
        node = self._client.get_node(node_name=name)
        if node is None:
            raise ConnectionError(f"{name} is no longer a node of the cluster")
        return _connector(self._client.get_redis_connection(node).connection_pool, self._name)()

    def _replan_soon(self) -> None:
        """A reader found its node gone or a channel moved: read the cluster's slot map again."""
        if self._cluster:
            self._replan.set()

    def _plan_loop(self) -> None:
        failing = False
        while True:
            self._replan.wait()
            if self._stop.is_set():
                return
            self._replan.clear()
            try:
                self._client.nodes_manager.initialize()
                self._assign()
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("pub/sub: cannot read the cluster's slot map (%s); retrying", exc)
                failing = True
                self._replan.set()
            if self._stop.wait(RETRY_MAX):
                return


class _Reader(threading.Thread):
    """One node: one connection at a time, (s)subscribed to the channels of `wanted`."""

    def __init__(self, owner: Subscriber, node: str, wanted: dict[bytes, bool]):
        super().__init__(name=f"pubsub {node}", daemon=True)
        self.owner, self.node = owner, node
        self.wanted = wanted  # channel -> sharded; replaced whole by the plan; empty: retire
        self.confirmed: frozenset[bytes] = frozenset()  # replaced whole: read by other threads
        self._delay = RETRY_FIRST
        self._down_since: float | None = None

    def run(self) -> None:
        stop = self.owner._stop
        while not stop.is_set() and self.wanted:
            conn = None
            try:
                conn = self.owner._connect(self.node)
                conn.connect()
                self._read(conn)
            except Exception as exc:
                if stop.is_set():
                    break
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    if isinstance(exc, (RedisError, OSError)):
                        log.warning("pub/sub on %s lost (%s): subscribing again", self.node, exc)
                    else:
                        log.exception("pub/sub on %s failed: subscribing again", self.node)
                self.owner._replan_soon()
            finally:
                self.confirmed = frozenset()
                if conn is not None:
                    conn.disconnect()
            if stop.wait(self._delay):
                break
            self._delay = min(self._delay * 2, RETRY_MAX)

    def _read(self, conn: redis.Connection) -> None:
        """Subscribe and read until the plan retires this reader, close(), or an error."""
        stop, put, ours = self.owner._stop, self.owner._queue.put, self.owner._channels
        sent: dict[bytes, bool] = {}  # what this connection was asked to subscribe
        leaving: set[bytes] = set()  # unsubscribed by us, not yet confirmed
        applied = None  # the plan `sent` was last made to follow
        last = time.monotonic()
        pinged = False
        while not stop.is_set():
            wanted = self.wanted
            if not wanted:
                return
            if wanted is not applied:
                self._follow(conn, wanted, sent, leaving)
                applied = wanted
            if not readable(conn, POLL):
                idle = time.monotonic() - last
                if idle > PING_AFTER + DEAD_AFTER:
                    raise ConnectionError(f"no answer from {self.node} in {idle:.0f} s")
                if idle > PING_AFTER and not pinged:
                    conn.send_command("PING", check_health=False)
                    pinged = True
                continue
            try:
                reply = conn.read_response()
            except (MovedError, AskError) as exc:  # a (s)subscribe refused: its slot is elsewhere
                self._moved([c for c in sent if key_slot(c) == exc.slot_id], sent)
                continue
            last, pinged = time.monotonic(), False
            if not isinstance(reply, list):
                continue  # PONG while nothing is subscribed
            kind, channel = reply[0], reply[1]
            if kind in _MESSAGE:
                if channel in ours:
                    put(reply[2])
            elif kind in _SUBSCRIBED:
                self.confirmed = self.confirmed | {channel}
                put(channel.decode())
                self._delay = RETRY_FIRST
                if self._down_since is not None and self.confirmed >= wanted.keys():
                    log.info("pub/sub on %s subscribed again after %.1f s", self.node,
                             time.monotonic() - self._down_since)
                    self._down_since = None
            elif kind in _UNSUBSCRIBED:
                self.confirmed = self.confirmed - {channel}
                if channel in leaving:
                    leaving.discard(channel)
                else:  # Redis dropped it: its slot left this node
                    self._moved([channel], sent)

    def _follow(self, conn: redis.Connection, wanted: dict[bytes, bool], sent: dict[bytes, bool],
                leaving: set[bytes]) -> None:
        """Send what makes this connection's subscriptions those of `wanted`."""
        commands = []
        for channel, sharded in wanted.items():
            if channel not in sent:
                # one SSUBSCRIBE per channel: a node refuses channels of two slots in one
                commands.append(("SSUBSCRIBE" if sharded else "SUBSCRIBE", channel))
                sent[channel] = sharded
                leaving.discard(channel)
        for channel in [c for c in sent if c not in wanted]:
            commands.append(("SUNSUBSCRIBE" if sent.pop(channel) else "UNSUBSCRIBE", channel))
            leaving.add(channel)
        if commands:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    def _moved(self, channels: list[bytes], sent: dict[bytes, bool]) -> None:
        """These channels are not served here any more: forget them until a new plan."""
        for channel in channels:
            sent.pop(channel, None)
            log.info("pub/sub: %s is no longer served by %s; reading the slot map again",
                     channel.decode(), self.node)
        self.owner._replan_soon()
