"""The Socket.IO side of one browser tab of the load test: connecting and resuming, the
server's events, requests with their acks, and what they leave in this process's ledger.

ChatClient is a mixin of locustfile.ChatUser (which adds the person: when to chat, reload, leave,
close the tab); it measures by hand what locust's Socket.IO wrapper does not (its emits are
logged with 0 ms): the MATCH, ACK, DELIVERY, RESUME and ERROR rows of locustfile's docstring.
"""
from __future__ import annotations

import random
import time

import gevent
import socketio
from gevent.event import Event
from locust.contrib.socketio import SocketIOClient

from ledger import Ledger, Member, OpenSession, Recv, Sent
from ledger import now as _now

WORDS = ("hello there how are you doing today I like music and long walks what about you "
         "where are you from 你好 今天 天气 不错 我们 聊聊 吧 that is interesting tell me more "
         "ha ha really no way same here see you").split()
ACK_TIMEOUT = 10.0
HELLO_TIMEOUT = 10.0
RACE_WINDOW = 5.0  # s: a not_chatting refusal followed by partner_left within it is a race

LEDGER = Ledger()  # this locust process's
DRAIN = Event()  # set when the run time is up: users stop acting, connections stay open


class Refusal(Exception):
    """A refusal or failure of the chat, by code (locust groups failures by its text)."""


def _parse(text: str):
    """(send time s, partner's join time s or None, partner has interests) from a text."""
    try:
        a, b, c, _ = text.split(" ", 3)
        return int(a) / 1000, (int(b) / 1000 or None), c == "1"
    except (ValueError, AttributeError):
        return None


class ChatClient:
    """The protocol half of a ChatUser: its state (uid, token, session, state, room, seqs seen,
    ...) is set up by ChatUser.on_start."""

    # ---- plumbing
    def fire(self, rtype, name, ms=0.0, exc=None, length=0):
        self.environment.events.request.fire(request_type=rtype, name=name, response_time=ms,
                                             response_length=length, exception=exc, context={})

    def ctx(self) -> dict:
        return {"uid": self.uid, "room": self.room, "state": self.state,
                "session_start": self.session.t_start if self.session else None,
                "join_t": self.join_t, "matched_t": self.matched_t,
                "chat_ended_t": self.chat_ended_t, "partner_left_t": self.partner_left_t,
                "partner_left_reason": self.partner_left_reason}

    def error(self, code: str, where: str = "ERROR"):
        LEDGER.note(code, where=where, **self.ctx())
        self.fire(where, code, 0, Refusal(code))

    # ---- connection
    def _client(self) -> SocketIOClient:
        sio = SocketIOClient(self.environment.events.request, **self.options)
        on = sio.on
        on("hello", lambda d: self._hello(sio, d))
        on("resumed", lambda d: self._resumed(sio, d))
        on("waiting", lambda d=None: None)
        on("matched", lambda d: self._matched(sio, d))
        on("message", lambda d: self._message(sio, d))
        on("typing", lambda d=None: None)
        on("partner_left", lambda d=None: self._partner_left(sio, d))
        on("stats", lambda d=None: None)
        on("error", lambda d=None: self._error_event(sio, d))
        on("disconnect", lambda *a: self._disconnected(sio))
        on("*", sio.on_message)  # anything else: locust's own WSR row
        return sio

    def open(self, resume: bool) -> bool:
        """Connect (with the token when resuming) and wait for hello (and resumed)."""
        self.hello_evt = Event()
        self.resumed_evt = Event()
        self.resume_expected = bool(resume and self.token)
        auth = {"since": self.last_seq if self.resume_expected else 0}
        if self.resume_expected:
            auth["token"] = self.token
        self.closing = False
        sio = self.sio = self._client()
        t0 = _now()
        sio.connect(self.url, auth=auth, transports=["websocket"], wait_timeout=HELLO_TIMEOUT)
        if not sio.connected:  # the wrapper logged the failure under WS connect
            LEDGER.note("connect_failed", **self.ctx())
            gevent.sleep(random.uniform(1, 3))
            return False
        if not self.hello_evt.wait(HELLO_TIMEOUT):
            self.error("hello_timeout")
            self.close()
            gevent.sleep(1)
            return False
        if self.resume_expected:
            if not self.resumed_evt.wait(HELLO_TIMEOUT):
                self.error("resumed_timeout")
                self.close()
                gevent.sleep(1)
                return False
            self.fire("RESUME", "reload → resumed", (_now() - t0) * 1000)
        return True

    def close(self):
        self.closing = True
        if self.session is not None and self.session.t_end is None:
            self.session.t_end = _now()
        sio = self.sio
        if sio is not None and sio.connected:
            try:
                sio.disconnect()
            except Exception:
                pass

    def _disconnected(self, sio):
        if sio is not self.sio or self.closing:
            return
        if self.session is not None and self.session.t_end is None:
            self.session.t_end = _now()
        if self.environment.runner.state in ("running", "spawning"):
            self.error("connection_lost")
        self.changed.set()

    # ---- events from the server (run in the client's greenlets; never block here)
    def _hello(self, sio, d):
        if sio is not self.sio:
            return
        self.uid = d["user"]
        self.token = d["token"]
        self.session = OpenSession(self.uid, _now())
        LEDGER.sessions.append(self.session)
        self.hello_evt.set()

    def _resumed(self, sio, d):
        if sio is not self.sio:
            return
        state = d.get("state")
        now = _now()
        if state == "chatting":
            room = d.get("room")
            self.session.resumed_room = room
            LEDGER.members.append(Member(room, self.uid, "r", now))
            if room != self.room:
                # we never heard `matched` for this room (it came while we were away, or never)
                LEDGER.counts["matched learnt from resumed"] += 1
                self._enter_room(room, now, via_resume=True)
            for m in d.get("history") or ():
                seq = m.get("seq")
                if m.get("mine"):
                    self._seen(seq)
                    continue
                LEDGER.recv.append(Recv(m["id"], room, self.uid, "R", now, seq))
                self._seen(seq)
                sent = _parse(m.get("text", ""))
                if sent:
                    self.fire("DELIVERY", "replayed on resume", (now - sent[0]) * 1000)
            self.state = "chatting"
        else:
            if self.state == "chatting":
                LEDGER.counts["chat ended while away"] += 1
                self.chat_ended_t = now
            self.state = "waiting" if state == "waiting" else "idle"
            if self.state == "idle":
                self._left_room()
        self.resumed_evt.set()
        self.changed.set()

    def _left_room(self):
        self.room = None
        self.room_since = set()
        self.last_seq = 0  # `since` belongs to a room: a new room starts from 0 again

    def _enter_room(self, room, now, via_resume=False):
        self.room = room
        self.room_since = set()
        self.last_seq = 0
        self.partner_seen = False
        self.matched_t = None if via_resume else now
        self.state = "chatting"

    def _matched(self, sio, d):
        room = d.get("room")
        if room == self.room:
            LEDGER.counts["matched repeated"] += 1
            return
        now = _now()
        LEDGER.members.append(Member(room, self.uid, "m", now))
        if sio is not self.sio:
            return
        if self.state == "chatting":
            self.error("matched_while_chatting")
        elif self.state == "idle":
            LEDGER.counts["matched while idle"] += 1
        if self.join_t is not None:
            name = "join → matched (interests)" if self.interests else "join → matched"
            self.fire("MATCH", name, (now - self.join_t) * 1000)
        self._enter_room(room, now)
        self.changed.set()

    def _seen(self, seq):
        if not isinstance(seq, int):
            return
        self.room_since.add(seq)
        while self.last_seq + 1 in self.room_since:
            self.last_seq += 1

    def _message(self, sio, d):
        now = _now()
        room = d.get("room")
        mid = d.get("id")
        seq = d.get("seq")
        LEDGER.recv.append(Recv(mid, room, self.uid, "L", now, seq))
        LEDGER.last_activity = time.monotonic()
        sent = _parse(d.get("text", ""))
        if sent:
            self.fire("DELIVERY", "send → partner", (now - sent[0]) * 1000)
        ts = d.get("ts")
        if isinstance(ts, (int, float)):
            self.fire("DELIVERY", "server → partner", max(0.0, now * 1000 - ts))
        if room == self.room and sio is self.sio:
            self._seen(seq)
            if not self.partner_seen and sent:
                self.partner_seen = True
                _, partner_join, partner_interests = sent
                if (self.matched_t and self.join_t and partner_join and not partner_interests
                        and not self.interests):
                    ready = max(self.join_t, partner_join)
                    if self.matched_t >= ready:
                        self.fire("MATCH", "both waiting → matched",
                                  (self.matched_t - ready) * 1000)

    def _partner_left(self, sio, d):
        if sio is not self.sio:
            return
        LEDGER.counts[f"partner_left {(d or {}).get('reason')}"] += 1
        room = (d or {}).get("room")
        if isinstance(room, str) and room != self.room:
            # a late notice about the previous chat (both pressed Next at once): the page
            # ignores it too (docs/protocol.md)
            LEDGER.counts["partner_left for another room"] += 1
            return
        self.partner_left_t = _now()
        self.partner_left_reason = (d or {}).get("reason")
        if self.state == "chatting":
            self.state = "idle"
            self._left_room()
            self.chat_ended_t = _now()
            self.changed.set()

    def _error_event(self, sio, d):
        code = (d or {}).get("code", "unknown")
        self.error(code, "EVENT error")

    # ---- requests
    def request(self, event, data, name=None):
        """Emit with an ack; returns the ack dict, or None after a refusal (logged)."""
        sio = self.sio
        got = Event()
        box = []

        def done(*args):
            box.append(args[0] if args else None)
            got.set()

        t0 = time.perf_counter()
        try:
            # socketio.Client's own emit: locust's wrapper would log a 0 ms "WSE" row for it
            socketio.Client.emit(sio, event, data, callback=done)
        except socketio.exceptions.SocketIOError as exc:  # not connected
            if self.closing or sio is not self.sio:
                return None
            self.error(f"emit_failed: {type(exc).__name__}")
            return None
        LEDGER.inflight += 1
        try:
            acked = got.wait(ACK_TIMEOUT)
        finally:
            LEDGER.inflight -= 1
            LEDGER.last_activity = time.monotonic()
        if not acked:
            self.fire("ACK", name or event, ACK_TIMEOUT * 1000, Refusal("ack_timeout"))
            LEDGER.note("ack_timeout", event=event, **self.ctx())
            return None
        ack = box[0]
        ms = (time.perf_counter() - t0) * 1000
        if isinstance(ack, dict) and ack.get("ok"):
            self.fire("ACK", name or event, ms)
            return ack
        code = (ack or {}).get("error", {}).get("code", "bad_ack") if isinstance(ack, dict) \
            else "bad_ack"
        return self.refused(event, name or event, code, ms)

    def refused(self, event, name, code, ms):
        self.last_refusal = code
        room = self.room
        if code == "not_chatting" and event in ("message", "typing"):
            # the partner pressed Next just before: a race the protocol allows, if the
            # partner_left (or a resumed state) follows; otherwise an error
            gevent.spawn(self._race_or_error, room, event, name, code, ms)
            return None
        self.fire("ACK", name, ms, Refusal(code))
        LEDGER.note(code, event=event, **self.ctx())
        return None

    def _race_or_error(self, room, event, name, code, ms):
        LEDGER.inflight += 1
        try:
            self._race_verdict(room, event, name, code, ms)
        finally:
            LEDGER.inflight -= 1

    def _race_verdict(self, room, event, name, code, ms):
        t = _now()
        deadline = t + RACE_WINDOW
        while _now() < deadline:
            if self.room != room or self.chat_ended_t >= t - RACE_WINDOW:
                LEDGER.counts[f"{event} refused after partner left (race)"] += 1
                self.fire("ACK", f"{name} (refused: partner just left)", ms)
                return
            gevent.sleep(0.1)
        self.fire("ACK", name, ms, Refusal(code))
        LEDGER.note(code, event=event, refused_at=t, refused_room=room, **self.ctx())

    def typing(self, on: bool):
        """Like the page: typing events with an ack nobody waits for."""
        t0 = time.perf_counter()
        room = self.room

        def done(ack=None, *_):
            ms = (time.perf_counter() - t0) * 1000
            if isinstance(ack, dict) and ack.get("ok"):
                self.fire("ACK", "typing", ms)
            else:
                code = (ack or {}).get("error", {}).get("code", "bad_ack") \
                    if isinstance(ack, dict) else "bad_ack"
                if code == "not_chatting":
                    gevent.spawn(self._race_or_error, room, "typing", "typing", code, ms)
                else:
                    self.fire("ACK", "typing", ms, Refusal(code))
                    LEDGER.note(code, event="typing", **self.ctx())
        try:
            socketio.Client.emit(self.sio, "typing", {"typing": on}, callback=done)
        except socketio.exceptions.SocketIOError:
            pass

    def send_message(self):
        self.n += 1
        mid = f"{self.ident}-{self.n}"
        t_send = _now()
        words = " ".join(random.choices(WORDS, k=random.randint(2, 14)))
        text = f"{int(t_send * 1000)} {int((self.join_t or 0) * 1000)} " \
               f"{1 if self.interests else 0} {words}"
        room = self.room
        ack = self.request("message", {"id": mid, "text": text})
        if ack is None:
            return
        t_ack = _now()
        seq = ack.get("seq")
        LEDGER.sent.append(Sent(mid, room, self.uid, t_send, t_ack, seq))
        if room == self.room:
            self._seen(seq)

