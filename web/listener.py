"""The Socket.IO queue: directed delivery in, and every local client made whole after a gap.

Chat events reach a worker's clients through Redis pub/sub (web/subscriber.py): the worker's own
channel of every hash tag (the events for its connections, published by the Lua scripts on the
route of each user: common/lua/lib/emit.lua; sharded channels on a Redis Cluster) and the
shared broadcast channel (`stats`). A worker thus decodes only what its own clients receive,
not every event of the cluster. `ChatQueue` is python-socketio's pub/sub manager on these
channels and on the chat's own Redis client (one Redis or a cluster), instead of its
RedisManager, which knows one Redis and one channel.

Pub/sub keeps nothing: whatever is published while a subscription is down (Redis restarting,
the listener's connection killed, a node of the cluster restarting) reaches none of this
worker's clients, although the message is stored and its sender was told `ok`. So every time
Redis confirms the subscription of one of the worker's channels, a gap may lie behind it, and
each local connection is sent a `resumed` snapshot (Store.snapshot) of what came after the last
partner message it was sent. The snapshot is published after the confirmation, so it cannot
fall into the same gap; clients already de-duplicate by `seq`. docs/RELIABILITY.md has the
reasoning and the measured cost.
"""
from __future__ import annotations

import logging
import time

import socketio
from gevent.event import Event
from gevent.pool import Pool

from common import events as ev
from common.keys import USER_ROOM_PREFIX

from .packets import event_packet, send_event
from .roomindex import RoomIndex
from .subscriber import RETRY_FIRST, RETRY_MAX, Subscriber

log = logging.getLogger("web.listener")

# Snapshots run this many at a time after a gap, so a worker with thousands of connections does
# not take all of its Redis pool at once; failed ones are retried after RETRY_FIRST … RETRY_MAX
# (the subscriber's own back-off).
REPLAY_CONCURRENCY = 8
# Events after which a connection knows its chat: from then on a message of that chat may reach
# it by the same worker's own hand (Listener.ready), and `partner_left` ends that.
OPENING_EVENTS = frozenset((ev.MATCHED, ev.RESUMED, ev.PARTNER_LEFT))
# Keys of the `seen` map beyond the local connections that trigger a pruning pass.
SEEN_SLACK = 1024
# A broadcast (`stats`, to every connection of the worker) goes out this many connections at a
# time, with a pause between: sent at once to 1000 connections it held the worker's loop for
# ~30 ms every STATS_INTERVAL (1000 frames to write), and every chat message arriving meanwhile
# waited: the median 10-s p99 delivery at 1000 users was 51 - 71 ms with broadcasts, 17 ms without
# (loadtests/RESULTS.md). Paced, the loop is never held for more than one chunk.
BROADCAST_CHUNK = 32
BROADCAST_PAUSE = 0.002


class ChatQueue(RoomIndex, socketio.PubSubManager):
    """python-socketio's pub/sub manager on the chat's channels and Redis client (and an index of
    each connection's rooms: web/roomindex.py)."""

    name = "chat"

    def __init__(self, store, settings):
        super().__init__(channel=settings.socketio_channel)
        self.store = store
        self.worker_channels = tuple(store.k.worker_channels(settings.worker_id))
        self.listener: Listener | None = None
        self.subscriber: Subscriber | None = None
        self._broadcasts: dict[str, dict] = {}  # event -> the latest broadcast not yet sent
        self._pacing = False
        # users online as the latest `stats` broadcast said (STATS_INTERVAL old at most): what
        # a Next tells the user with `waiting`, without a round trip to the home slot
        self.online: int | None = None

    def initialize(self):
        self.subscriber = Subscriber(
            self.store.r, list(self.worker_channels), self.channel,
            on_subscribed=lambda channel: self.listener and self.listener.subscribed(channel),
            sharded=bool(self.store.s.redis_cluster_url),
            name=self.store.k.client_name("pubsub", self.store.s.worker_id))
        super().initialize()  # starts _thread, which reads _listen

    @property
    def subscribed(self) -> bool:
        return self.subscriber is not None and self.subscriber.subscribed

    def _publish(self, data):
        # python-socketio's own queued operations (none on the chat's path): a broadcast
        self.store.r.publish(self.channel, self.json.dumps(data))

    def _listen(self):
        yield from self.subscriber.listen()

    def _handle_emit(self, message):
        if message.get("room") is None and message.get("callback") is None:
            return self._broadcast(message)
        listener = self.listener
        if listener is not None:
            if listener.holds(message, message.get("room")):
                return None
            event = message.get("event")
            if event == ev.MESSAGE:
                listener.track(message)
            elif event in OPENING_EVENTS:
                listener.note_opening(message)
        return super()._handle_emit(message)

    def _handle_disconnect(self, message):
        if self.listener is not None and self.listener.holds(message, message.get("sid")):
            return None
        return super()._handle_disconnect(message)

    def _broadcast(self, message) -> None:
        """Hand a broadcast to the pacer: the latest one of each event wins (the counts of a
        `stats` still waiting are stale once newer ones come)."""
        event = message.get("event")
        self._broadcasts[event] = message
        if event == ev.STATS:
            data = message.get("data") or [None]
            online = data[0].get("online") if isinstance(data[0], dict) else None
            if type(online) is int:
                self.online = online
        if not self._pacing:
            self._pacing = True
            self.server.start_background_task(self._pace)

    def _pace(self) -> None:
        """Send the waiting broadcasts to every local connection, a chunk at a time."""
        try:
            while self._broadcasts:
                _, message = self._broadcasts.popitem()
                namespace = message.get("namespace") or "/"
                if namespace != "/":
                    continue  # the chat has only `/`
                data = message.get("data") or []
                data = data[0] if len(data) == 1 else tuple(data)
                skip = message.get("skip_sid")
                skip = set(skip) if isinstance(skip, list) else {skip}
                sids = [sid for sid, _ in self.get_participants(namespace, None) if sid not in skip]
                # encoded once for all (the local send, not the queue's: this is the queue's end)
                pkt = event_packet(message["event"], data)
                for i in range(0, len(sids), BROADCAST_CHUNK):
                    for sid in sids[i:i + BROADCAST_CHUNK]:
                        send_event(self.server, sid, pkt)
                    self.server.sleep(BROADCAST_PAUSE)
        except Exception:
            log.exception("broadcast to local connections failed")
        finally:
            self._pacing = False


class Listener:
    """What each local connection was last sent, and the replay loop after a gap."""

    def __init__(self, socketio_, store, conns, settings):
        self.server = socketio_.server
        self.manager = socketio_.server.manager
        self.store = store
        self.conns = conns
        self.settings = settings
        self.worker_channels = frozenset(self.manager.worker_channels)
        # sid -> (room, highest seq of a partner `message` this worker delivered to it)
        self.seen: dict[str, tuple[str, int]] = {}
        # sid -> the room it has been sent `matched` or `resumed` (chatting) of, through the
        # queue: everything published to it before that has reached it
        self.opened: dict[str, str] = {}
        # room -> the users this worker told (`matched`, `resumed`) they are in it, at most its
        # two: when both are, each one's partner is known here without asking Redis (partner_of)
        self.chatters: dict[str, tuple[str, ...]] = {}
        self.confirmed: dict[str, int] = {}  # worker channel -> SUBSCRIBE confirmations seen
        self.replays = 0  # snapshots sent after a gap
        self._wake = Event()
        self._before_gap: dict[str, tuple[str, int]] = {}
        self._unfinished: dict[str, str] = {}  # sid -> user not yet sent its snapshot
        # user room -> this worker's own deliveries to it waiting for message.lua's answer,
        # and the queue's events for that user that came meanwhile (Listener.hold)
        self._sending: dict[str, int] = {}
        self._held: dict[str, list[dict]] = {}

    def track(self, message: dict) -> None:
        """Remember the partner message's seq for each local connection of its user (or for
        the one connection it was sent to)."""
        try:
            to = message["room"]
            data = message["data"][0]
            room, seq = data["room"], data["seq"]
        except (KeyError, IndexError, TypeError):
            return
        if not isinstance(to, str):
            return
        self.delivered(self.sids_of(to), room, seq)

    def sids_of(self, to: str) -> tuple[str, ...]:
        """The local connections of a user room (`u:<user>`) or of one sid, in the order of
        python-socketio's room table (read from its index: web/roomindex.py)."""
        return self.manager.members.get(("/", to), ())

    def delivered(self, sids, room: str, seq: int) -> None:
        """These connections were sent the partner's message `seq` of `room`."""
        # Per connection, not per user: a user's new connection has been sent nothing yet, and
        # its own resume may be the snapshot that fell into a gap.
        seen = self.seen
        for sid in sids:
            prev = seen.get(sid)
            if prev is None or prev[0] != room or prev[1] < seq:
                seen[sid] = (room, seq)
        if len(seen) > 2 * len(self.conns) + SEEN_SLACK:
            self._prune()

    def _prune(self) -> None:
        local = {sid for sid, _ in self.conns.items()}
        self.seen = {sid: v for sid, v in self.seen.items() if sid in local}
        self.opened = {sid: v for sid, v in self.opened.items() if sid in local}
        open_rooms = set(self.opened.values())
        self.chatters = {room: v for room, v in self.chatters.items() if room in open_rooms}

    def partner_of(self, user: str, room: str) -> str | None:
        """The other user of `room` when this worker told both of them they are in it. A room
        is told only to its two users (open.lua, snapshot.lua), so two users told one room are
        each other's partner: the first typing and message of a chat then need not ask Redis
        who the partner is (web/sockets.py partner_here; message.lua checks it all the same)."""
        users = self.chatters.get(room)
        if users is None or len(users) != 2:
            return None
        if users[0] == user:
            return users[1]
        return users[0] if users[1] == user else None

    def note_opening(self, message: dict) -> None:
        """`matched`/`resumed` tell connections their chat (and a snapshot what they have of
        it); `partner_left` that it is over."""
        try:
            to, data = message["room"], message["data"][0]
            room = data.get("room")
        except (KeyError, IndexError, TypeError, AttributeError):
            return
        if not isinstance(to, str):
            return
        sids = self.sids_of(to)
        event = message.get("event")
        if isinstance(room, str):
            if event == ev.PARTNER_LEFT:
                self.chatters.pop(room, None)
            elif to.startswith(USER_ROOM_PREFIX) and (
                    event == ev.MATCHED or data.get("state") == "chatting"):
                user = to[len(USER_ROOM_PREFIX):]
                users = self.chatters.get(room, ())
                if user not in users and len(users) < 2:
                    self.chatters[room] = (*users, user)
        for sid in sids:
            if event == ev.PARTNER_LEFT:
                # a late one of an older chat leaves the connection's new chat as it is
                if not isinstance(room, str) or self.opened.get(sid) == room:
                    self.opened.pop(sid, None)
            elif not isinstance(room, str) or (
                    event == ev.RESUMED and data.get("state") != "chatting"):
                self.opened.pop(sid, None)
            else:
                self.opened[sid] = room
        if event == ev.RESUMED and isinstance(room, str):
            got = [m.get("seq", 0) for m in data.get("history") or ()
                   if isinstance(m, dict) and not m.get("mine")]
            if got:
                self.delivered(sids, room, max(got))
        if len(self.opened) + len(self.chatters) > 3 * len(self.conns) + SEEN_SLACK:
            self._prune()

    def ready(self, user: str, room: str) -> tuple[tuple[str, ...], int] | None:
        """`user`'s connections here, and the highest seq of `room` all of them were sent,
        when each of them has been told it is in `room` (else None: a message for them must go
        through the queue, behind whatever is still on its way to them)."""
        sids = self.sids_of(USER_ROOM_PREFIX + user)
        if not sids:
            return None
        low = None
        for sid in sids:
            if self.opened.get(sid) != room:
                return None
            seen = self.seen.get(sid)
            got = seen[1] if seen is not None and seen[0] == room else 0
            low = got if low is None else min(low, got)
        return sids, low

    def forget(self, sid: str) -> None:
        self.opened.pop(sid, None)

    def hold(self, to: str) -> None:
        """A message for user room `to` may be emitted by this worker itself once message.lua
        answers: until then (release), the queue's events for that user wait here. Published
        after the script, a `partner_left` would otherwise overtake the message, and a page
        that has ended the chat drops it (the queue path keeps the scripts' order)."""
        self._sending[to] = self._sending.get(to, 0) + 1

    def release(self, to: str) -> None:
        """The delivery for `to` is done: what the queue brought meanwhile goes out, in order."""
        left = self._sending.get(to, 0) - 1
        if left > 0:
            self._sending[to] = left
            return
        self._sending.pop(to, None)
        for message in self._held.pop(to, ()):
            try:
                if message.get("method") == "disconnect":
                    self.manager._handle_disconnect(message)
                else:
                    self.manager._handle_emit(message)
            except Exception:
                log.exception("a held queue event for %s failed", to)

    def holds(self, message: dict, to) -> bool:
        """Keep `message` (to a user room or one sid) while a delivery to its user is pending."""
        if not self._sending or not isinstance(to, str):
            return False
        if not to.startswith(USER_ROOM_PREFIX):
            user = self.conns.user_of(to)
            to = USER_ROOM_PREFIX + user if user else None
        if to not in self._sending:
            return False
        self._held.setdefault(to, []).append(message)
        return True

    def subscribed(self, channel: str) -> None:
        """Redis confirmed a subscription: what is published on it from now on reaches us."""
        if channel not in self.worker_channels:
            return  # the broadcast channel: nothing to replay
        again = self.confirmed.get(channel, 0) > 0
        self.confirmed[channel] = self.confirmed.get(channel, 0) + 1
        if again:
            log.info("queue listener subscribed again to %s: replaying to %d connections",
                     channel, len(self.conns))
        self._gap()

    def _gap(self) -> None:
        """A gap may lie behind: every local connection gets a snapshot."""
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
            shown = self.opened.get(sid)
            try:
                if self._replaced(user, sid):
                    return
                if shown is not None and shown != rooms.get(user):
                    # the chat on its screen is no longer the user's: its `partner_left` may
                    # have fallen into the gap (a snapshot would only say "idle" or show the
                    # next chat, not that the stranger left, nor why); told first, so that on
                    # one Redis it comes before the snapshot
                    self.store.ended(user, shown, sid)
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


def install(socketio_, store, conns, settings) -> Listener:
    """Make every local client whole after the queue may have missed something."""
    listener = Listener(socketio_, store, conns, settings)
    socketio_.server.manager.listener = listener
    socketio_.start_background_task(listener.replay_loop)
    return listener
