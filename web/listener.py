"""The Socket.IO queue listener: directed delivery, and every local client made whole after a gap.

Chat events reach a worker's clients through one Redis pub/sub connection (python-socketio's
RedisManager, patched here), subscribed to two channels: the worker's own (the events for its
connections, published by the Lua scripts on the route of each user: common/lua/lib/emit.lua)
and the shared one (broadcasts). A worker thus decodes only what its own clients receive, not
every event of the cluster. Pub/sub keeps nothing: whatever is published while that subscription is down
(Redis restarting, the listener's connection killed, a shard moving) reaches none of this
worker's clients, although the message is stored and its sender was told `ok`.

So the worker watches its own subscription. Every time Redis confirms the SUBSCRIBE of the
worker's channel (python-socketio's reconnect loop, or redis-py's own silent reconnect inside
`PubSub.listen`), a gap may lie behind it, and each local connection is sent a `resumed`
snapshot (Store.snapshot) of what came after the last partner message it was sent. The snapshot
is published after the confirmation, so it cannot fall into the same gap; clients already
de-duplicate by `seq`. docs/RELIABILITY.md has the reasoning and the measured cost.
"""
from __future__ import annotations

import logging
import time

from gevent.event import Event
from gevent.pool import Pool
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common import events as ev
from common.keys import USER_ROOM_PREFIX

log = logging.getLogger("web.listener")

# The listener's back-off between attempts to subscribe again. python-socketio's own is 1, 2,
# 4 … 60 s, so a Redis restarted after a few seconds was used only seconds later.
RETRY_FIRST = 0.1
RETRY_MAX = 1.0
# redis-py's retries inside one attempt (its default, 10 with up to 1 s each, hides the outage
# from the loop above and delays the resubscription).
REDIS_RETRIES = 1
# Snapshots run this many at a time after a gap, so a worker with thousands of connections does
# not take all of its Redis pool at once; failed ones are retried after RETRY_FIRST … RETRY_MAX.
REPLAY_CONCURRENCY = 8
# Keys of the `seen` map beyond the local connections that trigger a pruning pass.
SEEN_SLACK = 1024


def _subscribed_channel(response) -> str | None:
    """The channel a SUBSCRIBE confirmation is about, or None for any other reply."""
    if not isinstance(response, (list, tuple)) or len(response) < 2:
        return None
    if response[0] not in (b"subscribe", "subscribe", b"ssubscribe", "ssubscribe"):
        return None
    channel = response[1]
    return channel.decode() if isinstance(channel, bytes) else str(channel)


class Listener:
    """The patched manager's state: what each local user was last sent, and the replay loop."""

    def __init__(self, socketio, store, conns, settings):
        self.server = socketio.server
        self.manager = socketio.server.manager
        self.store = store
        self.conns = conns
        self.settings = settings
        # the shared broadcast channel, then this worker's own channel of every hash tag
        self.worker_channels = frozenset(store.k.worker_channels(settings.worker_id))
        self.channels = (self.manager.channel, *sorted(self.worker_channels))
        # sid -> (room, highest seq of a partner `message` this worker delivered to it)
        self.seen: dict[str, tuple[str, int]] = {}
        self.subscribes = 0  # SUBSCRIBE confirmations seen (the first one is the start)
        self.replays = 0  # snapshots sent after a gap
        self._pubsub = None  # the PubSub the listener reads, whatever publishing does
        self._wake = Event()
        self._delay = RETRY_FIRST  # the listener's next back-off
        self._before_gap: dict[str, tuple[str, int]] = {}
        self._unfinished: dict[str, str] = {}  # sid -> user not yet sent its snapshot

    # patches ------------------------------------------------------------------------------------
    def patch(self) -> None:
        m = self.manager
        options = m.redis_options
        options.setdefault("retry", Retry(ExponentialBackoff(cap=RETRY_MAX, base=RETRY_FIRST),
                                          REDIS_RETRIES))
        connect = m._redis_connect

        def redis_connect():
            # python-socketio's _publish calls this after a failed PUBLISH too, replacing
            # manager.pubsub with a fresh, unsubscribed one that /readyz would then report.
            listening = self._pubsub
            connect()
            if listening is not None:
                m.pubsub = listening

        m._redis_connect = redis_connect
        m._redis_listen_with_retries = self._listen_with_retries
        m._listen = self._listen
        handle_emit = m._handle_emit

        def handle_emit_tracked(message):
            if message.get("event") == ev.MESSAGE:
                self._track(message)
            return handle_emit(message)

        m._handle_emit = handle_emit_tracked

    def _track(self, message: dict) -> None:
        """Remember the partner message's seq for each local connection of its user."""
        try:
            to = message["room"]
            data = message["data"][0]
            room, seq = data["room"], data["seq"]
        except (KeyError, IndexError, TypeError):
            return
        if not isinstance(to, str) or not to.startswith(USER_ROOM_PREFIX):
            return
        sids = self.manager.rooms.get("/", {}).get(to)
        if not sids:
            return  # nobody of that user here
        # Per connection, not per user: a user's new connection has been sent nothing yet, and
        # its own resume may be the snapshot that fell into a gap.
        seen = self.seen
        for sid in sids:
            prev = seen.get(sid)
            if prev is None or prev[0] != room or prev[1] < seq:
                seen[sid] = (room, seq)
        if len(seen) > 2 * len(self.conns) + SEEN_SLACK:
            local = {sid for sid, _ in self.conns.items()}
            self.seen = {sid: v for sid, v in seen.items() if sid in local}

    def _listen_with_retries(self):
        """python-socketio's listener loop with a short back-off and a watched SUBSCRIBE."""
        m = self.manager
        while True:
            pubsub = None
            try:
                self._pubsub = None
                m._redis_connect()
                pubsub = self._pubsub = m.pubsub
                handle = pubsub.handle_message

                def watched(response, ignore_subscribe_messages=False, _handle=handle):
                    # the worker's channel carries the chat: its confirmation ends a gap
                    if _subscribed_channel(response) in self.worker_channels:
                        self._subscribed()
                    return _handle(response, ignore_subscribe_messages)

                pubsub.handle_message = watched
                pubsub.subscribe(*self.channels)
                yield from pubsub.listen()
            except Exception as exc:
                delay = self._delay
                log.warning("queue listener lost Redis (%s); subscribing again in %.1f s",
                            exc, delay)
                if pubsub is not None:
                    try:
                        pubsub.reset()
                    except Exception:
                        pass
                time.sleep(delay)
                self._delay = min(delay * 2, RETRY_MAX)

    def _listen(self):
        """python-socketio's `_listen`, for both of the worker's channels."""
        wanted = {c.encode() for c in self.channels}
        for message in self.manager._redis_listen_with_retries():
            if message.get("type") == "message" and message.get("channel") in wanted:
                yield message["data"]

    def _subscribed(self) -> None:
        """Redis confirmed the subscription: anything published from now on reaches us."""
        self.subscribes += 1
        self._delay = RETRY_FIRST
        # What each connection had been sent before the gap. Copied now: a message delivered
        # between this confirmation and the replay must not raise `since` above one lost in it;
        # connections an earlier replay has not reached yet keep that earlier gap's `since`.
        old, new = self._before_gap, dict(self.seen)
        for sid in self._unfinished:
            if sid in old:
                new[sid] = old[sid]
            else:
                new.pop(sid, None)
        self._before_gap = new
        if self.subscribes > 1:
            log.info("queue listener subscribed again: replaying to %d connections",
                     len(self.conns))
        self._wake.set()

    # the replay ---------------------------------------------------------------------------------
    def _local(self) -> dict[str, str]:
        return dict(self.conns.items())

    def replay_loop(self) -> None:
        pending: dict[str, str] = {}
        delay = RETRY_FIRST
        while True:
            if not pending:
                self._wake.wait()
                delay = RETRY_FIRST
            if self._wake.is_set():  # a new gap: everyone again, with what they were sent now
                self._wake.clear()
                pending = self._local()
            started, count = time.monotonic(), len(pending)
            self._unfinished = dict(pending)
            try:
                pending = self._replay(pending)
            except Exception as exc:
                log.warning("replay after a listener gap failed: %s", exc)
            if count:
                log.info("replayed %d connections in %.3f s (%d to retry)", count - len(pending),
                         time.monotonic() - started, len(pending))
            if pending:
                self._wake.wait(timeout=delay)
                delay = min(delay * 2, RETRY_MAX)

    def _replaced(self, user: str, sid: str) -> bool:
        """A takeover's `replaced` and `disconnect` for `sid` may have been published into the
        gap: when the user's connection list no longer has this sid, do here what they would
        have done. (No list at all, e.g. expired on a tab open for days, proves nothing.)"""
        live = self.store.r.hkeys(self.store.k.where(user))
        if not live or sid in live:
            return False
        self._unfinished.pop(sid, None)
        self.server.emit(ev.ERROR, ev.error("replaced"), to=sid, namespace="/",
                         ignore_queue=True)
        self.server.disconnect(sid, namespace="/", ignore_queue=True)
        log.info("connection of %s was replaced during a listener gap: closed", user)
        return True

    def _replay(self, pending: dict[str, str]) -> dict[str, str]:
        """Snapshot each (sid, user) still connected; return those that failed."""
        if not pending:
            return {}
        users = sorted(set(pending.values()))
        rooms = dict(zip(users, self.store.r.hmget(self.store.k.room, users)))
        failed: dict[str, str] = {}

        def one(item):
            sid, user = item
            if self.conns.user_of(sid) != user:
                self._unfinished.pop(sid, None)
                return  # gone, or another user now: its own connect resumed it
            seen = self._before_gap.get(sid)
            since = seen[1] if seen is not None and seen[0] == rooms.get(user) else 0
            try:
                if self._replaced(user, sid):
                    return
                self.store.snapshot(user, since, sid)
                self._unfinished.pop(sid, None)
                self.replays += 1
            except Exception as exc:
                log.warning("snapshot for %s after a listener gap failed: %s", user, exc)
                failed[sid] = user

        pool = Pool(REPLAY_CONCURRENCY)
        for item in pending.items():
            pool.spawn(one, item)
        pool.join()
        return failed


def install(socketio, store, conns, settings) -> Listener:
    """Make every local client whole after the listener may have missed something."""
    listener = Listener(socketio, store, conns, settings)
    if listener.manager.pubsub is not None:
        # The listener greenlet has already connected with python-socketio's loop: ours would not
        # be the one running. web/app.py calls install before anything yields; keep it so.
        log.error("queue listener started before listener.install: gaps are not replayed")
    listener.patch()
    socketio.start_background_task(listener.replay_loop)
    socketio.server.manager.chat_listener = listener
    return listener
