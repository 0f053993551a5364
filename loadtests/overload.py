"""`make overload`: past capacity, new connections are refused with a reason, and the users
already chatting keep their delivery latency.

    python loadtests/overload.py [--workers 2 --max-connections 300 --chatters 400
                                  --newcomers 600 --seconds 40 --cycles 2]

One file of ~1,500 lines on purpose, as a measurement script: its chatters, its storm of
newcomers, the nginx log parser and the report share one run's state and are read together
against docs/SCALING.md's Overload section; the parts other load tests use are in stacks.py,
sampler.py and report.py.

The issue: "Overload is visible, never silent: past capacity, new connections are refused with a
clear reason (a configurable cap per worker, nginx answering 503 when every worker is full), and
users already chatting keep their p99 delivery within 2x of its value below capacity."

One bounded run (under 5 min, loopback only) of `python -m stack cluster` (stacks.py's LocalStack:
nginx, --workers web workers with MAX_CONNECTIONS=--max-connections, the matcher, the archiver,
a private Redis; no per-address limits, as in every load test here), every client through nginx:

- A, below capacity: --chatters clients in pairs (a --polling-share of them on Engine.IO
  long-polling, the rest on WebSocket) chat, each one message every --interval s on average,
  each preceded by `typing` as the page sends it. capacity.py's Client does the talking,
  unchanged: a tap on its transport keeps a ledger of every message (sent, acked, delivered to
  whom and when). A chatter whose session is ended under it comes back with its token, retrying
  as socket.io-client does.
- B, past capacity: the same chat, while --newcomers more clients keep opening connections, half
  as the page does (an Engine.IO polling handshake, then the upgrade to WebSocket), half straight
  to WebSocket, each retrying uniform(--backoff) s after a refusal. Each answer is counted by
  status and body (the worker's "server is full", nginx's own "chat is full or restarting",
  anything else), and timeouts, resets and other silent failures apart. A newcomer that gets in
  joins and chats like the others (what a full cluster really carries); at the end of B, unless
  it is the last one, they all close their tabs, so that the next A is below capacity again.
- A and B alternate --cycles times (--seconds / --cycles s each): on a shared machine, others'
  load then weighs on both alike. The pooled A and B give the ratio.
- C, at capacity after the last storm (--after-seconds; 0: none): nobody tries any more, the
  admitted newcomers keep chatting. C against B splits B's cost into "more users" and "refusals".

The newcomers run in a process of their own (`overload.py crowd`, driven through its stdin): a
crowd that makes ~270 attempts a second must not delay, in the chatters' event loop, the
deliveries it is meant to be measured against. Both processes' CPU is measured apart from the
cluster's, and each one's event-loop lag is reported: the load generator's scheduling delay is
in every latency it measures.

Per phase: the chatters' delivery p50/p95/p99 (send -> partner's `message`), ack p99, lost,
duplicated, misdelivered and unacknowledged messages, sessions ended under them and how long
until they were back, CPU % of each process, the workers' /readyz latency and connections;
nginx's access log tells which refusals a worker answered and which nginx answered alone.
Prints a table and p99(B) / p99(A) against the goal (<= 2x), writes
loadtests/results/overload-<stamp>/summary.json, and adds the run to the "Overload" section of
docs/SCALING.md (--no-docs: not). Exit code 0 when the goal is met, every refusal said why and
the chatters lost nothing and kept their sessions; 1 otherwise; 2 for a refused command line or
a run that could not be made.
"""
from __future__ import annotations

import argparse
import asyncio
import contextvars
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # loadtests/ is not a package

import capacity as cap  # the chat client, its counters, machine_busy_s, git_state
import stacks  # LocalStack, stack_processes, web_workers, check_loopback
from report import fmt as f

PY = sys.executable
SCALING = ROOT / "docs" / "SCALING.md"
SECTION = "## Overload"
MAX_TOTAL_S = 290  # the whole run, stack start and stop included: "bounded, < 5 min"
STARTUP_BUDGET_S = 60  # stack start + connecting and matching the chatters (measured: 10-20 s)
STOP_BUDGET_S = 35  # LocalStack.stop: SIGTERM, then SIGKILL after 30 s
DRAIN_S = 5  # after the last send: in-flight messages still count
GOAL_RATIO = 2.0
EXPECT_WITHIN_S = 10  # a message is expected at a partner who stayed connected this long

# The refusals' words (web/guard.py, nginx/nginx.conf.j2 @unavailable).
REASONS = (
    ("This server is full", "503 worker: full"),
    ("The chat is full or restarting", "503 nginx: every worker full or restarting"),
    ("This worker is restarting", "503 worker: draining"),
    ("Too many new connections", "429 worker: session rate"),
)
VISIBLE = {label for _, label in REASONS}
# A refused WebSocket handshake's body, read by a trace hook before aiohttp drops it.
_REFUSAL = contextvars.ContextVar("refusal_body", default=None)


def pcts(xs: list[float]) -> dict:
    """capacity's p50, p95, p99, and the max and the count."""
    if not xs:
        return {"n": 0}
    return {**cap.percentiles(xs), "max": round(max(xs), 1), "n": len(xs)}


def classify(status: int, body: str | bytes | None) -> str:
    """A refusal's label: the reason it gives, or what it is when it gives none."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        for words, label in REASONS:
            if words in body and label.startswith(str(status)):
                return label
        first = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip()[:50]
        return f"{status} other: {first!r}"
    return f"{status} without a body"


async def _read_refusal(session, ctx, params) -> None:
    """aiohttp trace hook: a WebSocket handshake answered without 101 has its body read here,
    before ws_connect raises and drops it, so its words can be counted too."""
    box = _REFUSAL.get()
    if box is not None and params.response.status != 101:
        try:
            box["body"] = await params.response.read()
        except Exception as exc:  # noqa: BLE001 - a body cut short is a figure too
            box["body"] = f"(body unreadable: {type(exc).__name__})".encode()


async def monitor_lag(samples: list) -> None:
    """This process's own scheduling delay: a 50 ms sleep that wakes late."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.05)
        samples.append((time.time(), round((loop.time() - t - 0.05) * 1000, 2)))


# ------------------------------------------------------------------------------ transports


class Frame:
    """What capacity.Client reads from aiohttp: a text frame."""

    __slots__ = ("data", "type")

    def __init__(self, data: str):
        import aiohttp

        self.type, self.data = aiohttp.WSMsgType.TEXT, data


def short(body: str) -> str:
    """An answer's first words, without the session id an Engine.IO error repeats."""
    return re.sub(r"(Invalid session)\s+\S+", r"\1", body.strip().strip('"'))[:60].rstrip(".")


class ProbeFailed(Exception):
    """The upgrade's probe got another answer than 3probe."""


class Polling:
    """Engine.IO v4 long-polling (optionally upgraded to WebSocket, as the page does), read and
    written the way capacity.Client reads and writes an aiohttp WebSocket, so that the same
    client runs over both transports.

    It has a session of its own: a cookie jar keeps nginx's chat_affinity cookie, which is what
    keeps a browser's polling requests on the worker that issued its sid.
    """

    def __init__(self, base: str, timeout: float):
        import aiohttp

        self.base = base + "/socket.io/?EIO=4&transport=polling"
        self.timeout = timeout
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.q: asyncio.Queue = asyncio.Queue()
        self.sid = self.ws = self.poller = None
        self.closed = False
        self.broken = None  # why the session ended, when the server or nginx ended it
        self.lock = asyncio.Lock()

    async def handshake(self) -> tuple[int, str, dict]:
        """The new session's GET: (status, body, headers); 200 "0{...}" means admitted."""
        import aiohttp

        async with self.session.get(self.base, timeout=aiohttp.ClientTimeout(
                total=self.timeout)) as r:
            body = await r.text()
            if r.status == 200 and body.startswith("0"):
                packets = body.split("\x1e")
                self.sid = json.loads(packets[0][1:])["sid"]
                for p in packets:
                    self.q.put_nowait(p)
            return r.status, body, dict(r.headers)

    def start_polling(self) -> None:
        self.poller = asyncio.get_running_loop().create_task(self.poll())

    async def upgrade(self) -> None:
        """The page's upgrade: a WebSocket with the sid, probe, upgrade. Raises what aiohttp
        raises (a 400 "Invalid session" when nginx routed it to another worker)."""
        import aiohttp

        url = self.base.replace("http", "ws", 1).replace("polling", "websocket") + \
            f"&sid={self.sid}"
        ws = await self.session.ws_connect(url, autoping=False, max_msg_size=1 << 20,
                                           timeout=aiohttp.ClientWSTimeout(ws_close=5))
        try:
            await ws.send_str("2probe")
            msg = await ws.receive(timeout=self.timeout)
            if msg.type != aiohttp.WSMsgType.TEXT or msg.data != "3probe":
                raise ProbeFailed(f"the probe was answered with {msg.type.name}")
            await ws.send_str("5")
        except BaseException:
            await ws.close()
            raise
        self.ws = ws

    async def poll(self) -> None:
        import aiohttp

        try:
            while not self.closed:
                async with self.session.get(
                        f"{self.base}&sid={self.sid}",
                        timeout=aiohttp.ClientTimeout(total=60)) as r:
                    body = await r.text()
                if r.status != 200:
                    self.broken = f"poll {r.status} {short(body)}"
                    break
                for p in body.split("\x1e"):
                    if p == "1":
                        self.broken = "close packet"
                        self.closed = True
                    if p != "6":
                        self.q.put_nowait(p)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            if not self.closed:
                self.broken = f"poll {type(exc).__name__}"
        except asyncio.CancelledError:
            pass
        self.q.put_nowait(None)

    async def send_str(self, data: str) -> None:
        import aiohttp

        if self.ws is not None:
            return await self.ws.send_str(data)
        if self.closed or self.broken:
            raise ConnectionError("polling session closed")
        async with self.lock:
            try:
                async with self.session.post(
                        f"{self.base}&sid={self.sid}", data=data.encode(),
                        headers={"Content-Type": "text/plain;charset=UTF-8"},
                        timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                    body = await r.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.broken = self.broken or f"post {type(exc).__name__}"
                raise ConnectionError(self.broken) from None
            if r.status != 200:
                self.broken = self.broken or f"post {r.status} {short(body)}"
                raise ConnectionError(self.broken)

    def __aiter__(self):
        return self._frames()

    async def _frames(self):
        while self.ws is None or not self.q.empty():
            p = await self.q.get()
            if p is None:
                return
            yield Frame(p)
        async for msg in self.ws:
            yield msg

    async def close(self) -> None:
        self.closed = True
        if self.ws is not None:
            await self.ws.close()
        elif self.poller is not None:
            self.poller.cancel()
            if self.sid and not self.broken:
                try:
                    await self.send_str("1")
                except ConnectionError:
                    pass
        self.q.put_nowait(None)
        await self.session.close()


class Tap:
    """A transport seen through: each text frame is shown to the ledger before the client
    reads it, so capacity.Client is reused as it is; a client coming back says who it is."""

    def __init__(self, inner, client):
        self.inner, self.client = inner, client

    def __aiter__(self):
        return self._frames()

    async def _frames(self):
        async for msg in self.inner:
            if isinstance(msg.data, str):
                self.client.seen(msg.data)
            yield msg

    async def send_str(self, data: str) -> None:
        c = self.client
        if data.startswith("40") and c.token:  # capacity.Client connects as a new user
            data = "40" + json.dumps({"token": c.token, "since": c.since},
                                     separators=(",", ":"))
        await self.inner.send_str(data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# ------------------------------------------------------------------------------ the ledger


class Ledger:
    """Every message of one process's clients: who sent it when, its ack, who got it when."""

    def __init__(self):
        self.sent: dict[str, dict] = {}  # id -> {sender, room, t, ack_t, ok}
        self.pending: dict[tuple[int, int], str] = {}  # (client, ack number) -> id
        self.got: dict[str, list[tuple[int, float]]] = defaultdict(list)  # id -> [(rcv, t)]
        self.replayed: dict[str, list[int]] = defaultdict(list)  # id -> [rcv] (on resume)
        self.rooms: dict[str, set] = defaultdict(set)  # room -> client indexes

    def message_sent(self, c, mid: str, ack_no: int, t_ms: float) -> None:
        self.sent[mid] = {"sender": c.i, "room": c.room, "t": t_ms / 1000, "ack_t": None,
                          "ok": None}
        self.pending[(c.i, ack_no)] = mid

    def acked(self, c, ack_no: int, res: dict) -> None:
        mid = self.pending.pop((c.i, ack_no), None)
        if mid is not None:
            m = self.sent[mid]
            m["ack_t"], m["ok"] = time.time(), bool(res.get("ok"))

    def outcomes(self, clients: dict, t_end: float):
        """(send time, outcome, ack ms, misdelivered, duplicates) for every message: outcome
        is the delivery latency in ms, or "unacked", "ack_refused", "replayed" (arrived in a
        `resumed` snapshot), "unverifiable" (the partner was away within EXPECT_WITHIN_S of
        the ack, or gone) or "lost"."""
        for mid, m in self.sent.items():
            ack_ms = (m["ack_t"] - m["t"]) * 1000 if m["ack_t"] else None
            if m["ok"] is None or not m["ok"]:
                yield m["t"], "unacked" if m["ok"] is None else "ack_refused", ack_ms, 0, 0
                continue
            rcv = next((x for x in self.rooms.get(m["room"], ()) if x != m["sender"]), None)
            got = self.got.get(mid, [])
            at_rcv = [t for x, t in got if x == rcv]
            mis = sum(1 for x, _ in got if x != rcv)
            if at_rcv:
                outcome = round((at_rcv[0] - m["t"]) * 1000, 2)
            elif rcv in self.replayed.get(mid, ()):
                outcome = "replayed"
            elif rcv is None or clients[rcv].absent(
                    m["t"], min(t_end, m["ack_t"] + EXPECT_WITHIN_S)):
                outcome = "unverifiable"
            else:
                outcome = "lost"
            yield m["t"], outcome, ack_ms, mis, max(0, len(at_rcv) - 1)


class Tracked(cap.Client):
    """capacity.Client with its frames and sends shown to the ledger, its outages recorded,
    and its token kept so that it can come back as itself."""

    def __init__(self, gen, i: int, typing: float, ledger: Ledger, transport: str):
        super().__init__(gen, i, typing)
        self.ledger, self.transport = ledger, transport
        self.hello = asyncio.Event()
        self.matched = asyncio.Event()
        self.token, self.since = None, 0
        self.outages: list[list] = []  # [ended at, why, back at or None]
        self.left_at = None  # closed the tab on purpose
        self.chat_task = None

    def attach(self, transport) -> None:
        self.ws = Tap(transport, self)
        self.reader = asyncio.get_running_loop().create_task(self.read())

    def start_chat(self, interval: float) -> None:
        if self.chat_task is not None:
            self.chat_task.cancel()
        self.chat_task = asyncio.get_running_loop().create_task(self.chat(interval))

    async def send(self, event: str, data: dict) -> None:
        if event == "message":
            self.ledger.message_sent(self, data["id"], self.next_ack + 1,
                                     float(data["text"].split(" ", 1)[0]))
        await super().send(event, data)

    def seen(self, d: str) -> None:
        L = self.ledger
        if d.startswith('42["message"'):
            m = json.loads(d[2:])[1]
            L.got[m.get("id")].append((self.i, time.time()))
            if m.get("room") == self.room:
                self.since = max(self.since, m.get("seq") or 0)
        elif d.startswith("43"):
            j = d.index("[", 2)
            res = json.loads(d[j:])[0]
            L.acked(self, int(d[2:j]), res)
            if res.get("ok") and res.get("seq"):
                self.since = max(self.since, res["seq"])
        elif d.startswith('42["matched"'):
            room = json.loads(d[2:])[1]["room"]
            L.rooms[room].add(self.i)
            self.room, self.since = room, 0  # before a message in the same poll
            self.matched.set()
        elif d.startswith('42["hello"'):
            self.token = json.loads(d[2:])[1].get("token") or self.token
            self.hello.set()
        elif d.startswith('42["resumed"'):
            for h in json.loads(d[2:])[1].get("history") or []:
                if not h.get("mine"):
                    L.replayed[h.get("id")].append(self.i)
                self.since = max(self.since, h.get("seq") or 0)

    async def read(self) -> None:
        await super().read()
        if not self.gen.stopping.is_set() and self.left_at is None:
            inner = getattr(self.ws, "inner", None)
            self.outages.append([time.time(), getattr(inner, "broken", None)
                                 or "connection ended", None])

    def absent(self, t0: float, t1: float) -> bool:
        """Was this client away (an outage, or gone) at some moment of [t0, t1]?"""
        spans = [(o[0], o[2] or float("inf")) for o in self.outages]
        if self.left_at is not None:
            spans.append((self.left_at, float("inf")))
        return any(s < t1 and e > t0 for s, e in spans)


async def open_connection(ctx, kind: str, who: str) -> tuple[str, object]:
    """One new Engine.IO session through nginx, as `kind`: "websocket" (straight), "polling"
    (and stay on it), "polling+upgrade" (the page: polling handshake, then WebSocket).
    Returns (what the answer was, the transport when admitted); every attempt is recorded in
    ctx.attempts as (time, who, kind, answer, ms)."""
    import aiohttp

    a, t0 = ctx.a, time.time()
    transport = None
    try:
        if kind == "websocket":
            box: dict = {}
            _REFUSAL.set(box)
            try:
                async with asyncio.timeout(a.attempt_timeout):
                    transport = await ctx.session.ws_connect(
                        ctx.ws_url, autoping=False, max_msg_size=1 << 20)
                label = "admitted"
            except aiohttp.WSServerHandshakeError as exc:
                label = classify(exc.status, box.get("body"))
        else:
            p = Polling(ctx.url, a.attempt_timeout)
            try:
                async with asyncio.timeout(a.attempt_timeout):
                    status, body, _ = await p.handshake()
                if p.sid is None:
                    label = classify(status, body)
                elif kind == "polling":
                    p.start_polling()
                    label, transport = "admitted", p
                else:
                    try:
                        async with asyncio.timeout(a.attempt_timeout):
                            await p.upgrade()
                        label, transport = "admitted", p
                    except aiohttp.WSServerHandshakeError as exc:
                        label = f"admitted, then the upgrade refused {exc.status}"
                    except (aiohttp.ClientError, TimeoutError, ConnectionError,
                            ProbeFailed) as exc:
                        label = f"admitted, then the upgrade failed: {exc}"[:90]
            finally:
                if transport is None:
                    await p.close()
    except TimeoutError:
        label = "timeout"
    except (aiohttp.ServerDisconnectedError, ConnectionResetError) as exc:
        label = f"reset: {type(exc).__name__}"
    except aiohttp.ClientError as exc:
        label = f"failed: {type(exc).__name__}"
    ctx.attempts.append((round(t0, 3), who, kind, label, round((time.time() - t0) * 1000, 1)))
    return label, transport


def client_session(trace: bool = False):
    """An aiohttp session without a connection limit; with the hook that reads the body of
    a refused WebSocket handshake."""
    import aiohttp

    traces = []
    if trace:
        tc = aiohttp.TraceConfig()
        tc.on_request_end.append(_read_refusal)
        traces.append(tc)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trace_configs=traces)


# ------------------------------------------------------------------------------ the crowd


class Newcomer:
    """One browser tab arriving while the cluster is full: tries, reads the refusal, waits
    uniform(backoff) s, tries again; once in, joins and chats until its cohort leaves."""

    def __init__(self, crowd, gen, i: int, kind: str):
        self.crowd, self.gen, self.i, self.kind = crowd, gen, i, kind
        self.tries = 0
        self.admitted_at = None
        self.client = None

    async def live(self) -> None:
        c, (lo, hi) = self.crowd, self.crowd.a.backoff
        await asyncio.sleep(random.uniform(0, hi))  # a crowd arrives over a second or two
        while c.storm and not self.gen.stopping.is_set():
            self.tries += 1
            _, transport = await open_connection(c, self.kind, "newcomer")
            if transport is not None:
                self.admitted_at = time.time()
                await self.chat(transport)
                return
            await asyncio.sleep(random.uniform(lo, hi))

    async def chat(self, transport) -> None:
        a = self.crowd.a
        c = Tracked(self.gen, self.i, a.typing, self.crowd.ledger, self.kind)
        self.client = c
        self.crowd.clients[c.i] = c
        c.attach(transport)
        try:
            await asyncio.wait_for(c.hello.wait(), 20)
            if a.admitted == "idle":
                return
            await c.send("join", {})
            await asyncio.wait_for(c.matched.wait(), 60)
        except (TimeoutError, ConnectionError, RuntimeError):
            return
        c.start_chat(a.interval)


class Crowd:
    """The newcomers, in a process of their own (`overload.py crowd`), driven by the run
    through stdin: {"cmd": "storm", "k": k} lets cohort k loose, {"cmd": "end", "k": k,
    "leave": bool} stops its attempts (and closes its admitted tabs), {"cmd": "stop"} ends
    everything and prints the result as one JSON line."""

    def __init__(self, a):
        self.a = a
        self.url = a.url
        self.ws_url = cap.socketio_url(a.url)
        self.ledger = Ledger()
        self.attempts: list[tuple] = []
        self.cohorts: dict[int, dict] = {}
        self.clients: dict[int, Tracked] = {}
        self.storm = False
        self.lag: list[tuple[float, float]] = []

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.session = client_session(trace=True)
        lagger = loop.create_task(monitor_lag(self.lag))
        print(json.dumps({"ready": True}), flush=True)
        try:
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    break
                cmd = json.loads(line)
                if cmd["cmd"] == "storm":
                    self.start(cmd["k"])
                elif cmd["cmd"] == "end":
                    await self.end(cmd["k"], cmd["leave"])
                elif cmd["cmd"] == "stop":
                    break
            await self.stop()
        finally:
            lagger.cancel()
            await self.session.close()
        print(json.dumps({"result": self.result()}), flush=True)

    def start(self, k: int) -> None:
        a = self.a
        gen = cap.Gen(a.newcomers)
        gen.window = True
        cohort = [Newcomer(self, gen, 100_000 * k + i,
                           "websocket" if i < a.newcomers * a.ws_share else "polling+upgrade")
                  for i in range(a.newcomers)]
        self.storm = True
        loop = asyncio.get_running_loop()
        self.cohorts[k] = {"t0": time.time(), "gen": gen, "newcomers": cohort,
                           "tasks": [loop.create_task(n.live()) for n in cohort]}

    async def end(self, k: int, leave: bool) -> None:
        co = self.cohorts[k]
        self.storm = False
        co["t1"] = time.time()
        if leave:
            co["gen"].stopping.set()
            for n in co["newcomers"]:
                if n.client is not None:
                    n.client.left_at = co["t1"]
            await asyncio.gather(*(n.client.ws.close() for n in co["newcomers"] if n.client),
                                 return_exceptions=True)
        for t in co["tasks"]:
            t.cancel()
        await asyncio.gather(*co["tasks"], return_exceptions=True)

    async def stop(self) -> None:
        self.storm = False
        t_end = time.time()
        for co in self.cohorts.values():
            co["gen"].stopping.set()
            for t in co["tasks"]:
                t.cancel()
        await drain(self.ledger)
        clients = list(self.clients.values())
        for c in clients:
            if c.chat_task:
                c.chat_task.cancel()
        await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None),
                             return_exceptions=True)
        self.t_end = t_end

    def result(self) -> dict:
        return {
            "attempts": self.attempts,
            "messages": list(self.ledger.outcomes(self.clients, self.t_end)),
            "cohorts": {k: {"t0": co["t0"], "t1": co.get("t1"),
                            "tries": [n.tries for n in co["newcomers"]],
                            "admitted_at": [n.admitted_at for n in co["newcomers"]
                                            if n.admitted_at],
                            "outages": [o for n in co["newcomers"] if n.client
                                        for o in n.client.outages],
                            "errors": co["gen"].errors}
                        for k, co in self.cohorts.items()},
            "lag": self.lag,
        }


async def drain(ledger: Ledger) -> None:
    """Until every acked message has arrived or nothing more arrives, at most DRAIN_S."""
    deadline = time.time() + DRAIN_S
    last = -1
    while time.time() < deadline:
        got = sum(len(v) for v in ledger.got.values())
        acked = sum(1 for m in ledger.sent.values() if m["ok"])
        if got == last or len(ledger.got) >= acked:
            break
        last = got
        await asyncio.sleep(0.5)


# ------------------------------------------------------------------------------ the run


class Phases:
    """Wall-clock phase boundaries; a message belongs to the phase it was sent in."""

    def __init__(self):
        self.marks: list[tuple[str, float]] = []

    def start(self, name: str) -> None:
        self.marks.append((name, time.time()))

    def of(self, t: float) -> str | None:
        name = None
        for n, t0 in self.marks:
            if t >= t0:
                name = n
        return name

    def window(self, name: str) -> tuple[float, float]:
        for k, (n, t0) in enumerate(self.marks):
            if n == name:
                return t0, self.marks[k + 1][1] if k + 1 < len(self.marks) else time.time()
        raise KeyError(name)

    def names(self) -> list[str]:
        """The measured phases: A1, B1, A2, ..., C."""
        return [n for n, _ in self.marks if n[0] in "ABC"]

    def after(self, name: str) -> str:
        """The mark that ends phase `name`."""
        k = [n for n, _ in self.marks].index(name)
        return self.marks[k + 1][0]


class Run:
    """The chatters, the phases, the samples, and the crowd process driven from here."""

    def __init__(self, a, stack, ports: dict[str, int], procs: dict, logdir: Path):
        self.a, self.stack, self.ports, self.procs, self.logdir = a, stack, ports, procs, logdir
        self.url = stack.url
        self.ws_url = cap.socketio_url(self.url)
        self.ledger = Ledger()
        self.phases = Phases()
        self.gen = cap.Gen(a.chatters)
        self.attempts: list[tuple] = []
        self.chatters: list[Tracked] = []
        self.cpu: dict[str, dict] = {}
        self.lag: list[tuple[float, float]] = []
        self.readyz: list[tuple[float, str, float, int | None]] = []
        self.errors_at: dict[str, dict] = {}
        self.timeline: list[tuple[str, float]] = []
        self.crowd_result: dict = {}
        self.slow: dict = {}
        self.cpu_series: list[dict] = []
        self.crowd = None

    def say(self, text: str) -> None:
        self.timeline.append((text, round(time.time(), 3)))
        print(f"overload: {text}", flush=True)

    async def sample_workers(self, session) -> None:
        """Each worker's /readyz once a second, directly: its connections, and how long it
        takes to answer a plain request."""
        import aiohttp

        while True:
            for name, port in sorted(self.ports.items()):
                t0 = time.monotonic()
                conns = None
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz",
                                           timeout=aiohttp.ClientTimeout(total=5)) as r:
                        conns = (await r.json()).get("connections")
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass
                self.readyz.append((time.time(), name, (time.monotonic() - t0) * 1000, conns))
            await asyncio.sleep(1)

    async def sample_cpu(self) -> None:
        """Every process's CPU once a second: a phase's mean hides a second in which a
        worker had no CPU to spare."""
        while True:
            self.cpu_series.append(cpu_snapshot(self.procs, self.crowd.pid if self.crowd
                                                else None))
            await asyncio.sleep(1)

    def phase(self, name: str, text: str = "") -> None:
        self.phases.start(name)
        self.cpu[name] = cpu_snapshot(self.procs, self.crowd.pid if self.crowd else None)
        self.errors_at[name] = dict(self.gen.errors)
        if text:
            self.say(f"phase {name}: {text}")

    async def tell_crowd(self, **cmd) -> None:
        self.crowd.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.crowd.stdin.drain()

    async def come_back(self, c: Tracked) -> None:
        """A chatter whose session was ended under it reconnects with its token, on the same
        transport, retrying as socket.io-client does, and chats on once it is back."""
        lo, hi = self.a.backoff
        while not self.gen.stopping.is_set():
            await asyncio.wait({c.reader})
            if self.gen.stopping.is_set():
                return
            await c.ws.inner.close()
            transport = None
            while transport is None and not self.gen.stopping.is_set():
                await asyncio.sleep(random.uniform(lo, hi))
                _, transport = await open_connection(self, c.transport, "chatter coming back")
            if transport is None:
                return
            c.hello.clear()
            c.attach(transport)
            try:
                await asyncio.wait_for(c.hello.wait(), 20)
            except TimeoutError:
                continue
            c.outages[-1][2] = time.time()
            c.start_chat(self.a.interval)

    async def go(self) -> None:
        a = self.a
        loop = asyncio.get_running_loop()
        self.session = client_session(trace=True)
        side = client_session()
        tasks = [loop.create_task(monitor_lag(self.lag)),
                 loop.create_task(self.sample_workers(side)),
                 loop.create_task(self.sample_cpu())]
        params = {k: getattr(a, k) for k in ("newcomers", "ws_share", "backoff",
                                             "attempt_timeout", "interval", "typing",
                                             "admitted", "crowd_nice", "crowd_idle")}
        params["url"] = self.url
        with open(self.logdir / "crowd.log", "w") as log:  # noqa: ASYNC230 - once, at start
            self.crowd = await asyncio.create_subprocess_exec(
                PY, str(Path(__file__).resolve()), "crowd", json.dumps(params),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                limit=1 << 28, start_new_session=True)
        n_poll = round(a.chatters * a.polling_share)
        chatters = [Tracked(self.gen, i, a.typing, self.ledger,
                            "polling" if i < n_poll else "websocket")
                    for i in range(a.chatters)]
        random.shuffle(chatters)  # polling users spread over the pairs
        self.chatters = chatters
        sem = asyncio.Semaphore(50)
        refused: list[str] = []

        async def connect(c: Tracked) -> None:
            async with sem:
                label, transport = await open_connection(self, c.transport, "chatter")
                if transport is None:
                    refused.append(label)
                else:
                    c.attach(transport)

        try:
            ready = await asyncio.wait_for(self.crowd.stdout.readline(), 30)
            if not ready:
                raise RuntimeError("the crowd process did not start; see crowd.log")
            t0 = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(connect(c) for c in chatters)), 60)
            if refused:
                raise RuntimeError(f"below capacity, {len(refused)} chatters were refused: "
                                   f"{Counter(refused)}")
            await asyncio.wait_for(asyncio.gather(*(c.hello.wait() for c in chatters)), 60)
            self.say(f"{a.chatters} chatters connected ({n_poll} on long-polling) in "
                     f"{time.monotonic() - t0:.1f} s")
            t0 = time.monotonic()
            await asyncio.gather(*(c.send("join", {}) for c in chatters))
            await asyncio.wait_for(asyncio.gather(*(c.matched.wait() for c in chatters)), 60)
            self.say(f"{a.chatters // 2} pairs matched in {time.monotonic() - t0:.1f} s")
            self.gen.window = True
            for c in chatters:
                c.start_chat(a.interval)
                tasks.append(loop.create_task(self.come_back(c)))
            self.phase("warm-up")
            await asyncio.sleep(a.warmup)
            part = a.seconds / a.cycles
            for k in range(1, a.cycles + 1):
                self.phase(f"A{k}", f"below capacity, {part:.0f} s")
                await asyncio.sleep(part)
                self.phase(f"B{k}", f"{a.newcomers} newcomers keep trying, {part:.0f} s")
                await self.tell_crowd(cmd="storm", k=k)
                await asyncio.sleep(part)
                await self.tell_crowd(cmd="end", k=k, leave=k < a.cycles)
                if k < a.cycles:  # 200 tabs closing at once: a burst of its own, not A's
                    self.phase(f"leave{k}")
                    await asyncio.sleep(SETTLE_S)
            if a.after_seconds:
                self.phase("C", f"at capacity, the storm over, {a.after_seconds:.0f} s")
                await asyncio.sleep(a.after_seconds)
            self.phase("drain")
            self.gen.stopping.set()
            await self.tell_crowd(cmd="stop")
            await drain(self.ledger)
            line = await asyncio.wait_for(self.crowd.stdout.readline(), 60)
            self.crowd_result = json.loads(line)["result"]
            await asyncio.wait_for(self.crowd.wait(), 10)
        finally:
            self.gen.stopping.set()
            for t in tasks + [c.chat_task for c in chatters if c.chat_task]:
                t.cancel()
            await asyncio.gather(*(c.ws.close() for c in chatters if c.ws is not None),
                                 return_exceptions=True)
            for s in (self.session, side):
                await s.close()
            if self.crowd.returncode is None:
                try:
                    os.killpg(self.crowd.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await self.crowd.wait()


# ------------------------------------------------------------------------------ figures


def cpu_snapshot(procs: dict, crowd_pid: int | None) -> dict:
    """CPU seconds per process group (web1, web2, nginx, redis, ...), the two load processes'
    (generator: the chatters and this script; crowd: the newcomers), and the machine's busy
    seconds (others' work on the shared machine is what is left)."""
    import psutil

    groups: dict[str, float] = defaultdict(float)
    for p, group in procs.values():
        try:
            ct = p.cpu_times()
        except psutil.Error:
            continue
        if group.endswith(" arbiter"):
            group = "web arbiters"
        groups[group] += ct.user + ct.system
    for label, pid in (("generator", os.getpid()), ("crowd", crowd_pid)):
        try:
            ct = psutil.Process(pid).cpu_times() if pid else None
        except psutil.Error:
            ct = None
        if ct:
            groups[label] = ct.user + ct.system
    busy, softirq = cap.machine_busy_s()
    return {"t": time.monotonic(), "groups": dict(groups), "busy": busy, "softirq": softirq}


CLUSTER = ("nginx", "redis", "matcher", "archiver", "web arbiters")


def cpu_pct(parts: list[tuple[dict, dict]]) -> dict:
    """% of one core per group over one or more windows taken together."""
    secs, busy, soft = 0.0, 0.0, 0.0
    groups: dict[str, float] = defaultdict(float)
    for s0, s1 in parts:
        secs += s1["t"] - s0["t"]
        busy += s1["busy"] - s0["busy"]
        soft += s1["softirq"] - s0["softirq"]
        for g, v in s1["groups"].items():
            groups[g] += v - s0["groups"].get(g, v)
    if not secs:
        return {}
    out = {g: round(100 * v / secs, 1) for g, v in groups.items()}
    out["cluster"] = round(sum(v for g, v in out.items()
                               if g in CLUSTER or re.fullmatch(r"web\d+", g)), 1)
    ours = out["cluster"] + sum(out.get(g, 0) for g in ("generator", "crowd", "honcho"))
    out["machine"] = round(100 * busy / secs, 1)
    out["kernel softirq"] = round(100 * soft / secs, 1)
    out["others"] = round(out["machine"] - ours, 1)
    return out


def nginx_log(path: Path, phases: Phases) -> dict:
    """New-session requests in nginx's access log, per phase: how each was answered - by a
    worker (after how many 503s) or by nginx alone (no worker left to ask)."""
    out: dict[str, Counter] = defaultdict(Counter)
    times: dict[str, list[float]] = defaultdict(list)
    if not path.exists():
        return {}
    # The log names the request's group (`group=$session_upstream`: chat_web for a handshake,
    # chat_web_<worker> for a request of an open session) and not its query string (a private
    # room's key must not be logged); an older log had the query string, and its sid.
    rx = re.compile(r'\[([^\]]+)\] "(\S+) (\S+) [^"]*" (\d{3}) \d+ ([\d.]+) '
                    r'upstream=(.*?)(?: group=(\S+))?$')
    for line in path.read_text(errors="replace").splitlines():
        m = rx.search(line)
        if not m or not m.group(3).startswith("/socket.io/"):
            continue
        if (m.group(7) or "").startswith("chat_web_") or "sid=" in m.group(3):
            continue  # a request of an open session, not a new one
        # logged when the request ends (a WebSocket: when it closes); 1 s resolution
        t = dt.datetime.strptime(m.group(1), "%d/%b/%Y:%H:%M:%S %z").timestamp() + 0.5 \
            - float(m.group(5))
        phase = phases.of(t) or "before"
        ups = m.group(6)
        addrs, _, statuses = ups.rpartition("/")
        statuses = [s.strip() for s in statuses.split(",") if s.strip() not in ("", "-")]
        n503 = statuses.count("503")
        if not statuses or addrs.strip() in ("-", "chat_web"):
            how = "nginx alone (no worker tried)"
        elif statuses[-1] in ("101", "200"):
            how = f"a worker admitted it after {n503} worker 503(s)"
        elif len(statuses) == n503:
            how = f"{n503} worker 503(s), then " + ("that 503 passed on" if m.group(4) == "503"
                                                   else f"nginx {m.group(4)}")
        else:
            how = f"worker statuses {','.join(statuses)}"
        out[phase][f"{m.group(4)}: {how}"] += 1
        times[phase].append(float(m.group(5)) * 1000)
    return {ph: {"answers": dict(c.most_common()), "request_ms": pcts(times[ph])}
            for ph, c in out.items()}


def stack_log(path: Path, phases: Phases) -> dict:
    """What the processes said: the workers' refusals logged while full (one line per 10 s:
    a lower bound), tracebacks, and log lines per process and phase (nginx writes an error line
    for each request it finds no live worker for; honcho relays every line)."""
    out = {"full_refusals_logged": Counter(), "tracebacks": 0}
    lines: dict[str, Counter] = defaultdict(Counter)
    if not path.exists():
        return out
    day = dt.date.today()
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"(\d\d):(\d\d):(\d\d) (\S+)\s+\| ", line)
        if not m:
            continue
        name = m.group(4)
        t = dt.datetime(day.year, day.month, day.day, *map(int, m.group(1, 2, 3))).timestamp()
        lines[phases.of(t + 0.5) or "before"][name] += 1
        m = re.search(r"full: refused (\d+) new sessions", line)
        if m:
            out["full_refusals_logged"][name] += int(m.group(1))
        if "Traceback" in line:
            out["tracebacks"] += 1
    out["full_refusals_logged"] = dict(out["full_refusals_logged"])
    out["lines_per_phase"] = {ph: dict(c.most_common()) for ph, c in lines.items()}
    return out


def redis_client(procs: dict):
    """The stack's private redis-server, reached on its loopback port."""
    import psutil
    import redis

    for p, group in procs.values():
        if group == "redis":
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1":
                    return redis.Redis(host="127.0.0.1", port=c.laddr.port, socket_timeout=5)
    return None


def script_names() -> dict[str, str]:
    """sha1 -> script name of common/lua/*.lua as the store loads them (one Redis, default
    prefix), so that the slow log says which script was slow."""
    import hashlib

    try:
        from common import store
        from common.redisconn import keys_of
        from stack.cluster import default_settings

        prelude = store.lua_prelude(keys_of(default_settings()), False)
        return {hashlib.sha1((prelude + p.read_text()).encode()).hexdigest(): p.stem
                for p in sorted(store.LUA_DIR.glob("*.lua"))}
    except Exception:  # noqa: BLE001 - without names the shas are still figures
        return {}


def slowlog(r, ph: Phases) -> dict:
    """Redis commands slower than SLOW_US, per phase: one script call that holds Redis's one
    thread delays every chat message behind it."""
    if r is None:
        return {}
    names = script_names()
    out: dict[str, dict] = {}
    try:
        entries = r.slowlog_get(4096)
    except Exception as exc:  # noqa: BLE001
        return {"error": repr(exc)}
    for e in entries:
        cmd = e["command"].decode(errors="replace") if isinstance(e["command"], bytes) \
            else str(e["command"])
        parts = cmd.split()
        what = parts[0].upper() if parts else "?"
        if what == "EVALSHA" and len(parts) > 1:
            what = f"{names.get(parts[1], parts[1][:8])}.lua"
        phase = ph.of(e["start_time"] + 0.5) or "before"
        d = out.setdefault(phase, {"count": 0, "max_ms": 0.0, "by_command": Counter()})
        ms = e["duration"] / 1000
        d["count"] += 1
        d["max_ms"] = round(max(d["max_ms"], ms), 1)
        d["by_command"][what] += 1
    for d in out.values():
        d["by_command"] = dict(d["by_command"].most_common(6))
    return out


SLOW_US = 2000  # Redis's slow log threshold during the run (its default is 10 ms)


STEADY = "B after 2 s"  # the Bs without their first seconds: the arrivals' burst left out
SETTLE_S = 2.0


def members(ph: Phases, row: str) -> list[str]:
    """The phases a row of the table covers: every A (every B) for the pooled rows, else the
    phase of that name."""
    if row in ("A", "B", STEADY):
        return [n for n in ph.names() if n[0] == row[0]]
    return [row]


def figures(r: Run, logdir: Path) -> dict:
    a, ph = r.a, r.phases
    rows = ([n for n in ph.names() if n[0] in "AB"] if a.cycles > 1 else []) \
        + ["A", "B", STEADY] + (["C"] if "C" in ph.names() else [])
    t0_run = ph.window(ph.names()[0])[0]
    t_end = ph.window("drain")[0]
    crowd = r.crowd_result

    def bucket():
        return {"delivery": [], "ack": [], "lost": 0, "dup": 0, "mis": 0, "unacked": 0,
                "ack_refused": 0, "sent": 0, "unverifiable": 0, "replayed": 0}

    per = {n: bucket() for n in rows}
    per_new = {n: bucket() for n in rows}
    by_second: dict[int, list[float]] = defaultdict(list)
    row_of = {n: [x for x in rows if n in members(ph, x)] for n in ph.names()}
    for mine, msgs in ((True, r.ledger.outcomes({c.i: c for c in r.chatters}, t_end)),
                       (False, crowd.get("messages", []))):
        for t, outcome, ack_ms, mis, dup in msgs:
            phase = ph.of(t)
            for row in row_of.get(phase, []):
                if row == STEADY and t < ph.window(phase)[0] + SETTLE_S:
                    continue
                b = (per if mine else per_new)[row]
                b["sent"] += 1
                b["mis"] += mis
                b["dup"] += dup
                if ack_ms is not None:
                    b["ack"].append(ack_ms)
                if isinstance(outcome, str):
                    b[outcome] += 1
                else:
                    b["delivery"].append(outcome)
            if mine and not isinstance(outcome, str) and ph.of(t) in row_of:
                by_second[int(t - t0_run)].append(outcome)
    crowd_lag = [tuple(x) for x in crowd.get("lag", [])]
    chat, cpu = {}, {}
    for row in rows:
        b, bn = per[row], per_new[row]
        ms = members(ph, row)
        ws = [ph.window(n) for n in ms]

        def inside(t, ws=ws):
            return any(w0 <= t < w1 for w0, w1 in ws)

        rz, conns = defaultdict(list), defaultdict(list)
        for t, name, lat, c in r.readyz:
            if inside(t):
                rz[name].append(lat)
                if c is not None:
                    conns[name].append(c)
        errs: Counter = Counter()
        for n in ms:
            e0, e1 = r.errors_at[n], r.errors_at[ph.after(n)]
            errs.update({k: v - e0.get(k, 0) for k, v in e1.items() if v - e0.get(k, 0)})
        chat[row] = {
            "seconds": round(sum(w1 - w0 for w0, w1 in ws), 1),
            "messages_sent": b["sent"], "delivered": len(b["delivery"]),
            "delivery_ms": pcts(b["delivery"]), "ack_ms": pcts(b["ack"]),
            "lost": b["lost"], "duplicated": b["dup"], "misdelivered": b["mis"],
            "unacked": b["unacked"], "ack_refused": b["ack_refused"],
            "replayed_on_resume": b["replayed"],
            "unverifiable_partner_away": b["unverifiable"],
            "newcomers_messages": {"sent": bn["sent"], "delivered": len(bn["delivery"]),
                                   "delivery_ms": pcts(bn["delivery"]), "lost": bn["lost"],
                                   "duplicated": bn["dup"], "misdelivered": bn["mis"],
                                   "unacked": bn["unacked"]},
            "generator_loop_lag_ms": pcts([x for t, x in r.lag if inside(t)]),
            "crowd_loop_lag_ms": pcts([x for t, x in crowd_lag if inside(t)]),
            "readyz_ms": {k: pcts(v) for k, v in sorted(rz.items())},
            "worker_connections_max": {k: max(v) for k, v in sorted(conns.items())},
            "chatter_errors": dict(errs),
        }
        wall = time.time() - time.monotonic()  # snapshots carry monotonic times
        peaks: dict[str, float] = {}
        for s0, s1 in zip(r.cpu_series, r.cpu_series[1:]):
            if inside(s0["t"] + wall) and inside(s1["t"] + wall):
                for g, v in cpu_pct([(s0, s1)]).items():
                    if g in ("nginx", "redis", "matcher", "machine") \
                            or re.fullmatch(r"web\d+", g):
                        peaks[g] = max(peaks.get(g, 0.0), v)
        chat[row]["cpu_pct_busiest_second"] = peaks
        if row != STEADY:  # CPU is snapshotted at the phases' bounds only
            cpu[row] = cpu_pct([(r.cpu[n], r.cpu[ph.after(n)]) for n in ms])
    return {"chatters": chat, "cpu_pct_of_one_core": cpu,
            "attempts": storm_figures(r), "chatter_outages": outages(r.chatters),
            "chatter_delivery_per_second": {
                str(k): {x: v.get(x) for x in ("p50", "p99", "n")}
                for k, v in ((k, pcts(v)) for k, v in sorted(by_second.items()))},
            "nginx": nginx_log(logdir / "nginx-access.log", ph),
            "redis_slowlog": r.slow,
            "stack_log": stack_log(logdir / "stack.log", ph)}


def outages(clients: list[Tracked]) -> dict:
    """Sessions of chatters ended under them: how many, why, how long until they were back."""
    out = [o for c in clients for o in c.outages]
    back = [o[2] - o[0] for o in out if o[2] is not None]
    return {"count": len(out), "clients": sum(1 for c in clients if c.outages),
            "by_transport": dict(Counter(c.transport for c in clients for _ in c.outages)),
            "why": dict(Counter(o[1] for o in out).most_common()),
            "back_after_s": pcts(back), "never_back": sum(1 for o in out if o[2] is None)}


def storm_figures(r: Run) -> dict:
    """Every new-connection attempt (the newcomers', and the chatters' coming back): the
    answers by transport and how fast they came; per cohort, who got in and when."""
    out = {}
    every = r.attempts + [tuple(x) for x in r.crowd_result.get("attempts", [])]
    for who in ("newcomer", "chatter coming back"):
        att = [x for x in every if x[1] == who]
        outcomes = Counter(x[3] for x in att)
        by_kind: dict[str, Counter] = defaultdict(Counter)
        lat = defaultdict(list)
        for _, _, kind, label, ms in att:
            by_kind[kind][label] += 1
            lat[label].append(ms)
        out[who] = {
            "attempts": len(att), "outcomes": dict(outcomes.most_common()),
            "by_transport": {k: dict(v.most_common()) for k, v in by_kind.items()},
            "answer_ms": {k: pcts(v) for k, v in lat.items()},
            "refused": sum(v for k, v in outcomes.items() if k != "admitted"),
            "visible": sum(v for k, v in outcomes.items() if k in VISIBLE),
            "silent_or_unclear": {k: v for k, v in outcomes.items()
                                  if k != "admitted" and k not in VISIBLE},
        }
    cohorts = []
    for k, co in sorted(r.crowd_result.get("cohorts", {}).items(), key=lambda x: int(x[0])):
        b0, b1 = r.phases.window(f"B{k}")
        n_att = sum(1 for x in every if x[1] == "newcomer" and b0 <= x[0] < b1 + 0.5)
        cohorts.append({
            "phase": f"B{k}", "newcomers": len(co["tries"]), "attempts": n_att,
            "attempts_per_s": round(n_att / max(1e-9, b1 - b0), 1),
            "admitted": len(co["admitted_at"]),
            "admitted_after_s": pcts([t - co["t0"] for t in co["admitted_at"]]),
            "never_admitted": len(co["tries"]) - len(co["admitted_at"]),
            "tries_per_newcomer": pcts(co["tries"]),
            "sessions_ended_under_them": dict(Counter(o[1] for o in co["outages"])),
            "errors": co["errors"]})
    out["cohorts"] = cohorts
    return out


# ------------------------------------------------------------------------------ the report


def trio(p: dict) -> str:
    return " / ".join(f(p.get(k)) for k in ("p50", "p95", "p99")) if p.get("n") else "–"


def ratio(x, y):
    return round(x / y, 2) if x is not None and y else None


def verdict(fig: dict, a) -> dict:
    """The issue's checks, as measured."""
    ch = fig["chatters"]
    p99 = {n: ch[n]["delivery_ms"].get("p99") for n in ch}
    st = fig["attempts"]["newcomer"]
    harm = {k: sum(ch[n][k] for n in ("A", "B", "C") if n in ch)
            for k in ("lost", "duplicated", "misdelivered", "unacked")}
    harm["sessions_ended_under_them"] = fig["chatter_outages"]["count"]
    r = ratio(p99.get("B"), p99.get("A"))
    return {
        "p99_ratio_B_over_A": r, "goal_ratio": GOAL_RATIO,
        "ratio_met": r is not None and r <= GOAL_RATIO,
        "p99_ratio_per_cycle": {f"B{k}/A{k}": ratio(p99.get(f"B{k}"), p99.get(f"A{k}"))
                                for k in range(1, a.cycles + 1) if f"A{k}" in p99},
        "p99_ratio_B_after_2s_over_A": ratio(p99.get(STEADY), p99.get("A")),
        "p99_ratio_C_over_A": ratio(p99.get("C"), p99.get("A")),
        "overloaded": st["refused"] > 0,
        "every_refusal_visible": st["refused"] > 0 and not st["silent_or_unclear"],
        "worker_refusals": st["outcomes"].get("503 worker: full", 0),
        "nginx_refusals": st["outcomes"].get("503 nginx: every worker full or restarting", 0),
        "chatters_unharmed": not any(harm.values()), "chatter_harm": harm,
    }


ROW_NAMES = {"A": "A, below capacity", "B": "B, past capacity",
             STEADY: f"B without its first {SETTLE_S:g} s (the arrivals)",
             "C": "C, at capacity, storm over"}


def table(fig: dict, a) -> str:
    ch, cpu, storm = fig["chatters"], fig["cpu_pct_of_one_core"], fig["attempts"]
    webs = sorted({g for c in cpu.values() for g in c if re.fullmatch(r"web\d+", g)})
    head = ["phase", "s", "chatters' delivery p50 / p95 / p99 ms", "ack p99 ms", "delivered",
            "lost", "dup", "newcomers' msgs delivered", *[f"{w} %" for w in webs], "nginx %",
            "redis %", "cluster %", "honcho %", "generator %", "crowd %", "others %",
            "lag p99 ms: generator / crowd", "max conns per worker"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, c in ch.items():
        p = cpu.get(n, {})
        name = ROW_NAMES.get(n, n)
        if n in ("A", "B") and a.cycles > 1:
            name = f"**{name} (all {n}s)**"
        rows.append("| " + " | ".join([
            name, f(c["seconds"]), trio(c["delivery_ms"]), f(c["ack_ms"].get("p99")),
            str(c["delivered"]), str(c["lost"]), str(c["duplicated"]),
            str(c["newcomers_messages"]["delivered"]),
            *[f(p.get(w), 1) for w in webs], f(p.get("nginx"), 1), f(p.get("redis"), 1),
            f(p.get("cluster"), 1), f(p.get("honcho"), 1), f(p.get("generator"), 1),
            f(p.get("crowd"), 1), f(p.get("others"), 1),
            (f"{f(c['generator_loop_lag_ms'].get('p99'), 1)} / "
             f"{f(c['crowd_loop_lag_ms'].get('p99'), 1)}"),
            ", ".join(f"{k} {v}" for k, v in c["worker_connections_max"].items()) or "–",
        ]) + " |")
    out = ["\n".join(rows), ""]
    for co in storm["cohorts"]:
        out.append(f"{co['phase']}: {co['newcomers']} newcomers made {co['attempts']} attempts "
                   f"({co['attempts_per_s']}/s); {co['admitted']} got in (median "
                   f"{f(co['admitted_after_s'].get('p50'), 1)} s, last "
                   f"{f(co['admitted_after_s'].get('max'), 1)} s after the phase began), "
                   f"{co['never_admitted']} never did.")
    out += ["", ("| answer to a new connection | who | polling handshake + upgrade | "
                 "polling | WebSocket | answer p50 / p99 ms |"), "|---|---|---|---|---|---|"]
    for who, st in ((w, storm[w]) for w in ("newcomer", "chatter coming back")):
        bt = st["by_transport"]
        for label in st["outcomes"]:
            ms = st["answer_ms"][label]
            out.append(f"| {label} | {who} | {bt.get('polling+upgrade', {}).get(label, 0)} | "
                       f"{bt.get('polling', {}).get(label, 0)} | "
                       f"{bt.get('websocket', {}).get(label, 0)} | {f(ms.get('p50'))} / "
                       f"{f(ms.get('p99'))} |")
    return "\n".join(out)


def counts(d: dict) -> str:
    """{"x": 3, "y": 1} -> "3 × x; 1 × y" (or "none")."""
    return "; ".join(f"{n} × {k}" for k, n in d.items()) or "none"


def docs_entry(meta: dict, fig: dict, v: dict, a, summary_rel: str) -> str:
    st = fig["attempts"]["newcomer"]
    og = fig["chatter_outages"]
    ng: Counter = Counter()
    for n, d in fig["nginx"].items():
        if n.startswith("B"):
            ng.update(d["answers"])
    ng_txt = counts(dict(ng.most_common())) if ng else "no access log"
    cyc = ", ".join(f"{k} = {f(x, 2)}" for k, x in v["p99_ratio_per_cycle"].items())
    lines = [
        (f"### {meta['started_human']}: {a.workers} workers × MAX_CONNECTIONS "
         f"{a.max_connections}, {a.chatters} chatters, {a.newcomers} newcomers"),
        "",
        (f"`{meta['command']}` at commit `{meta['commit'][:7]}`"
         f"{' (server code modified in the working tree)' if meta['dirty'] else ''}; "
         f"load average before: {meta['loadavg_before']}, after: {meta['loadavg_after']} "
         f"({meta['cores']} cores, shared); the crowd "
         f"{'under SCHED_IDLE' if a.crowd_idle else f'at nice {a.crowd_nice}'}; "
         f"{round(meta['elapsed_s'])} s; "
         f"`{summary_rel}` (git-ignored)."),
        "",
        table(fig, a),
        "",
        (f"- **p99 delivery B / A = {f(v['p99_ratio_B_over_A'], 2)}** (goal ≤ {GOAL_RATIO:g}: "
         f"{'met' if v['ratio_met'] else 'missed'}); per cycle {cyc or '–'}; without the "
         f"first {SETTLE_S:g} s of each B: {f(v['p99_ratio_B_after_2s_over_A'], 2)}; C / A = "
         f"{f(v['p99_ratio_C_over_A'], 2)}."),
        (f"- Refusals of newcomers: {st['refused']}, of which {st['visible']} said why (the "
         f"worker's 503: {v['worker_refusals']}, nginx's own 503: {v['nginx_refusals']}); "
         f"silent or unclear: {counts(st['silent_or_unclear'])}."),
        (f"- Chatters: lost {v['chatter_harm']['lost']}, duplicated "
         f"{v['chatter_harm']['duplicated']}, misdelivered {v['chatter_harm']['misdelivered']}, "
         f"unacknowledged {v['chatter_harm']['unacked']}. Sessions ended under them: "
         f"{og['count']} ({counts(og['by_transport'])} chatters' sessions; "
         f"{counts(og['why'])}); back after p50 {f(og['back_after_s'].get('p50'), 1)} s, max "
         f"{f(og['back_after_s'].get('max'), 1)} s; not back by the end: {og['never_back']}."),
        f"- nginx's access log, new sessions in B: {ng_txt}.",
        "",
    ]
    return "\n".join(lines)


SECTION_INTRO = """\
What the cluster does past its capacity, measured by `make overload` (`loadtests/overload.py`;
its docstring has the details): `python -m stack cluster` with a low MAX_CONNECTIONS per web
worker, every client through nginx on loopback, nginx's per-address limits off as in every load
test here (all clients come from 127.0.0.1).

- **A**, below capacity: chatting pairs, each user one message every 2 s on average, each
  preceded by `typing`; a tenth of them on long-polling, the rest on WebSocket.
- **B**, past capacity: the same chat while more newcomers than there are free places keep
  opening connections (half with the page's polling handshake and upgrade, half straight to
  WebSocket; all of them arrive within 2 s), each retrying 1 – 2 s after a refusal. Those who
  get in join and chat too, and close their tabs at the end of B (2 s left unmeasured), so that
  the next A is below capacity again. A and B alternate twice, so that the other loads of this
  shared machine weigh on both alike; the ratio is over all As and all Bs. "B without its first
  2 s" leaves out the arrivals' burst.
- **C**: after the last B nobody tries any more and the admitted newcomers keep chatting: the
  cluster at capacity, without refusals.

Delivery is send → the partner's `message`, measured by the load generator; the newcomers run in
a second process ("crowd", nice 10 and SCHED_IDLE unless --no-crowd-idle: in production the
storm comes from other machines; here it gets a CPU only when the chat leaves one free), so that the storm's attempts do not delay the chatters'
event loop; both loops' own lag is in the table, as it is in every latency they measure. CPU in
% of one core over each phase; "others" is the rest of the machine's busy time (other people's
runs, and the kernel's loopback networking; a difference of counters, ±1). A chatter whose
session is ended under it comes back with its token, retrying like the page. The goal of the
issue: every refusal says why, and the chatters' p99 delivery in B stays within 2x of A's.
"""


def add_to_docs(entry: str) -> None:
    """Adds the run to the "Overload" section (made at the end of the file the first time);
    only that section is touched."""
    text = SCALING.read_text()
    if SECTION not in text.splitlines():
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{SECTION_INTRO}\n{entry}"
    else:
        lines = text.splitlines(keepends=True)
        start = lines.index(SECTION + "\n")
        end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")),
                   len(lines))
        body = "".join(lines[start:end]).rstrip("\n") + "\n\n" + entry
        text = "".join(lines[:start]) + body + ("\n" + "".join(lines[end:])
                                                 if end < len(lines) else "")
    SCALING.write_text(text if text.endswith("\n") else text + "\n")


def loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["crowd"]:  # the newcomers' process, started by Run.go
        params = json.loads(argv[1])
        params["backoff"] = tuple(params["backoff"])
        os.nice(params["crowd_nice"])
        if params.get("crowd_idle") and hasattr(os, "SCHED_IDLE"):
            # Linux: a CPU only when no process of normal priority wants one, and a waking chat
            # process preempts it at once (nice 10 still took ~30 % of a core beside the chat)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        asyncio.run(Crowd(argparse.Namespace(**params)).main())
        return 0
    ap = argparse.ArgumentParser(prog="loadtests/overload.py",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="web workers behind nginx")
    ap.add_argument("--max-connections", type=int, default=300,
                    help="MAX_CONNECTIONS per web worker")
    ap.add_argument("--chatters", type=int, default=400, help="chatting clients (even)")
    ap.add_argument("--newcomers", type=int, default=600, help="clients arriving in phase B")
    ap.add_argument("--interval", type=float, default=2.0,
                    help="seconds between one user's messages, on average (uniform 0.5x-1.5x)")
    ap.add_argument("--typing", type=float, default=1.0, help="typing events per message")
    ap.add_argument("--warmup", type=float, default=10, help="seconds of chat before A")
    ap.add_argument("--seconds", type=float, default=40,
                    help="seconds of all As together, and of all Bs")
    ap.add_argument("--cycles", type=int, default=2,
                    help="A and B alternate this many times, --seconds/--cycles s each: on a "
                         "shared machine others' load then weighs on both alike")
    ap.add_argument("--after-seconds", type=float, default=20,
                    help="seconds of phase C (at capacity, the storm over); 0: none")
    ap.add_argument("--backoff", default="1,2",
                    help="a newcomer waits uniform(LO, HI) s after a refusal")
    ap.add_argument("--attempt-timeout", type=float, default=10,
                    help="an attempt unanswered after this many seconds is a timeout")
    ap.add_argument("--polling-share", type=float, default=0.1,
                    help="share of the chatters on long-polling (the rest on WebSocket)")
    ap.add_argument("--ws-share", type=float, default=0.5,
                    help="share of the newcomers trying WebSocket directly (the rest: the "
                         "page's polling handshake, then the upgrade)")
    ap.add_argument("--crowd-nice", type=int, default=10,
                    help="the crowd process's nice level: in production the crowd is on other "
                         "machines, here its work competes with the cluster's for 2 cores")
    ap.add_argument("--crowd-idle", action=argparse.BooleanOptionalAction, default=True,
                    help="run the crowd under SCHED_IDLE (Linux): it gets a CPU only when the "
                         "cluster and the chatters leave one free, as a crowd on other machines "
                         "would take none of theirs")
    ap.add_argument("--admitted", choices=("chat", "idle"), default="chat",
                    help="what an admitted newcomer does: join and chat, or stay connected")
    ap.add_argument("--no-docs", action="store_true",
                    help="do not add the run to docs/SCALING.md")
    a = ap.parse_args(argv)
    try:
        a.backoff = tuple(float(x) for x in a.backoff.split(","))
        if len(a.backoff) != 2 or not 0.1 <= a.backoff[0] <= a.backoff[1] <= 30:
            raise ValueError("--backoff LO,HI with 0.1 <= LO <= HI <= 30")
        if not 1 <= a.workers <= 8:
            raise ValueError("--workers: 1..8")
        if not 10 <= a.max_connections <= 2000:
            raise ValueError("--max-connections: 10..2000")
        if not (2 <= a.chatters <= 2000 and a.chatters % 2 == 0):
            raise ValueError("--chatters: an even number, 2..2000")
        if a.chatters >= a.workers * a.max_connections:
            raise ValueError("--chatters must be below --workers x --max-connections: phase A "
                             "is below capacity")
        if not 1 <= a.newcomers <= 3000:
            raise ValueError("--newcomers: 1..3000")
        if a.chatters + a.newcomers <= a.workers * a.max_connections:
            raise ValueError("--chatters + --newcomers must exceed the capacity "
                             "(--workers x --max-connections): phase B is past it")
        if not (0.5 <= a.interval <= 30 and 0 <= a.typing <= 1 and 0 <= a.warmup <= 30
                and 5 <= a.seconds <= 90 and 0 <= a.after_seconds <= 60
                and 1 <= a.attempt_timeout <= 30 and 0 <= a.polling_share <= 1
                and 0 <= a.ws_share <= 1 and 1 <= a.cycles <= 3 and 0 <= a.crowd_nice <= 19):
            raise ValueError("--interval 0.5..30, --typing 0..1, --warmup 0..30, --seconds "
                             "5..90, --after-seconds 0..60, --attempt-timeout 1..30, shares 0..1, "
                             "--cycles 1..3, --crowd-nice 0..19")
        load_s = a.warmup + 2 * a.seconds + a.after_seconds + DRAIN_S + SETTLE_S * a.cycles
        if STARTUP_BUDGET_S + load_s + STOP_BUDGET_S > MAX_TOTAL_S:
            raise ValueError(f"the run would take up to {STARTUP_BUDGET_S + load_s + STOP_BUDGET_S:.0f}"
                             f" s, over {MAX_TOTAL_S}: shorter phases")
    except ValueError as exc:
        print(f"overload: {exc}", file=sys.stderr)
        return 2
    if stacks.LocalStack.pick() != "cluster":
        print("overload: `python -m stack cluster` needs nginx (apt-get install nginx)",
              file=sys.stderr)
        return 2

    t_start = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = HERE / "results" / f"overload-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    meta = {"started": stamp, "started_human": dt.datetime.now().strftime("%-d %B %Y %H:%M"),
            "command": "python loadtests/overload.py " + " ".join(argv) if argv
            else "make overload", "loadavg_before": loadavg(), "cores": os.cpu_count(),
            **{k: v for k, v in cap.git_state().items() if k in ("commit", "dirty",
                                                                  "changed_files")},
            "versions": cap.versions(),
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()}}
    print(f"overload: logs in {logdir.relative_to(ROOT)}; load average {meta['loadavg_before']}",
          flush=True)
    stack = stacks.LocalStack(logdir, a.workers, "cluster",
                               extra_env={"MAX_CONNECTIONS": str(a.max_connections)})
    r = None
    try:
        stack.wait_ready(60)
        ports = stacks.web_workers(stack.p.pid)
        if len(ports) != a.workers:
            raise RuntimeError(f"{len(ports)} of {a.workers} web workers listen; see stack.log")
        stacks.check_loopback(stack.url)
        procs = stacks.stack_processes(stack.p.pid)
        r = Run(a, stack, ports, procs, logdir)
        red = redis_client(procs)
        if red is not None:
            red.config_set("slowlog-log-slower-than", SLOW_US)
            red.config_set("slowlog-max-len", 4096)
            red.slowlog_reset()
        budget = MAX_TOTAL_S - STOP_BUDGET_S - (time.monotonic() - t_start)
        asyncio.run(asyncio.wait_for(r.go(), budget))
        time.sleep(1.5)  # nginx flushes its access log buffer every second
        r.slow = slowlog(red, r.phases)
        access = Path(stack.tmp) / "cluster" / "nginx" / "logs" / "access.log"
        if access.exists():
            shutil.copy(access, logdir / "nginx-access.log")
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"overload: failed: {exc!r} (see {logdir.relative_to(ROOT)})", file=sys.stderr)
        return 2
    finally:
        stack.stop()
    meta["loadavg_after"] = loadavg()
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    fig = figures(r, logdir)
    v = verdict(fig, a)
    summary = {"meta": meta, "verdict": v, **fig,
               "phases": [(n, round(t, 3)) for n, t in r.phases.marks],
               "timeline": [(text, round(t, 3)) for text, t in r.timeline]}
    (logdir / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False,
                                                    default=str) + "\n")
    print("\n" + table(fig, a) + "\n")
    st = fig["attempts"]["newcomer"]
    print(f"p99 delivery of the chatters: B / A = {f(v['p99_ratio_B_over_A'], 2)} (goal <= "
          f"{GOAL_RATIO:g}: {'met' if v['ratio_met'] else 'MISSED'}); per cycle "
          f"{v['p99_ratio_per_cycle']}; without the first {SETTLE_S:g} s of each B "
          f"{f(v['p99_ratio_B_after_2s_over_A'], 2)}; C / A = {f(v['p99_ratio_C_over_A'], 2)}")
    print(f"newcomers' refusals: {st['refused']}; with a reason: {st['visible']}; "
          f"silent or unclear: {st['silent_or_unclear'] or 'none'}")
    print(f"chatters: {v['chatter_harm']}; sessions ended under them: "
          f"{fig['chatter_outages']}")
    for ph, d in fig["nginx"].items():
        print(f"nginx, new sessions in {ph}: {d['answers']}")
    print(f"log lines per phase: {fig['stack_log']['lines_per_phase']}")
    print(f"Redis commands over {SLOW_US / 1000:g} ms per phase: {fig['redis_slowlog']}")
    rel = str((logdir / "summary.json").relative_to(ROOT))
    if not a.no_docs:
        add_to_docs(docs_entry(meta, fig, v, a, rel))
        print(f"overload: added the run to {SCALING.relative_to(ROOT)} ({SECTION})")
    print(f"overload: wrote {rel}; {meta['elapsed_s']:.0f} s")
    ok = (v["ratio_met"] and v["every_refusal_visible"] and v["chatters_unharmed"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
