"""The load test's baseline: the thinnest relay that the unchanged locust users accept.

    python loadtests/relay.py --port 5050        (loopback only; run.py starts it)

Why it exists: a load-test figure means little alone on a shared 2-core machine. This relay runs
on the same stack as a product web worker (Flask-SocketIO, async_mode gevent, gevent-websocket,
the same Engine.IO limits and timers from common/config.py, handlers registered on
python-socketio directly with async_handlers=False, the same collector thresholds) but keeps
everything in one process's memory: no Redis, no matcher, no history, no nginx. What the product
costs beyond it is the price of its architecture (docs/protocol.md's guarantees across
processes), measured in the same run (loadtests/README.md, "Baseline").

Served by gevent's pywsgi WSGIServer with geventwebsocket's WebSocketHandler, not gunicorn: the
product's gunicorn worker (web.guard.GuardedWorker, a GeventWebSocketWorker) runs that same
server and handler class per connection; gunicorn would only add an idle arbiter process and the
product's transport guards, and a floor should not carry either.

It speaks as much of docs/protocol.md as loadtests/locustfile.py uses: `hello`, `resumed` with
the messages after `since`, `join` / `waiting` / `matched`, `message` with its ack
{ok, id, ts, seq} (a resent id is acknowledged again, not delivered again), `typing`, `next`,
`leave`, `partner_left` (and `disconnected` after RESUME_GRACE), `report` (acknowledged only).
Left out on purpose: interests do not steer the pairing (first come, first paired; `matched`
still names the shared ones), rate limits, `partner_away`/`partner_back`, `replaced`, `stats`,
`draining`, the packet gate. Tokens are random strings in a dict, not signed.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import ipaddress  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from flask import Flask, jsonify  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from common import config  # noqa: E402
from common import events as ev  # noqa: E402
from web.__main__ import GC_THRESHOLDS  # noqa: E402
from web.protocol import (Refused, parse_auth, parse_empty, parse_join,  # noqa: E402
                          parse_message, parse_typing)

WORKER_ID = "relay"  # in `hello` and /readyz, as a web worker names itself there


class User:
    __slots__ = ("id", "token", "sid", "state", "room", "interests", "gen")

    def __init__(self, uid: str, token: str):
        self.id, self.token = uid, token
        self.sid = None  # the live connection; None while away
        self.state = "idle"  # idle | waiting | chatting
        self.room = None
        self.interests: list[str] = []
        self.gen = 0  # connections so far: a grace timer belongs to one absence


class Room:
    __slots__ = ("id", "members", "shared", "msgs", "ids")

    def __init__(self, rid: str, a: User, b: User):
        self.id, self.members = rid, (a, b)
        self.shared = [i for i in a.interests if i in b.interests]
        self.msgs: list[tuple] = []  # (id, seq, text, ts, sender id); seq = index + 1
        self.ids: dict[str, tuple] = {}  # message id -> its entry, for a resend

    def other(self, user: User) -> User:
        a, b = self.members
        return b if user is a else a


class Relay:
    """All state of the chat, in one process: every change and its emits run without a yield,
    so a `resumed` snapshot and the live events after it can neither overlap nor miss."""

    def __init__(self, server, grace: float, max_len: int):
        self.server, self.grace, self.max_len = server, grace, max_len
        self.by_sid: dict[str, User] = {}
        self.by_token: dict[str, User] = {}
        self.queue: dict[str, User] = {}  # waiting users, oldest first
        self.rooms = itertools.count(1)

    def send(self, user: User, event: str, data: dict) -> None:
        if user.sid is not None:
            self.server.emit(event, data, to=user.sid, namespace="/")

    # -- connections
    def connect(self, sid, environ, auth=None):
        token, since = parse_auth(auth)
        user = self.by_token.get(token) if token else None
        known = user is not None
        if not known:
            token = secrets.token_urlsafe(18)
            user = self.by_token[token] = User(secrets.token_hex(8), token)
        user.sid, user.gen = sid, user.gen + 1
        self.by_sid[sid] = user
        self.send(user, ev.HELLO, {"user": user.id, "token": user.token,
                                   "online": len(self.by_sid), "worker": WORKER_ID})
        if not known:
            return
        snap = {"state": user.state}
        if user.state == "chatting":
            room = user.room
            snap.update(room=room.id, interests=room.shared,
                        partner_away=room.other(user).sid is None,
                        history=[{"id": m[0], "seq": m[1], "text": m[2], "ts": m[3],
                                  "mine": m[4] == user.id} for m in room.msgs[since:]])
        self.send(user, ev.RESUMED, snap)
        if user.state == "waiting":
            self.enqueue(user)

    def disconnect(self, sid, reason=None):
        user = self.by_sid.pop(sid, None)
        if user is None or user.sid != sid:  # an older connection of a user who came back
            return
        user.sid = None
        self.queue.pop(user.id, None)  # nobody is matched with a closed tab
        if user.state != "idle":
            gevent.spawn_later(self.grace, self.expire, user, user.gen)

    def expire(self, user: User, gen: int) -> None:
        if user.gen != gen or user.sid is not None:
            return  # came back meanwhile
        if user.state == "chatting":
            self.end(user, ev.REASON_DISCONNECTED)
        user.state = "idle"

    # -- pairing
    def enqueue(self, user: User) -> None:
        self.queue.pop(user.id, None)
        user.state, user.room = "waiting", None
        if not self.queue:
            self.queue[user.id] = user
            return
        partner = self.queue.pop(next(iter(self.queue)))
        room = Room(f"r{next(self.rooms)}", partner, user)
        for u in room.members:
            u.state, u.room = "chatting", room
            self.send(u, ev.MATCHED, {"room": room.id, "interests": room.shared})

    def end(self, user: User, reason: str) -> None:
        """End the user's chat (if any): the partner is told and is idle."""
        if user.state == "chatting":
            room = user.room
            partner = room.other(user)
            partner.state, partner.room = "idle", None
            self.send(partner, ev.PARTNER_LEFT, {"reason": reason, "room": room.id})
        self.queue.pop(user.id, None)
        user.state, user.room = "idle", None

    # -- client events: (user, data) -> ack
    def join(self, user, data):
        interests = parse_join(data)
        if user.state == "chatting":
            raise Refused("already_chatting")
        if interests is not None:
            user.interests = interests
        self.send(user, ev.WAITING, {"online": len(self.by_sid)})
        self.enqueue(user)
        return {"ok": True}

    def message(self, user, data):
        mid, text = parse_message(data, self.max_len)
        if user.state != "chatting":
            raise Refused("not_chatting")
        room = user.room
        m = room.ids.get(mid)
        if m is None or m[4] != user.id:
            m = (mid, len(room.msgs) + 1, text, int(time.time() * 1000), user.id)
            room.msgs.append(m)
            room.ids[mid] = m
            self.send(room.other(user), ev.MESSAGE,
                      {"id": mid, "room": room.id, "text": text, "ts": m[3], "seq": m[1]})
        return {"ok": True, "id": mid, "ts": m[3], "seq": m[1]}

    def typing(self, user, data):
        on = parse_typing(data)
        if user.state != "chatting":
            raise Refused("not_chatting")
        self.send(user.room.other(user), ev.TYPING, {"typing": on, "room": user.room.id})
        return {"ok": True}

    def next(self, user, data):
        parse_empty(data)
        self.end(user, ev.REASON_NEXT)
        self.send(user, ev.WAITING, {"online": len(self.by_sid)})
        self.enqueue(user)
        return {"ok": True}

    def leave(self, user, data):
        parse_empty(data)
        self.end(user, ev.REASON_LEFT)
        return {"ok": True}

    def report(self, user, data):
        return {"ok": True}

    def register(self) -> None:
        s = self.server
        s.on("connect", self.connect, namespace="/")
        s.on("disconnect", self.disconnect, namespace="/")
        for name, fn in ((ev.JOIN, self.join), (ev.MESSAGE, self.message),
                         (ev.TYPING, self.typing), (ev.NEXT, self.next), (ev.LEAVE, self.leave),
                         (ev.REPORT, self.report)):
            s.on(name, self._handler(fn), namespace="/")
        s.on("*", lambda event, sid=None, *a: ev.failed("unknown_event"), namespace="/")

    def _handler(self, fn):
        def run(sid, data=None, *_):
            user = self.by_sid.get(sid)
            if user is None:
                return ev.failed("internal")
            try:
                return fn(user, data)
            except Refused as exc:
                return ev.failed(exc.code)
        return run


def listener(host: str, port: int) -> socket.socket:
    """A listening socket set up as gunicorn sets up the product's: TCP_NODELAY (inherited by
    every accepted connection) and gunicorn's default backlog. Without TCP_NODELAY a handler
    that writes two frames back to back (`waiting`, then the ack) waits for the client's delayed
    ACK: `next` took 43 ms at the median here instead of 1 (loadtests/RESULTS.md)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="loadtests/relay.py", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1", help="a loopback address")
    a = ap.parse_args(argv)
    try:
        loopback = ipaddress.ip_address(a.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        ap.error("--host must be a loopback address (127.0.0.1, ::1)")
    # The product's limits and timers (PING_*, RESUME_GRACE, MAX_*; env overrides apply alike).
    # The relay has no secret, Redis or database: placeholders, random per process, keep
    # config.load() from making or reading any under instance/.
    settings = config.load({**os.environ, "APP_ENV": "development",
                            "SECRET_KEY": secrets.token_urlsafe(48),
                            "ADMIN_PASSWORD": secrets.token_urlsafe(12)})

    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="gevent", max_http_buffer_size=settings.max_frame_bytes,
                        ping_interval=settings.ping_interval, ping_timeout=settings.ping_timeout,
                        manage_session=False, logger=False, engineio_logger=False,
                        async_handlers=False)
    relay = Relay(socketio.server, settings.resume_grace, settings.max_message_len)
    relay.register()

    @app.get("/readyz")
    @app.get("/healthz")
    def ready():
        return jsonify(ok=True, worker=WORKER_ID, connections=len(relay.by_sid))

    server = WSGIServer(listener(a.host, a.port), app, handler_class=WebSocketHandler,
                        spawn=Pool(settings.worker_connections), log=None)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    shown = f"[{a.host}]" if ":" in a.host else a.host
    print(f"relay: listening on http://{shown}:{a.port}/ (grace {settings.resume_grace:g} s)",
          flush=True)
    gevent.signal_handler(signal.SIGTERM, server.stop)  # SIGTERM: stop serving, exit 0
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
