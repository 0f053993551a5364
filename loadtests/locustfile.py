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
              found when the test stops, from the ledger of every locust process (ledger.py)

Lost messages, duplicates, misdelivery, seq mismatches and missing `matched` are defined in
loadtests/ledger.py's docstring: every locust process keeps a ledger of its users (chatclient.py
writes it), the master collects them when the run time is up and ledger.check() gives the
verdict.

The modules: this file (the options, ChatUser - the person - and the locust event hooks; locust
loads it by path, and its folder is on sys.path while it does), chatclient.py (the Socket.IO
side of a tab) and ledger.py (the records and check()).

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

import gevent
import locust.runners
from gevent.event import Event
from locust import constant, events, task
from locust.contrib.socketio import SocketIOUser
from locust.runners import MasterRunner, WorkerRunner

from chatclient import DRAIN, LEDGER, ChatClient, Refusal
from ledger import SETTLE_MAX, check
from ledger import now as _now

# A worker that misses 3 heartbeats (1 s each) is "missing" and, when all are, the master stops
# the test. On a machine shared with other people's runs a worker can be starved that long:
# allow 15 s before giving up on it.
locust.runners.HEARTBEAT_LIVENESS = 15

log = logging.getLogger("chat-load")

INTEREST_POOL = ("music", "movies", "games", "travel")
IMPATIENT = 30.0  # s of waiting for a match before the user reloads the page
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


# --------------------------------------------------------------------------- the user

class ChatUser(ChatClient, SocketIOUser):
    """One browser tab, the person behind it: when to join, chat, reload, press Next or Leave,
    close the tab (the module docstring); ChatClient does the talking."""

    wait_time = constant(0)  # the one task below is the user's whole life, with its own pauses
    options = {"reconnection": False}  # a reload is done by hand, like the page's resume

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
                    _now() - max(self.join_t, self.session.t_start if self.session else 0) > IMPATIENT:
                LEDGER.counts["impatient reloads"] += 1
                self.reload()  # a `matched` that never came is found by the ledger check
        elif self.state == "chatting":
            self.chat()


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
