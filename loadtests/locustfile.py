"""Load test of the chat: users that behave like people, on locust's own Socket.IO user.

Each locust user is one browser tab (docs/protocol.md is the contract):

- connects (WebSocket transport), gets `hello`, and joins, some with interests;
- waits for `matched`, then chats: about one message every `--chat-msg-interval` seconds (2 s),
  each preceded by `typing true` like the page does (`--chat-typing`; the page sends no
  `typing false` right before a message: the message hides the partner's indicator);
- ends a conversation after a few messages by pressing Next (most), Leave and coming back a few
  seconds later, or closing the tab (a new user opens it again later); when the stranger leaves
  first it reads the notice for a moment and starts a new chat;
- now and then reloads the page mid-chat: disconnects and reconnects with auth {token, since}
  (since = the end of the unbroken run of seqs it has seen, like the page) and expects `resumed`;
- gets impatient after 30 s of waiting and reloads (a `matched` that never came shows up then).

What it adds to locust's statistics (`environment.events.request.fire`), by request type:

    MATCH     "join → matched", "join → matched (interests)": what a user waits, including the
              time until another user is free (that depends on the load's shape, see README);
              "both waiting → matched": from the later of the two partners' join/next to this
              user's `matched` - the matcher's and the queue's own latency (users without
              interests only; each partner's join time travels in the text of its messages)
    ACK       "message", "join", "next", "leave", "typing": emit → acknowledgement
    DELIVERY  "send → partner": the sender's clock at emit (in the text) → the partner's
              `message` event; same machine, same clock, any locust process.
              "server → partner": the server's `ts` (Redis TIME at sequencing) → receipt.
              "replayed on resume": send → arrival inside `resumed.history`
    RESUME    "reload → resumed"
    ERROR     <code>: a failed ack or an `error` event, by code; also connection_lost,
              ack_timeout, hello_timeout, resumed_timeout, matched_while_chatting, ...
    CHECK     "lost", "duplicate", "misdelivered", "seq mismatch", "matched missing": failures
              found when the test stops, from the ledger of every locust process (see below)

Lost messages, precisely. Every locust process keeps a ledger of what its users sent (id, room,
seq, send and ack time), received (live or replayed), which rooms they were told about
(`matched` or `resumed`) and their connection sessions (from `hello` to the moment they closed
it). When the run time is up the users stop acting (no message, no Next, no reload; a lost
connection is still resumed) and wait `--chat-drain` seconds (5) with their connections open;
then every process waits until nothing has arrived for 2 s and no ack is pending (60 s at most),
and the master collects every ledger and checks them:

- A message is *expected* at the partner when the server acknowledged it with ok (so it had a
  seq in room R: both were in R at that instant) and the other member B of R (who got `matched`
  or `resumed` for R) held a connection that was either open already when the message was sent
  or resumed into R, and that stayed open until at least `SLACK` (10 s) after the ack, or to the
  end of the run, or at least until a later message of the same sender in R reached it. A
  partner who closed the tab, or reloaded into another state, before that is legitimately never
  reached; those messages are counted as "unverifiable", never as lost.
  Pressing Next or Leave does not excuse anything: the server emits to the partner's user room,
  so a message acked before the partner pressed Next still reaches them.
- *Lost* = expected at B and never received by B, neither live nor in a `resumed` history.
- *Duplicate* = the same message id delivered live more than once to the same user. (A resume
  may legitimately repeat a message in its history that was in flight when the link dropped;
  the page drops it by seq; counted apart as "replay overlap".)
- *Misdelivered* = received by a user who is not the other member of the room.
- *Seq mismatch* = the receiver's seq differs from the one in the sender's ack.
- *Matched missing* = a user learnt its room only from `resumed` (after an impatient reload)
  although it was connected when its partner got `matched` and stayed connected SLACK longer.

`--chat-summary PATH` writes all figures as JSON (loadtests/run.py reads it).
`--chat-mode idle`: users only connect and stay (for memory per idle connection).
"""
from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import random
import time
import uuid
from collections import Counter, defaultdict

import gevent
import locust.runners
import socketio
from gevent.event import Event
from locust import constant, events, task
from locust.contrib.socketio import SocketIOClient, SocketIOUser
from locust.runners import MasterRunner, WorkerRunner

# A worker that misses 3 heartbeats (1 s each) is "missing" and, when all are, the master stops
# the test. On a machine shared with other people's runs a worker can be starved that long:
# allow 15 s before giving up on it.
locust.runners.HEARTBEAT_LIVENESS = 15

log = logging.getLogger("chat-load")

INTEREST_POOL = ("music", "movies", "games", "travel")
WORDS = ("hello there how are you doing today I like music and long walks what about you "
         "where are you from 你好 今天 天气 不错 我们 聊聊 吧 that is interesting tell me more "
         "ha ha really no way same here see you").split()
SLACK = 10.0  # s after an ack during which the partner must stay connected for a check
IMPATIENT = 30.0  # s of waiting for a match before the user reloads the page
ACK_TIMEOUT = 10.0
HELLO_TIMEOUT = 10.0
RACE_WINDOW = 5.0  # s: a not_chatting refusal followed by partner_left within it is a race

DRAIN = Event()  # set when the run time is up: users stop acting, connections stay open
SETTLE_QUIET = 2.0  # s without a receipt or an open request before a ledger is taken
SETTLE_MAX = 60.0  # s at most, after the drain, waiting for messages in flight
_url_counter = itertools.count()


# --------------------------------------------------------------------------- options

@events.init_command_line_parser.add_listener
def _options(parser):
    g = parser.add_argument_group("chat load test")
    g.add_argument("--chat-urls", default="", help="comma-separated base URLs (default: --host); "
                   "users are spread over them round-robin")
    g.add_argument("--chat-mode", choices=("chat", "idle"), default="chat")
    g.add_argument("--chat-msg-interval", type=float, default=2.0,
                   help="mean seconds between two messages of one chatting user")
    g.add_argument("--chat-typing", type=float, default=1.0,
                   help="fraction of messages preceded by typing true, like the page")
    g.add_argument("--chat-interests", type=float, default=0.3,
                   help="fraction of users who join with interests")
    g.add_argument("--chat-conv-min", type=int, default=6, help="fewest own messages per chat")
    g.add_argument("--chat-conv-max", type=int, default=25, help="most own messages per chat")
    g.add_argument("--chat-p-next", type=float, default=0.75, help="chat ends with Next")
    g.add_argument("--chat-p-leave", type=float, default=0.17,
                   help="chat ends with Leave, back a few seconds later (rest: close the tab)")
    g.add_argument("--chat-p-reload", type=float, default=0.15,
                   help="probability that a chat has a page reload in it")
    g.add_argument("--chat-drain", type=float, default=5.0,
                   help="seconds without new actions before the ledger check")
    g.add_argument("--chat-summary", default="", help="write the summary JSON here")


def _opts(environment):
    return environment.parsed_options


# --------------------------------------------------------------------------- the ledger

class Ledger:
    """What this locust process's users sent, received and were told; checked at the end."""

    def __init__(self):
        self.sent = []      # (mid, room, uid, t_send, t_ack, seq)
        self.recv = []      # (mid, room, uid, via 'L'|'R', t, seq)
        self.members = []   # (room, uid, 'm' matched | 'r' resumed, t)
        self.sessions = []  # [uid, t_start, t_end|None, resumed_room|None]
        self.errors = Counter()
        self.counts = Counter()
        self.error_examples = []  # the first few errors with their context, for diagnosis

        self.inflight = 0  # requests waiting for an ack, refusals waiting for their verdict
        self.last_activity = 0.0

    def settle(self, max_wait: float = SETTLE_MAX) -> float:
        """Wait until no ack is pending and nothing arrived for SETTLE_QUIET s; seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_wait:
            if self.inflight <= 0 and time.monotonic() - self.last_activity >= SETTLE_QUIET:
                break
            gevent.sleep(0.2)
        return time.monotonic() - t0

    def note(self, code: str, **context):
        self.errors[code] += 1
        if len(self.error_examples) < 30:
            self.error_examples.append({"code": code, "t": _now(), **context})

    def dump(self) -> dict:
        return {"sent": self.sent, "recv": self.recv, "members": self.members,
                "sessions": self.sessions, "errors": dict(self.errors),
                "counts": dict(self.counts), "error_examples": self.error_examples}


LEDGER = Ledger()


def check(ledgers: list[dict]) -> dict:
    """The verdict on all ledgers (see the module docstring for the definitions)."""
    members = defaultdict(set)
    told = defaultdict(dict)  # room -> uid -> time of its first `matched` (None: only resumed)
    for lg in ledgers:
        for room, uid, how, t in lg["members"]:
            members[room].add(uid)
            known = told[room].get(uid)
            if how == "m" and (known is None or t < known):
                told[room][uid] = t
            else:
                told[room].setdefault(uid, None)
    sessions = defaultdict(list)
    for lg in ledgers:
        for uid, t0, t1, rroom in lg["sessions"]:
            sessions[uid].append((t0, t1, rroom))
    got = defaultdict(list)  # (uid, mid) -> [(via, seq)]
    sender_of = {}
    for lg in ledgers:
        for mid, room, uid, _t_send, _t_ack, seq in lg["sent"]:
            sender_of[mid] = uid
    later = defaultdict(list)  # (receiver, room, sender) -> [(seq, t)] received live
    for lg in ledgers:
        for mid, room, uid, via, t, seq in lg["recv"]:
            got[(uid, mid)].append((via, seq))
            if via == "L" and isinstance(seq, int):
                later[(uid, room, sender_of.get(mid))].append((seq, t))
    out = Counter()
    lost_examples = []
    sent_rooms = {}
    for lg in ledgers:
        for mid, room, uid, t_send, t_ack, seq in lg["sent"]:
            out["acked"] += 1
            sent_rooms[mid] = (room, uid, seq)
            others = members[room] - {uid}
            if not others:
                out["unverifiable: partner unknown"] += 1
                continue
            partner = next(iter(others))

            def covered(t0, t1, rroom):
                if not (t0 <= t_send or rroom == room):
                    return False
                if t1 is None or t1 >= t_ack + SLACK:
                    return True
                # closed soon after: still covered if a later message of the same sender in
                # this room reached that session (this one had its chance: same path, in order)
                return any(s > seq and t0 <= t <= t1 for s, t in later[(partner, room, uid)])

            if not any(covered(*s) for s in sessions[partner]):
                out["unverifiable: partner disconnected"] += 1
                continue
            out["expected"] += 1
            rec = got.get((partner, mid))
            if not rec:
                out["lost"] += 1
                if len(lost_examples) < 20:
                    lost_examples.append({"id": mid, "room": room, "seq": seq, "from": uid,
                                          "to": partner, "t_send": t_send, "t_ack": t_ack,
                                          "partner_sessions": sessions[partner]})
                continue
            out["received"] += 1
            if any(v == "R" for v, _ in rec) and not any(v == "L" for v, _ in rec):
                out["received via resume"] += 1
    for (uid, mid), rec in got.items():
        live = sum(1 for v, _ in rec if v == "L")
        if live > 1:
            out["duplicates"] += live - 1
        if live and any(v == "R" for v, _ in rec):
            out["replay overlap"] += 1
        info = sent_rooms.get(mid)
        if info:
            room, sender, seq = info
            if uid == sender or (members[room] and uid not in members[room]):
                out["misdelivered"] += 1
            if any(s != seq for _, s in rec):
                out["seq mismatch"] += 1
        else:
            out["received, never acked"] += 1  # acked after the ledger was taken, or a bug
    # `matched` missing: a member learnt its room only from `resumed`, although it was connected
    # when its partner was told (and stayed connected SLACK seconds longer)
    for room, who in told.items():
        for uid, t in who.items():
            if t is not None:
                continue
            tm = [x for u, x in who.items() if u != uid and x is not None]
            if tm and any(t0 <= tm[0] and (t1 is None or t1 >= tm[0] + SLACK)
                          for t0, t1, _r in sessions[uid]):
                out["matched missing"] += 1
    out["rooms"] = len(members)
    out["rooms with more than 2 members"] = sum(1 for m in members.values() if len(m) > 2)
    for k in ("lost", "duplicates", "misdelivered", "seq mismatch", "matched missing",
              "expected", "received"):
        out.setdefault(k, 0)
    errors = Counter()
    counts = Counter()
    error_examples = []
    for lg in ledgers:
        errors.update(lg["errors"])
        counts.update(lg["counts"])
        error_examples.extend(lg.get("error_examples", []))
    return {"messages": dict(out), "errors": dict(errors), "counts": dict(counts),
            "lost_examples": lost_examples, "error_examples": error_examples[:50], "processes": len(ledgers),
            "definitions": "see loadtests/locustfile.py docstring", "slack_s": SLACK}


# --------------------------------------------------------------------------- the user

class Refusal(Exception):
    """A refusal or failure of the chat, by code (locust groups failures by its text)."""


def _now() -> float:
    return time.time()


class ChatUser(SocketIOUser):
    wait_time = constant(0)  # the one task below is the user's whole life, with its own pauses
    options = {"reconnection": False}  # a reload is done by hand, like the page's resume

    # ---- plumbing
    def fire(self, rtype, name, ms=0.0, exc=None, length=0):
        self.environment.events.request.fire(request_type=rtype, name=name, response_time=ms,
                                             response_length=length, exception=exc, context={})

    def ctx(self) -> dict:
        return {"uid": self.uid, "room": self.room, "state": self.state,
                "session_start": self.session[1] if self.session else None,
                "join_t": self.join_t, "matched_t": self.matched_t,
                "chat_ended_t": self.chat_ended_t, "partner_left_t": self.partner_left_t,
                "partner_left_reason": self.partner_left_reason}

    def error(self, code: str, where: str = "ERROR"):
        LEDGER.note(code, where=where, **self.ctx())
        self.fire(where, code, 0, Refusal(code))

    def on_start(self):
        o = _opts(self.environment)
        urls = [u.strip() for u in (o.chat_urls or self.host or "").split(",") if u.strip()]
        if not urls:
            raise RuntimeError("no target: give --host or --chat-urls")
        self.url = urls[next(_url_counter) % len(urls)]
        self.o = o
        self.ident = uuid.uuid4().hex[:12]
        self.n = 0
        self.token = None
        self.uid = None
        self.session = None
        self.state = "idle"  # idle | waiting | chatting
        self.room = None
        self.room_since = set()
        self.last_seq = 0
        self.partner_seen = False
        self.join_t = None
        self.matched_t = None
        self.interests = (random.sample(INTEREST_POOL, random.randint(1, 2))
                          if random.random() < o.chat_interests else None)
        self.changed = Event()
        self.closing = False
        self.chat_ended_t = 0.0
        self.partner_left_t = 0.0
        self.partner_left_reason = None
        self.last_refusal = None
        self.sio = None
        self.open(resume=False)

    def on_stop(self):
        self.close()

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
        if self.session is not None and self.session[2] is None:
            self.session[2] = _now()
        sio = self.sio
        if sio is not None and sio.connected:
            try:
                sio.disconnect()
            except Exception:
                pass

    def _disconnected(self, sio):
        if sio is not self.sio or self.closing:
            return
        if self.session is not None and self.session[2] is None:
            self.session[2] = _now()
        if self.environment.runner.state in ("running", "spawning"):
            self.error("connection_lost")
        self.changed.set()

    # ---- events from the server (run in the client's greenlets; never block here)
    def _hello(self, sio, d):
        if sio is not self.sio:
            return
        self.uid = d["user"]
        self.token = d["token"]
        self.session = [self.uid, _now(), None, None]
        LEDGER.sessions.append(self.session)
        self.hello_evt.set()

    def _resumed(self, sio, d):
        if sio is not self.sio:
            return
        state = d.get("state")
        now = _now()
        if state == "chatting":
            room = d.get("room")
            self.session[3] = room
            LEDGER.members.append((room, self.uid, "r", now))
            if room != self.room:
                # we never heard `matched` for this room (it came while we were away, or never)
                LEDGER.counts["matched learnt from resumed"] += 1
                self._enter_room(room, now, via_resume=True)
            for m in d.get("history") or ():
                seq = m.get("seq")
                if m.get("mine"):
                    self._seen(seq)
                    continue
                LEDGER.recv.append((m["id"], room, self.uid, "R", now, seq))
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
        LEDGER.members.append((room, self.uid, "m", now))
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
        LEDGER.recv.append((mid, room, self.uid, "L", now, seq))
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
        LEDGER.sent.append((mid, room, self.uid, t_send, t_ack, seq))
        if room == self.room:
            self._seen(seq)

    # ---- the person
    def pause(self, seconds: float, while_state: str | None = None, room=None) -> bool:
        """Sleep up to `seconds`; False as soon as the run drains, or the user is no longer in
        `while_state` (and, for "chatting", in `room`)."""
        deadline = time.monotonic() + seconds
        while True:
            if DRAIN.is_set():
                return False
            if while_state and (self.state != while_state or not self.sio.connected):
                return False
            if while_state == "chatting" and self.room != room:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self.changed.clear()
            self.changed.wait(min(left, 1.0))

    def join(self, event="join"):
        if event == "next":
            self._left_room()
        self.state = "waiting"
        self.join_t = _now()
        data = {"interests": self.interests} if (event == "join" and self.interests) else {}
        self.last_refusal = None
        ack = self.request(event, data)
        if ack is None and self.state == "waiting":
            self.state = "idle"
        if self.last_refusal == "already_chatting":
            # the server has us in a chat we do not know of (a `partner_left` of the previous
            # chat that arrived after the next `matched` ended it here): resync like a reload
            self.reload()

    def reload(self):
        if DRAIN.is_set():
            return
        LEDGER.counts["reloads"] += 1
        self.close()
        gevent.sleep(random.uniform(0.2, 1.2))  # the page loads again
        if not DRAIN.is_set():
            self.open(resume=True)

    def close_tab(self):
        """Gone for good: the partner hears `partner_left` after the grace period."""
        if DRAIN.is_set():
            return
        LEDGER.counts["tabs closed"] += 1
        self.close()
        gevent.sleep(random.uniform(2, 6))
        self.token = None
        self.uid = None
        self.state, self.join_t = "idle", None
        self._left_room()
        if not DRAIN.is_set():
            self.open(resume=False)

    def chat(self):
        o = self.o
        room = self.room
        n_msgs = random.randint(o.chat_conv_min, o.chat_conv_max)
        reload_at = random.randrange(n_msgs) if random.random() < o.chat_p_reload else -1
        for i in range(n_msgs):
            interval = random.uniform(0.5, 1.5) * o.chat_msg_interval
            typing = random.random() < o.chat_typing
            think = interval * (0.5 if typing else 1.0)
            if not self.pause(think, "chatting", room):
                return
            if typing:
                self.typing(True)
                if not self.pause(interval - think, "chatting", room):
                    return
            self.send_message()
            if i == reload_at:
                self.reload()
                if self.state != "chatting" or self.room != room:
                    return
        if DRAIN.is_set() or self.state != "chatting" or self.room != room:
            return
        r = random.random()
        if r < o.chat_p_next:
            self.join("next")
        elif r < o.chat_p_next + o.chat_p_leave:
            self.request("leave", {})
            self.state = "idle"
            self._left_room()
            self.pause(random.uniform(2, 8))
        else:
            self.close_tab()

    @task
    def live(self):
        if self.sio is None or not self.sio.connected:
            # a lost connection is resumed even while draining: the replay completes the ledger
            if not self.open(resume=True):
                gevent.sleep(1)
                return
        if DRAIN.is_set():
            gevent.sleep(1)
            return
        if self.o.chat_mode == "idle":
            self.pause(5)
            return
        if self.state == "idle":
            self.pause(random.uniform(0.3, 1.5))  # reads the notice, presses "new chat"
            if not DRAIN.is_set() and self.state == "idle":
                self.join("join")
        elif self.state == "waiting":
            self.pause(1, "waiting")
            if self.state == "waiting" and self.join_t and \
                    _now() - max(self.join_t, self.session[1] if self.session else 0) > IMPATIENT:
                LEDGER.counts["impatient reloads"] += 1
                self.reload()  # a `matched` that never came is found by the ledger check
        elif self.state == "chatting":
            self.chat()


def _parse(text: str):
    """(send time s, partner's join time s or None, partner has interests) from a text."""
    try:
        a, b, c, _ = text.split(" ", 3)
        return int(a) / 1000, (int(b) / 1000 or None), c == "1"
    except (ValueError, AttributeError):
        return None


# --------------------------------------------------------------------------- end of the run

_collected: list[dict] = []


GC_FREEZE_EVERY = 10.0  # seconds


def _freeze_loop():
    """Keep the ledger out of the collector's way, as the web worker does with its start-up state.

    Every locust process stamps the arrival of each event when its handler runs, and keeps every
    message of the run in its ledger (long-lived, growing: ~90 000 entries in a 1000-user run).
    With the default thresholds its full collections walk all of it and grow with the run,
    delaying the stamps: the tool's own pauses would be measured as delivery latency. Freezing
    what has survived so far makes them short; what it keeps is freed when the run's process
    ends (a bounded run).
    """
    gc.set_threshold(50_000, 20, 100)
    while True:
        gevent.sleep(GC_FREEZE_EVERY)
        gc.freeze()


@events.init.add_listener
def _init(environment, **_):
    gevent.spawn(_freeze_loop)
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        def on_drain(environment, msg, **_):
            DRAIN.set()

        def on_ledger_request(environment, msg, **_):
            waited = LEDGER.settle()
            data = LEDGER.dump()
            data["settled_s"] = round(waited, 1)
            runner.send_message("chat_ledger", data)

        runner.register_message("chat_drain", on_drain)
        runner.register_message("chat_ledger_request", on_ledger_request, concurrent=True)
    elif isinstance(runner, MasterRunner):
        def on_ledger(environment, msg, **_):
            _collected.append(msg.data)

        runner.register_message("chat_ledger", on_ledger)


_checked = {"done": False}
_started: dict[str, float] = {}


@events.test_start.add_listener
def _on_start(environment, **_):
    _started.setdefault("t", time.monotonic())


@events.test_stopping.add_listener
def _on_stopping(environment, **_):
    """Before the users are stopped: drain, collect every ledger, check, report."""
    runner = environment.runner
    if isinstance(runner, WorkerRunner) or _checked["done"]:
        return
    _checked["done"] = True
    o = _opts(environment)
    drain = max(0.0, o.chat_drain)
    log.info("run time is up: users stop acting; %.0f s for messages in flight", drain)
    if isinstance(runner, MasterRunner):
        runner.send_message("chat_drain")
        gevent.sleep(drain)
        workers = len(runner.clients)
        runner.send_message("chat_ledger_request")
        deadline = time.monotonic() + SETTLE_MAX + 60
        while len(_collected) < workers and time.monotonic() < deadline:
            gevent.sleep(0.2)
        if len(_collected) < workers:
            log.error("only %d of %d ledgers arrived", len(_collected), workers)
        ledgers = list(_collected)
    else:
        DRAIN.set()
        gevent.sleep(drain)
        waited = LEDGER.settle()
        ledgers = [{**LEDGER.dump(), "settled_s": round(waited, 1)}]
    summary = check(ledgers)
    summary["settled_s"] = [lg.get("settled_s") for lg in ledgers]
    elapsed = time.monotonic() - _started.get("t", time.monotonic())
    run_time = getattr(o, "run_time", None)
    summary["elapsed_s"] = round(elapsed, 1)
    if run_time and elapsed < run_time - 2:
        # e.g. the master lost every worker: the verdict covers a run cut short
        summary["stopped_early"] = True
        log.error("the test stopped after %.0f s of %s s", elapsed, run_time)
    summary["ledgers_expected"] = len(runner.clients) if isinstance(runner, MasterRunner) else 1
    m = summary["messages"]
    fire = environment.events.request.fire
    for name, key in (("lost", "lost"), ("duplicate", "duplicates"),
                      ("misdelivered", "misdelivered"), ("seq mismatch", "seq mismatch"),
                      ("matched missing", "matched missing")):
        for _ in range(m.get(key, 0)):
            fire(request_type="CHECK", name=name, response_time=0, response_length=0,
                 exception=Refusal(name), context={})
    fire(request_type="CHECK", name="messages checked (count in size column)", response_time=0,
         response_length=m.get("expected", 0), exception=None, context={})
    log.info("ledger check: %s", json.dumps(m, ensure_ascii=False))
    if summary["errors"]:
        log.info("errors by code: %s", json.dumps(summary["errors"], ensure_ascii=False))
    if o.chat_summary:
        os.makedirs(os.path.dirname(os.path.abspath(o.chat_summary)), exist_ok=True)
        with open(o.chat_summary, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1, ensure_ascii=False, default=str)
    gevent.sleep(1.5)  # let the CSV writer (every 1 s) take the CHECK rows
