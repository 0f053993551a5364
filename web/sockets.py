"""Socket.IO event handlers: validate, do one atomic step in Redis, emit to the partner's room.

Refusals follow docs/protocol.md: a failed ack when the client asked for one, else an `error`
event; never a traceback, and the worker keeps serving.
"""
from __future__ import annotations

import functools
import logging
import time

import gevent.local
from flask import request
from flask_socketio import SocketIO, join_room
from redis.exceptions import RedisError

from common import events as ev
from common.config import Settings
from common.keys import user_room
from common.protocol import (Refused, parse_auth, parse_empty, parse_join, parse_message,
                             parse_report, parse_typing)
from common.store import Store
from common.tokens import Tokens

from .delivery import PublishedMarks
from .presence import Connections
from .ratelimit import TokenBucket

log = logging.getLogger("web.sockets")


def _track_ack_requests(socketio: SocketIO) -> gevent.local.local:
    """Record, per handler greenlet, whether the client asked for an ack.

    python-socketio does not tell a handler whether its return value will be sent back; it runs
    the handler inside `Server._handle_event_internal(…, id)` in the same greenlet, so wrapping
    that method lets a refusal choose between a failed ack and an `error` event.
    tests/test_validation.py fails if a library update breaks this.
    """
    state = gevent.local.local()
    server = socketio.server
    original = server._handle_event_internal

    def wrapped(srv, sid, eio_sid, data, namespace, id):
        state.ack = id is not None
        if data and (not isinstance(data[0], str) or data[0] in server.reserved_events):
            # A client may not fire `connect`/`disconnect` handlers, nor name an event with
            # anything but a string: route them to the catch-all, which answers unknown_event.
            data = ["\x00not-an-event", *data[1:]]
        return original(srv, sid, eio_sid, data, namespace, id)

    server._handle_event_internal = wrapped
    return state


def register(socketio: SocketIO, store: Store, settings: Settings, tokens: Tokens,
             conns: Connections, marks: PublishedMarks) -> None:
    ack_state = _track_ack_requests(socketio)
    buckets: dict[str, TokenBucket] = {}
    server = socketio.server

    def send_self(event: str, data: dict) -> None:
        """To this connection only, without a trip through the message queue."""
        server.emit(event, data, to=request.sid, namespace="/", ignore_queue=True)

    def refuse(code: str):
        if getattr(ack_state, "ack", False):
            return ev.failed(code)
        send_self(ev.ERROR, ev.error(code))
        return None

    def handler(event: str, limited: bool = True):
        """Register `fn` for `event` with rate limiting and the refusal rules around it."""
        def deco(fn):
            @functools.wraps(fn)
            def run(*args):
                user = conns.user_of(request.sid)
                if user is None:
                    return refuse("internal")
                if limited:
                    bucket = buckets.get(request.sid)
                    if bucket is not None and not bucket.take():
                        return refuse("rate_limited")
                try:
                    return fn(user, args[0] if args else None)
                except Refused as exc:
                    return refuse(exc.code)
                except RedisError as exc:
                    log.warning("%s from %s: redis unavailable: %s", event, user, exc)
                    return refuse("unavailable")
                except Exception:
                    log.exception("%s from %s failed", event, user)
                    return refuse("internal")
            socketio.on_event(event, run)
            return fn
        return deco

    @socketio.on("connect")
    def on_connect(auth=None):
        token, since = parse_auth(auth)
        known = tokens.verify(token)
        user = known or tokens.new_user()
        sid = request.sid
        conns.add(sid, user)
        buckets[sid] = TokenBucket(settings.control_rate, settings.control_burst)
        join_room(user_room(user))
        try:
            online = store.touch([user])
            send_self(ev.HELLO, {"user": user, "token": tokens.sign(user), "online": online,
                                 "worker": settings.worker_id})
            if known:
                send_self(ev.RESUMED, store.state(user, since))
        except RedisError as exc:
            log.warning("connect of %s: redis unavailable: %s", user, exc)
            send_self(ev.HELLO, {"user": user, "token": tokens.sign(user), "online": 0,
                                 "worker": settings.worker_id})
            send_self(ev.ERROR, ev.error("unavailable"))

    @socketio.on("disconnect")
    def on_disconnect(reason=None):
        sid = request.sid
        buckets.pop(sid, None)
        user, last_here = conns.remove(sid)
        if user and last_here:
            try:
                store.touch([user])  # the grace period starts now
            except RedisError as exc:
                log.warning("disconnect of %s: redis unavailable: %s", user, exc)

    @handler(ev.JOIN)
    def on_join(user, data):
        interests = parse_join(data)
        state, online = store.join(user, interests)
        if state == "chatting":
            raise Refused("already_chatting")
        send_self(ev.WAITING, {"online": online})
        return {"ok": True}

    @handler(ev.MESSAGE, limited=False)  # rate-limited per user in message.lua
    def on_message(user, data):
        msg_id, text = parse_message(data, settings.max_message_len)
        res = store.message(user, msg_id, text, request.sid)
        if res.status in ("not_chatting", "rate_limited"):
            raise Refused(res.status)
        if res.partner:  # a new message, or a stored one whose first emit never happened
            socketio.emit(ev.MESSAGE, {"id": msg_id, "room": res.room, "text": res.text,
                                       "ts": res.ts, "seq": res.seq},
                          to=user_room(res.partner))
            marks.add(user, msg_id)
        return {"ok": True, "id": msg_id, "ts": res.ts, "seq": res.seq}

    @handler(ev.TYPING)
    def on_typing(user, data):
        typing = parse_typing(data)
        partner = store.partner_of(user)
        if not partner:
            raise Refused("not_chatting")
        socketio.emit(ev.TYPING, {"typing": typing}, to=user_room(partner))
        return {"ok": True}

    def end(user, data, reason: str, requeue: bool):
        parse_empty(data)
        partner, room = store.end_chat(user, reason, requeue)
        if partner:
            socketio.emit(ev.PARTNER_LEFT, {"reason": reason, "room": room},
                          to=user_room(partner))
        if requeue:
            send_self(ev.WAITING, {"online": store.online()})
        return {"ok": True}

    @handler(ev.NEXT)
    def on_next(user, data):
        return end(user, data, ev.REASON_NEXT, requeue=True)

    @handler(ev.LEAVE)
    def on_leave(user, data):
        return end(user, data, ev.REASON_LEFT, requeue=False)

    @handler(ev.REPORT)
    def on_report(user, data):
        reason = parse_report(data)
        if not store.report(user, reason, int(time.time() * 1000)):
            raise Refused("not_chatting")
        return {"ok": True}

    @socketio.on("*")
    def on_unknown(event, *args):
        bucket = buckets.get(request.sid)
        if bucket is not None and not bucket.take():
            return refuse("rate_limited")
        log.info("unknown event %r from %s", str(event)[:64], conns.user_of(request.sid))
        return refuse("unknown_event")

    @socketio.on_error_default
    def on_error(exc):  # a handler above let something escape: log it, tell the client little
        log.exception("unhandled error in a socket handler: %s", exc)
        return refuse("internal")
