"""Socket.IO event handlers: validate, do one atomic step in Redis, emit to the partner's room.

Refusals follow docs/protocol.md: a failed ack when the client asked for one, else an `error`
event; never a traceback, and the worker keeps serving.

The handlers are registered on python-socketio's server, not through Flask-SocketIO's
decorators: those push a Flask request context around every event, which cost ~15 % of a web
worker under load (loadtests/RESULTS.md), and the handlers need nothing from Flask but the sid,
which python-socketio passes.
"""
from __future__ import annotations

import functools
import logging
import time

from flask_socketio import SocketIO
from redis.exceptions import RedisError
from socketio import exceptions as sio_errors

from common import events as ev
from common.config import Settings
from common.keys import user_room
from common.moderation import Bans, Hasher, Identity
from common.store import WHERE_TTL, Store
from common.textfilter import TextFilter

from . import metrics, packets
from .drain import close_transport
from .presence import Connections
from .private import new_key
from .protocol import (Refused, parse_auth, parse_empty, parse_join, parse_message,
                       parse_private_join, parse_report, parse_typing)
from .ratelimit import KeyedBuckets
from .tokens import Tokens

log = logging.getLogger("web.sockets")
RETRY_CONNECT_AFTER = 2.0  # s: a connection whose presence or resume failed is closed after
RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # s: back-off of a disconnect Redis refused
RETRY_DISCONNECT_FOR = 120.0  # s: then the reaper takes over
# Connections per user (a token): each is a presence change told to the partner and a resume.
# A page reloads or loses its network a few times a minute at most; a client cycling its
# connection to flood its partner with partner_away/partner_back gets one every 2 s.
CONNECT_RATE, CONNECT_BURST = 0.5, 10


def register(socketio: SocketIO, store: Store, settings: Settings, tokens: Tokens,
             conns: Connections) -> None:
    # Control-event budgets per user, not per connection: a user's connections share one (a
    # token opened on ten sockets gets no more than one), and it outlives the connection (a
    # reconnect does not refill it).
    budgets = KeyedBuckets(settings.control_rate, settings.control_burst)
    connects = KeyedBuckets(CONNECT_RATE, CONNECT_BURST)
    server = socketio.server
    gate = packets.guard(server, settings)
    text_filter = TextFilter.from_settings(settings)  # compiled once; settings checked the list
    log.info("word and link filter: %s", text_filter.describe())
    # sid -> the user's chat as last read from the home slot: messages and typing go straight
    # to the chat's shard (the home slot is not on the message path); a stale entry is noticed
    # there (not_chatting) and read again once.
    rooms: dict[str, str] = {}
    # Moderation: who each connection is (keyed hashes of its browser cookie and address), read
    # once at connect; a banned one is refused there and at join (common/moderation.py).
    hasher = Hasher(settings.secret_key)
    bans = Bans(store.r, store.k)
    idents: dict[str, Identity] = {}
    # sid -> (room, partner) as message.lua last named them: whom to look for on this worker
    partners: dict[str, tuple[str, str]] = {}

    def listener():
        return server.manager.listener  # installed after the handlers (web/listener.py)

    def partner_here(sid: str, user: str, room: str):
        """(partner, their connections here, the highest seq of `room` all were sent) when the
        partner's connections are all on this worker and know they are in `room`, else None.
        The partner: as message.lua last named them, else as this worker told both the room."""
        if listener().opened.get(sid) != room:
            return None
        known = partners.get(sid)
        partner = known[1] if known is not None and known[0] == room else (
            listener().partner_of(user, room))
        if partner is None:
            return None
        ready = listener().ready(partner, room)
        return None if ready is None else (partner, *ready)

    def message_here(sid: str, user: str, msg_id: str, text: str, room: str):
        """store.message, delivered by this worker itself when message.lua says it may: the
        partner's connections were here and had been sent all that was published to them, so
        this emit cannot overtake anything. A connection of theirs that arrived during the
        call has not been told its chat yet: it gets the message through the queue, after its
        `resumed` (a snapshot taken after this message holds it; one before, not)."""
        here = partner_here(sid, user, room)
        # while the script runs, the queue's events for the partner wait (Listener.hold): one
        # published after the script (the chat ended by someone else) must not overtake this
        to = user_room(here[0]) if here else None
        if to:
            listener().hold(to)
        try:
            res = store.message(user, msg_id, text, room,
                                here=(here[0], here[2]) if here else None)  # (partner, delivered)
            if res.status != "ok":
                return res
            if conns.user_of(sid) == user:  # not closed meanwhile: on_disconnect forgot it
                partners[sid] = (res.room, res.partner)
            if res.here:
                deliver_here(res, msg_id, text, told=set(here[1]))
            return res
        finally:
            if to:
                listener().release(to)

    def deliver_here(res, msg_id: str, text: str, told: set[str]) -> None:
        """The message to the partner's connections that were checked (`told`) by this
        worker's hand, and through the queue to any that came during the script."""
        payload = {"id": msg_id, "room": res.room, "text": text, "ts": res.ts, "seq": res.seq}
        sent = []
        for to_sid in listener().sids_of(user_room(res.partner)):
            if to_sid in told:
                send_self(to_sid, ev.MESSAGE, payload)
                sent.append(to_sid)
            else:
                store.publish_to_sid(res.room, to_sid, ev.MESSAGE, payload)
        listener().delivered(sent, res.room, res.seq)
        metrics.MESSAGES_HERE.inc()

    def known_room(sid: str) -> str | None:
        """The connection's chat as this worker last heard it: the room its `matched` or
        `resumed` named (a new chat is known before its first message, without asking the home
        slot), else the one last read from the home slot. The chat's shard checks it."""
        return listener().opened.get(sid) or rooms.get(sid)

    def in_chat(sid: str, user: str, step, done):
        """`step(room)` in the user's chat; None when they are not chatting."""
        room = known_room(sid)
        if room is not None:
            res = step(room)
            if done(res):
                return res
        room = store.room_of(user)
        if not room:
            rooms.pop(sid, None)
            return None
        rooms[sid] = room
        return step(room)

    def on(event: str):
        def deco(fn):
            server.on(event, fn, namespace="/")
            return fn
        return deco

    def send_self(sid: str, event: str, data: dict) -> None:
        """To this connection only, without a trip through the message queue."""
        if not isinstance(sid, str):  # `to=None` would be every connection of the worker
            raise TypeError(f"send_self to {sid!r}")
        packets.send_event(server, sid, packets.event_packet(event, data))

    def refuse(sid: str, code: str):
        metrics.REFUSALS.labels(code).inc()
        gate.charge(sid, code)  # a protocol fault costs the connection's packet budget
        if getattr(gate.acks, "ack", False):
            return ev.failed(code)
        send_self(sid, ev.ERROR, ev.error(code))
        return None

    def guarded(what: str, sid: str, fn, *args):
        """Run a handler body; whatever escapes becomes a refusal, never a dead connection."""
        try:
            return fn(*args)
        except Refused as exc:
            return refuse(sid, exc.code)
        except RedisError as exc:
            metrics.REDIS_ERRORS.labels(what).inc()
            log.warning("%s from %s: redis unavailable: %s", what, conns.user_of(sid), exc)
            return refuse(sid, "unavailable")
        except Exception:
            log.exception("%s from %s failed", what, conns.user_of(sid))
            return refuse(sid, "internal")

    def handler(event: str, limited: bool = True):
        """Register `fn(sid, user, data)` for `event` with rate limiting and the refusal rules."""
        def deco(fn):
            @functools.wraps(fn)
            def run(sid, *args):
                user = conns.user_of(sid)
                if user is None:
                    return refuse(sid, "internal")
                if limited and not budgets.take(user):
                    return refuse(sid, "rate_limited")
                return guarded(event, sid, fn, sid, user, args[0] if args else None)
            on(event)(run)
            return fn
        return deco

    def screen(user: str, text: str) -> None:
        """Refuse a message the word and link filter matches (`filtered`), before Redis sees
        it: the partner gets nothing. It costs the user's control budget (a filtered message
        never reaches message.lua's rate limit), and is counted by reason for the admin."""
        reason = text_filter.check(text)
        if reason is None:
            return
        if not budgets.take(user):
            raise Refused("rate_limited")
        metrics.FILTERED.labels(reason).inc()
        try:
            store.count_filtered(reason, time.strftime("%Y-%m-%d", time.gmtime()))
        except RedisError as exc:  # the count is lost; the refusal stands
            metrics.REDIS_ERRORS.labels("filtered").inc()
            log.warning("filter count: redis unavailable: %s", exc)
        raise Refused("filtered")

    def close_later(sid: str) -> None:
        """Close a connection that is only half a user (its presence or resume failed): the
        client reconnects and does both again, after a pause so that an outage is no loop."""
        socketio.sleep(RETRY_CONNECT_AFTER)
        close_transport(server, sid)

    def disconnect_until_done(user: str, sid: str, draining: bool) -> None:
        """A disconnect Redis refused is retried: a stale live sid would keep the user 'here'."""
        delay, deadline = RETRY_FIRST, time.monotonic() + RETRY_DISCONNECT_FOR
        while time.monotonic() < deadline:
            socketio.sleep(delay)
            try:
                store.disconnect(user, sid, draining=draining)
                return
            except RedisError:
                delay = min(delay * 2, RETRY_MAX)
        log.warning("disconnect of %s: gave up; the reaper ends it after the grace", user)

    @on("connect")
    def on_connect(sid, environ, auth=None):
        token, since = parse_auth(auth)
        known = tokens.verify(token)
        if known and not connects.take(known):
            log.info("connect of %s refused: reconnecting too often", known)
            # a connect_error shaped like the packet gate's: {message, data: {code, message}}
            raise sio_errors.ConnectionRefusedError(ev.ERRORS["rate_limited"],
                                                    ev.error("rate_limited"))
        ident = hasher.of_environ(environ, settings.trusted_proxies)
        user = known or tokens.new_user()
        try:  # who they are, before presence (match.lua reads it), and any ban: one round trip
            until = bans.admit(user, ident, WHERE_TTL)
        except RedisError:
            until = 0  # store.connect below meets the same outage and says so
        if until:
            metrics.REFUSALS.labels("banned").inc()
            raise sio_errors.ConnectionRefusedError(ev.ERRORS["banned"], ev.banned(until))
        idents[sid] = ident
        conns.add(sid, user)
        server.enter_room(sid, user_room(user), namespace="/")
        code = None  # an error to tell after the hello, which always comes, once
        try:
            # presence, and the takeover of this user's older connections (one live tab)
            online, replaced = store.connect(user, sid, settings.worker_id)
            if replaced:
                log.info("connection of %s replaced %d older one(s)", user, replaced)
            if conns.user_of(sid) != user:  # it closed while connect.lua ran: undo its entry
                store.disconnect(user, sid, draining=conns.draining)
                return
        except RedisError as exc:
            metrics.REDIS_ERRORS.labels("connect").inc()
            log.warning("connect of %s: redis unavailable: %s", user, exc)
            online, code = 0, "unavailable"
        send_self(sid, ev.HELLO, {"user": user, "token": tokens.sign(user), "online": online,
                                  "worker": settings.worker_id})
        if known and code is None:
            try:  # after the hello: published through Redis, in order with chat events
                store.resume(user, since, sid)
            except RedisError as exc:
                metrics.REDIS_ERRORS.labels("resume").inc()
                log.warning("resume of %s: redis unavailable: %s", user, exc)
                code = "unavailable"
            except Exception:
                log.exception("resume of %s failed", user)
                code = "internal"
        if code:
            send_self(sid, ev.ERROR, ev.error(code))
            socketio.start_background_task(close_later, sid)

    @on("disconnect")
    def on_disconnect(sid, reason=None):
        rooms.pop(sid, None)
        idents.pop(sid, None)
        partners.pop(sid, None)
        listener().forget(sid)
        user, _last_here = conns.remove(sid)
        if user is None:
            return
        try:  # the grace period starts when the user's last connection anywhere is gone
            store.disconnect(user, sid, draining=conns.draining)
        except RedisError as exc:
            metrics.REDIS_ERRORS.labels("disconnect").inc()
            log.warning("disconnect of %s: redis unavailable (%s); retrying", user, exc)
            socketio.start_background_task(disconnect_until_done, user, sid, conns.draining)

    def ban_of(sid: str):
        """A failed ack for a connection banned since it connected (refused at connect, it
        could still ask for a chat: random, or private with a friend), else None."""
        until = bans.until(idents.get(sid, Identity()))
        if until:
            metrics.REFUSALS.labels("banned").inc()
            return {"ok": False, "error": ev.banned(until)}
        return None

    @handler(ev.JOIN)
    def on_join(sid, user, data):
        interests = parse_join(data)
        if banned := ban_of(sid):
            return banned
        state, online = store.join(user, interests)
        if state == "chatting":
            raise Refused("already_chatting")
        send_self(sid, ev.WAITING, {"online": online})
        return {"ok": True}

    @handler(ev.MESSAGE, limited=False)  # rate-limited per user in message.lua
    def on_message(sid, user, data):
        received = time.perf_counter()
        msg_id, text = parse_message(data, settings.max_message_len)
        screen(user, text)
        res = in_chat(sid, user, lambda room: message_here(sid, user, msg_id, text, room),
                      lambda res: res.status != "not_chatting")  # stores, emits to the partner
        if res is not None:
            metrics.DELIVERY.observe(time.perf_counter() - received)
            if res.status == "ok":
                metrics.MESSAGES.inc()
        if res is None or res.status in ("not_chatting", "rate_limited"):
            raise Refused(res.status if res is not None else "not_chatting")
        return {"ok": True, "id": msg_id, "ts": res.ts, "seq": res.seq}

    @handler(ev.TYPING)
    def on_typing(sid, user, data):
        typing = parse_typing(data)
        room = known_room(sid)
        here = partner_here(sid, user, room) if room else None
        if here is not None:  # a hint, not stored: no need to ask Redis who the partner is
            for to in here[1]:
                send_self(to, ev.TYPING, {"typing": typing, "room": room})
            return {"ok": True}
        if not in_chat(sid, user, lambda room: store.typing(user, typing, room), bool):
            raise Refused("not_chatting")
        return {"ok": True}

    def end(sid, user, data, reason: str, requeue: bool):
        parse_empty(data)
        rooms.pop(sid, None)
        partners.pop(sid, None)
        listener().forget(sid)
        store.end_chat(user, reason, requeue)  # tells the partner (close.lua)
        if requeue:
            online = server.manager.online  # from the latest `stats`; none yet: ask Redis
            send_self(sid, ev.WAITING, {"online": store.online() if online is None else online})
        return {"ok": True}

    @handler(ev.NEXT)
    def on_next(sid, user, data):
        return end(sid, user, data, ev.REASON_NEXT, requeue=True)

    @handler(ev.LEAVE)
    def on_leave(sid, user, data):
        return end(sid, user, data, ev.REASON_LEFT, requeue=False)

    @handler(ev.REPORT)
    def on_report(sid, user, data):
        reason = parse_report(data)
        now = int(time.time() * 1000)
        if not store.report(user, reason, now):
            raise Refused("not_chatting")
        return {"ok": True, "blocked_until": now + settings.block_ttl * 1000}

    @handler(ev.PRIVATE_CREATE)
    def on_private_create(sid, user, data):
        parse_empty(data)
        if banned := ban_of(sid):
            return banned
        state, key, expires = store.private_create(user, new_key)
        if state == "chatting":
            raise Refused("already_chatting")
        return {"ok": True, "key": key, "expires": expires}

    @handler(ev.PRIVATE_JOIN)
    def on_private_join(sid, user, data):
        key = parse_private_join(data)
        if banned := ban_of(sid):
            return banned
        # the address's keyed hash, made at connect (common/moderation.py); guesses from
        # behind one address share its budget
        addr = idents.get(sid, Identity()).addr or "unknown"
        state, room = store.private_join(user, key, addr)  # open.lua says `matched` to both
        if state != "ok":
            raise Refused(state)
        rooms[sid] = room
        return {"ok": True, "room": room}

    @on("*")
    def on_unknown(event, sid=None, *args):
        if not isinstance(sid, str):  # never answer to anything but the sender's own sid
            return None
        user = conns.user_of(sid)
        if user and not budgets.take(user):
            return refuse(sid, "rate_limited")
        log.debug("unknown event %r from %s", str(event)[:64], user)
        return refuse(sid, "unknown_event")
