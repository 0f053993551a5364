"""Figures for docs/RELIABILITY.md: every attack of issue 11's first table, each run for a window
(8 s by default) against one real web worker (its own Redis, worker and matcher on free loopback
ports, default settings) while five normal pairs on the same worker chat; prints, per attack, the
pairs' delivery latency p50/p99/max and its sample count, messages lost, errors the bystanders
received, the worker's RSS/CPU/descriptors, tracebacks in its log, and the attack's own figures.

    .venv/bin/python tests/attacks.py [--seconds 8] [--only star,slowloris]   (or `make attacks`)

Targets 127.0.0.1 only; the attacker runs in its own process and connects from 127.0.0.2 (another
loopback address, so the per-address cap counts it apart from the pairs); every attack is
bounded in count and in time. Delivery latency is measured, never asserted: the exit code is 1
only when a message was lost, a bystander got an error, or the worker logged a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import concurrent.futures
import http.client
import json
import re
import select
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from peer import Peer, close_all, pair
from procs import MatcherProc, RedisServer, WebWorker, base_env
from test_guard import (
    ATTACKER,
    MALFORMED_FRAMES,
    MALFORMED_HTTP,
    MIB,
    connect,
    frame_header,
    send_until_cut,
    split_frames,
    ws_open,
)
from test_packets import BINARY_ATTACK, MALFORMED

from common.config import load as load_settings

DEFAULTS = load_settings({})
PAIRS = 5
PAIR_RATE = 0.8 * DEFAULTS.message_rate  # messages per second per side: under MESSAGE_RATE
MAX_ROUNDS = 20_000  # no attack loops more often than this, whatever the window
CHEAP_PACKETS = 200_000  # the flood, across all connections of one window
ADMIN_PASSWORD = "attack-bench-admin-password"
SURROGATE = r"\ud800"  # JSON's escape of a lone surrogate: valid UTF-8 on the wire


# ------------------------------------------------------------------------------ a raw client


class RawWS:
    """Engine.IO v4 / Socket.IO v5 by hand over a blocking socket from the attacker's address:
    sends anything, reads what comes back without ever blocking longer than asked."""

    def __init__(self, target):
        self.target = target
        self.sock = ws_open(target, ATTACKER)
        self.buf = b""
        self.closed = False
        self.codes: collections.Counter = collections.Counter()  # error codes received
        self.events: list[tuple[str, object]] = []

    def send(self, data) -> bool:
        """One frame (str: text, bytes: binary); False once the server has closed."""
        payload = data.encode() if isinstance(data, str) else data
        return self.send_raw(frame_header(len(payload), 1 if isinstance(data, str) else 2)
                             + payload)

    def send_raw(self, raw: bytes) -> bool:
        if self.closed:
            return False
        try:
            self.sock.sendall(raw)
            return True
        except OSError:
            self.closed = True
            return False

    def poll(self, timeout: float = 0.0) -> None:
        """Read and parse whatever arrives within `timeout` (0: only what is there now)."""
        end = time.monotonic() + timeout
        while not self.closed:
            wait = max(0.0, end - time.monotonic())
            if not select.select([self.sock], [], [], wait)[0]:
                return
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.buf += chunk
            self._frames()

    def _frames(self) -> None:
        frames, self.buf = split_frames(self.buf)
        for opcode, payload in frames:
            if opcode == 8:
                self.closed = True
                return
            if opcode == 1:
                self._packet(payload.decode("utf-8", "replace"))

    def _packet(self, text: str) -> None:
        if text == "2":
            self.send("3")
        elif text.startswith("42"):
            args = json.loads(text[2:])
            data = args[1] if len(args) > 1 else None
            self.events.append((args[0], data))
            if args[0] == "error" and isinstance(data, dict):
                self.codes[data.get("code")] += 1
        elif text.startswith("43"):
            m = re.match(r"43\d+(.*)", text, re.DOTALL)
            ack = json.loads(m.group(1)) if m else None
            if ack and isinstance(ack[0], dict) and isinstance(ack[0].get("error"), dict):
                self.codes[ack[0]["error"].get("code")] += 1
        elif text.startswith("44"):
            data = json.loads(text[2:]) if len(text) > 2 else {}
            code = (data.get("data") or {}).get("code") if isinstance(data, dict) else None
            self.codes[f"connect_error:{code}"] += 1

    def wait_event(self, name: str, timeout: float = 10.0):
        """The first `name` event (looking back through what arrived), or None."""
        end = time.monotonic() + timeout
        while True:
            for e, data in self.events:
                if e == name:
                    return data
            if self.closed or time.monotonic() > end:
                return None
            self.poll(min(0.2, max(0.0, end - time.monotonic())))

    def connect(self, auth: dict | None = None):
        """The Socket.IO CONNECT; the hello's data, or None if refused."""
        self.send("40" + json.dumps(auth or {}))
        return self.wait_event("hello")

    def drain(self, timeout: float = 2.0) -> None:
        """Read until the server closes (or `timeout`), so its answers are counted."""
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            self.poll(min(0.2, end - time.monotonic()))

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def add(stats: dict, key: str, n: int = 1) -> None:
    stats[key] = stats.get(key, 0) + n


def count_codes(stats: dict, ws: RawWS) -> None:
    stats.setdefault("codes", collections.Counter()).update(ws.codes)


def blast(ws: RawWS, packets: list[str], limit: int) -> int:
    """Write up to `limit` text frames as fast as the socket takes them, in blocks; how many
    went out before the server closed."""
    block = b"".join(frame_header(len(p.encode())) + p.encode() for p in packets)
    sent = 0
    while sent < limit and ws.send_raw(block):
        sent += len(packets)
    return sent


def http_conn(target) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", target.port, timeout=10,
                                      source_address=(ATTACKER, 0))


# ------------------------------------------------------------------------------ the attacks
# Each is called again and again, one round per call, until the window ends: (target, stats).


def star(target, stats):
    """The event named `*`: before, an error sent to every connection of the worker."""
    ws = RawWS(target)
    if ws.connect() is not None:
        add(stats, "packets", blast(ws, ['42["*",null]', '42["*"]', '42["*",{}]',
                                         '421["*",null]'], 400))
        ws.drain()
    count_codes(stats, ws)
    ws.close()


def binary_ws(target, stats):
    """An attachment count of 9,999,999, then 16,000-byte binary frames (before: +300 MiB)."""
    ws = RawWS(target)
    if ws.connect() is not None:
        ws.send(BINARY_ATTACK)
        frame = frame_header(16_000, opcode=2) + b"\0" * 16_000
        n = 0
        while n < 2000 and ws.send_raw(frame):
            n += 1
        add(stats, "binary_frames", n)
        stats["mib"] = stats.get("mib", 0.0) + n * 16_000 / MIB
        ws.drain()
    count_codes(stats, ws)
    ws.close()


def binary_polling(target, stats):
    """The same over long polling: attachments as base64 packets, 16 KiB POSTs."""
    c = http_conn(target)
    try:
        c.request("GET", "/socket.io/?EIO=4&transport=polling")
        sid = json.loads(c.getresponse().read().decode()[1:])["sid"]
        path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
        bodies = ["40{}", BINARY_ATTACK] + ["b" + base64.b64encode(b"\0" * 12_000).decode()] * 200
        for body in bodies:
            c.request("POST", path, body=body.encode(), headers={"Content-Type": "text/plain"})
            r = c.getresponse()
            r.read()
            stats.setdefault("status", collections.Counter())[r.status] += 1
            if r.status != 200:
                break
            add(stats, "posts")
            stats["mib"] = stats.get("mib", 0.0) + len(body) / MIB
        c.request("GET", path)  # what the session was told, if it still exists
        r = c.getresponse()
        got = r.read().decode("utf-8", "replace")
        stats.setdefault("codes", collections.Counter()).update(
            re.findall(r'"code":\s*"(\w+)"', got))
    finally:
        c.close()


FLOOD = ['42["message",{"id":1,"text":"x"}]', '42["nope",{}]']
FLOOD_BLOCK = b"".join(frame_header(len(p)) + p.encode() for p in FLOOD * 25)  # 50 packets
DONE = "done"  # what a round returns when the attack's count is reached
DEADLINE = [float("inf")]  # the window's end, for rounds that loop inside (set by run_attack)


def flood_on(conns: list[RawWS], stats: dict) -> None:
    """Blocks of cheap packets round robin over `conns`, each checked for the gate's close
    between blocks; a closed one is replaced at once by a new connection (the attacker
    reconnects), until CHEAP_PACKETS were written or the window ends."""
    while stats.get("packets", 0) < CHEAP_PACKETS and time.monotonic() < DEADLINE[0]:
        for i, ws in enumerate(conns):
            if ws.send_raw(FLOOD_BLOCK):
                add(stats, "packets", 50)
            ws.poll(0)
            if ws.closed:
                count_codes(stats, ws)
                ws.close()
                conns[i] = RawWS(conns[i].target)
                if conns[i].connect() is not None:
                    add(stats, "connections")
    for ws in conns:
        ws.poll(0)
        count_codes(stats, ws)
        ws.close()


def flood_one(target, stats):
    """200,000 cheap packets as fast as possible on one connection at a time: the gate closes
    it past its budget and the attacker reconnects at once."""
    ws = RawWS(target)
    if ws.connect() is not None:
        add(stats, "connections")
    flood_on([ws], stats)
    return DONE


def flood_many(target, stats):
    """The same over 32 connections at once, round robin, each replaced when closed."""
    conns = [RawWS(target) for _ in range(32)]
    add(stats, "connections", sum(ws.connect() is not None for ws in conns))
    flood_on(conns, stats)
    return DONE


def surrogate(target, stats):
    """Text, an id, interests and a report reason holding a lone surrogate: before, an
    `internal` and a traceback each time."""
    ws = RawWS(target)
    if ws.connect() is not None:
        packets = [f'421["message",{{"id":"m1","text":"hi {SURROGATE}"}}]',
                   f'422["message",{{"id":"m{SURROGATE}","text":"hi"}}]',
                   f'423["join",{{"interests":["cats","{SURROGATE}"]}}]',
                   f'424["report",{{"reason":"{SURROGATE}"}}]']
        add(stats, "packets", blast(ws, packets, 200))
        ws.drain()
    count_codes(stats, ws)
    ws.close()


def polling_post(target, stats):
    """A long-polling POST over MAX_FRAME_BYTES to its sid (300 of them in the issue)."""
    if stats.get("posts", 0) >= 300:
        return DONE
    c = http_conn(target)
    try:
        c.request("GET", "/socket.io/?EIO=4&transport=polling")
        sid = json.loads(c.getresponse().read().decode()[1:])["sid"]
        body = b"4" + b"x" * 20_000
        c.request("POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}", body=body)
        r = c.getresponse()
        r.read()
        stats.setdefault("status", collections.Counter())[r.status] += 1
        add(stats, "posts")
    finally:
        c.close()


def huge_frame(size_mib: int):
    def attack(target, stats):
        s = ws_open(target, ATTACKER)
        with s:
            t0 = time.perf_counter()
            s.sendall(frame_header(size_mib * MIB))
            sent, _ = send_until_cut(s, size_mib * MIB)
            stats.setdefault("cut_ms", []).append((time.perf_counter() - t0) * 1000)
            stats.setdefault("cut_mib", []).append(sent / MIB)
    attack.__doc__ = f"One {size_mib} MiB WebSocket frame: before, read whole, then refused."
    return attack


def admin_300_mib(target, stats):
    """A 300 MiB POST to /admin/login, unauthenticated: before, +600 MiB RSS."""
    s = connect(target, ATTACKER)
    with s:
        s.sendall(b"POST /admin/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Length: %d\r\n\r\n" % (300 * MIB))
        sent, _ = send_until_cut(s, 300 * MIB)
        try:
            status = int(s.recv(4096).split(b" ", 2)[1])
        except (OSError, IndexError, ValueError):
            status = "reset"
        stats.setdefault("status", collections.Counter())[status] += 1
        stats.setdefault("sent_mib", []).append(sent / MIB)


_held: list[socket.socket] = []  # slowloris's half-open requests live across rounds


def slowloris(target, stats):
    """10,100 half-sent request headers from one address, as fast as they connect; up to 300
    held at once (over MAX_CONNS_PER_ADDR, so the cap refuses some)."""
    if stats.get("opened", 0) >= 10_100:
        return DONE
    try:
        s = connect(target, ATTACKER, timeout=2)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        _held.append(s)
        add(stats, "opened")
    except OSError:
        add(stats, "refused")
    if len(_held) > 300:  # the oldest 100 go; count those the server had closed already
        for old in _held[:100]:
            if select.select([old], [], [], 0)[0]:
                add(stats, "closed_by_server")  # the per-address cap (or the header deadline)
            old.close()
        del _held[:100]


def login_crlf(target, stats):
    """`next=/admin/%0D%0A…` at the login, signed in (the redirect) and signing in: before,
    a 500 with a traceback."""
    nexts = ["/admin/%0D%0ASet-Cookie:%20x=1", "/admin/%0d%0a%0d%0a<script>",
             "/admin/%E5%98%8A%E5%98%8Dx", "//evil.example/%0D%0A"]
    c = http_conn(target)
    statuses = stats.setdefault("status", collections.Counter())
    try:
        c.request("GET", "/admin/login")
        r = c.getresponse()
        page = r.read().decode()
        cookie = r.getheader("Set-Cookie", "").split(";")[0]
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        token = token.group(1) if token else ""
        for nxt in nexts:  # signing in with a poisoned next
            body = f"csrf_token={token}&password={ADMIN_PASSWORD}&next={nxt}"
            c.request("POST", "/admin/login", body=body, headers={
                "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
            r = c.getresponse()
            r.read()
            statuses[r.status] += 1
            cookie = (r.getheader("Set-Cookie") or cookie).split(";")[0]
        for nxt in nexts * 5:  # signed in: the login redirects to next
            c.request("GET", f"/admin/login?next={nxt}", headers={"Cookie": cookie})
            r = c.getresponse()
            r.read()
            statuses[r.status] += 1
            location = r.getheader("Location") or ""
            if "\r" in location or "\n" in location or "evil" in location:
                add(stats, "unsafe_redirects")
    finally:
        c.close()


def token_typing(target, stats):
    """One user's token on 10 connections, each flooding `typing`: how many `typing` events
    the partner gets in 2 s (before: 309, the per-connection limit times ten)."""
    x, y = RawWS(target), RawWS(target)
    tabs = [x]
    try:
        hello = x.connect()
        if hello is None or y.connect() is None:
            add(stats, "setup_failed")
            return
        x.send('42["join",{}]')
        y.send('42["join",{}]')
        if x.wait_event("matched") is None or y.wait_event("matched") is None:
            add(stats, "setup_failed")
            return
        for _ in range(9):
            tab = RawWS(target)
            tab.connect({"token": hello["token"]})
            tabs.append(tab)
        before = sum(e == "typing" for e, _ in y.events)
        end = time.monotonic() + 2.0
        flip = 0
        while time.monotonic() < end:
            for tab in tabs:
                tab.send(f'42["typing",{{"typing":{"true" if flip % 2 == 0 else "false"}}}]')
                tab.poll(0)
            flip += 1
            y.poll(0.005)
        y.poll(0.2)
        stats.setdefault("typing_in_2s", []).append(sum(e == "typing" for e, _ in y.events)
                                                    - before)
        stats.setdefault("replaced", []).append(sum(t.codes.get("replaced", 0) for t in tabs))
        add(stats, "typing_sent", flip * len(tabs))
    finally:
        for ws in (*tabs, y):
            count_codes(stats, ws)
            ws.close()


def malformed_packets(target, stats, i=[0]):  # noqa: B006 - a counter across rounds
    """The malformed-packet set of tests/test_packets.py, in a row on one connection until the
    budget closes it; then the next connection."""
    ws = RawWS(target)
    if ws.connect() is not None:
        n = 0
        while n < 200 and ws.send(MALFORMED[i[0] % len(MALFORMED)]):
            i[0] += 1
            n += 1
            ws.poll(0)
        add(stats, "packets", n)
        ws.drain()
    count_codes(stats, ws)
    ws.close()


def huge_since(target, stats):
    """`auth.since` = 10**300 in the CONNECT: before, no reply at all."""
    ws = RawWS(target)
    ws.send('40{"since":' + "1" + "0" * 300 + "}")
    end = time.monotonic() + 5
    while not ws.codes and not ws.closed and time.monotonic() < end:
        ws.poll(0.1)
    add(stats, "answered" if ws.codes else "unanswered")
    count_codes(stats, ws)
    ws.close()


def malformed_http(target, stats, i=[0]):  # noqa: B006 - a counter across rounds
    """Malformed requests and WebSocket frames (tests/test_guard.py's sets)."""
    raws = [*MALFORMED_HTTP, *MALFORMED_FRAMES]
    raw = raws[i[0] % len(raws)]
    i[0] += 1
    s = ws_open(target, ATTACKER) if raw in MALFORMED_FRAMES else connect(target, ATTACKER)
    with s:
        s.sendall(raw)
        try:
            s.recv(65536)
        except OSError:
            pass


ATTACKS = {
    "baseline": None,
    "star": star,
    "binary-ws": binary_ws,
    "binary-polling": binary_polling,
    "flood-one": flood_one,
    "flood-many": flood_many,
    "surrogate": surrogate,
    "polling-post": polling_post,
    "frame-20mib": huge_frame(20),
    "frame-100mib": huge_frame(100),
    "slowloris": slowloris,
    "admin-300mib": admin_300_mib,
    "login-crlf": login_crlf,
    "token-10tabs": token_typing,
    "malformed": malformed_packets,
    "since-10e300": huge_since,
    "malformed-http": malformed_http,
}


class Target:
    """What an attack needs of the worker (picklable, for the attacker's own process)."""

    def __init__(self, web: WebWorker):
        self.port, self.url = web.port, web.url


def run_attack(name: str, target: Target, seconds: float) -> tuple[int, float, dict]:
    """In a process of its own, so the attacker's CPU and GIL are not the pairs'."""
    fn = ATTACKS[name]
    stats: dict = {}
    t0 = time.monotonic()
    deadline = DEADLINE[0] = t0 + seconds
    rounds = 0
    while fn and time.monotonic() < deadline and rounds < MAX_ROUNDS:
        try:
            if fn(target, stats) == DONE:
                break
        except (OSError, AssertionError, ValueError) as exc:  # ValueError: a 429 is no JSON
            stats.setdefault("client_errors", collections.Counter())[type(exc).__name__] += 1
        rounds += 1
    if fn is slowloris:
        for s in _held:
            if select.select([s], [], [], 0)[0]:
                add(stats, "closed_by_server")
            s.close()
    return rounds, time.monotonic() - t0, stats


# ------------------------------------------------------------------------------ the pairs


class Chat:
    """A normal pair: messages a -> b and b -> a in turn at PAIR_RATE a side; each delivery's
    time from send to the partner's receipt (ms); a message not acked or not delivered within
    10 s is counted lost."""

    def __init__(self, a: Peer, b: Peer):
        self.a, self.b, self.n = a, b, 0

    async def run(self, seconds: float, tag: str) -> tuple[list[float], int]:
        latencies, lost = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            src, dst = (self.a, self.b) if self.n % 2 == 0 else (self.b, self.a)
            mid = f"{tag}-{src.name}-{self.n}"
            self.n += 1
            t0 = loop.time()
            try:
                ack = await src.send(mid, "ping")
                if not ack.get("ok"):
                    raise RuntimeError(ack)
                await dst.next("message", where=lambda m, mid=mid: m["id"] == mid)
                latencies.append((loop.time() - t0) * 1000)
            except Exception:  # noqa: BLE001 - a refusal or a timeout: counted, not raised
                lost += 1
            await asyncio.sleep(max(0.0, 1 / (2 * PAIR_RATE) - (loop.time() - t0)))
        return latencies, lost


def pct(values: list[float], p: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def worker_proc(web: WebWorker) -> psutil.Process:
    return psutil.Process(web.p.pid).children()[0]


def usage(proc: psutil.Process) -> tuple[float, float, int]:
    cpu = proc.cpu_times()
    return proc.memory_info().rss / MIB, cpu.user + cpu.system, proc.num_fds()


def healthz_ms(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
        assert r.status == 200
    return (time.perf_counter() - t0) * 1000


def settle(proc: psutil.Process, fds: int, timeout: float = 15.0) -> None:
    """Wait until the worker's descriptors are back near the baseline (the attacker's
    connections are closed), so one attack's tail does not fall into the next window."""
    end = time.monotonic() + timeout
    while proc.num_fds() > fds + 8 and time.monotonic() < end:
        time.sleep(0.1)


def notes_of(stats: dict) -> str:
    out = []
    for key, value in sorted(stats.items()):
        if isinstance(value, list):
            if key in ("cut_ms", "cut_mib", "sent_mib"):
                out.append(f"{key} median {statistics.median(value):.2f} max {max(value):.2f}")
            else:
                out.append(f"{key} {value}")
        elif isinstance(value, collections.Counter):
            out.append(f"{key} {dict(value)}")
        elif isinstance(value, float):
            out.append(f"{key} {value:.1f}")
        else:
            out.append(f"{key} {value}")
    return "; ".join(out)


async def main(seconds: float, only: list[str]) -> int:
    redis = RedisServer()
    env = base_env(redis.url, ADMIN_PASSWORD=ADMIN_PASSWORD)
    env.pop("SESSION_RATE")  # the tests' stacks turn it off; the attacked worker has defaults
    web = WebWorker(env, "attacked")
    matcher = MatcherProc(env, "attacks-matcher")
    failed = False
    try:
        web.wait_ready()
        proc = worker_proc(web)
        peers = [Peer(web.url, f"{side}{i}") for i in range(PAIRS) for side in "ab"]
        await asyncio.gather(*(p.connect() for p in peers))
        chats = []
        for i in range(PAIRS):
            await pair(peers[2 * i], peers[2 * i + 1])
            chats.append(Chat(peers[2 * i], peers[2 * i + 1]))
        s = load_settings(env)
        print(f"one worker, defaults (MAX_FRAME_BYTES {s.max_frame_bytes}, MAX_BODY_BYTES "
              f"{s.max_body_bytes}, PACKET_RATE/BURST {s.packet_rate:g}/{s.packet_burst}, "
              f"MAX_CONNS_PER_ADDR {s.max_conns_per_addr}, SESSION_RATE/BURST "
              f"{s.session_rate:g}/{s.session_burst}, HEADER_TIMEOUT {s.header_timeout:g} "
              f"s); {PAIRS} pairs at {PAIR_RATE:g} msg/s a side; {seconds:g} s per attack\n")
        print(f"{'attack':15} {'rounds':>6} {'n':>5} {'p50':>6} {'p99':>6} {'max':>6} "
              f"{'lost':>4} {'err':>3} {'RSS MiB':>11} {'CPU s':>5} {'fds':>9} {'tb':>3} "
              f"{'healthz':>7}  attack's figures", flush=True)
        loop = asyncio.get_running_loop()
        names = [n for n in ATTACKS if not only or n in only or n == "baseline"]
        for name in names:
            rss0, cpu0, fds0 = usage(proc)
            errors0 = sum(p.count("error") + p.count("partner_left") for p in peers)
            log0 = len(web.output())
            with concurrent.futures.ProcessPoolExecutor(1) as pool:
                attack = loop.run_in_executor(pool, run_attack, name, Target(web), seconds)
                (rounds, _took, stats), *results = await asyncio.gather(
                    attack, *(c.run(seconds, name) for c in chats))
            rss1, cpu1, fds1 = usage(proc)
            hz = healthz_ms(web.url)
            lat = [x for r in results for x in r[0]]
            lost = sum(r[1] for r in results)
            errors = sum(p.count("error") + p.count("partner_left") for p in peers) - errors0
            tb = web.output()[log0:].count("Traceback")
            failed |= bool(lost or errors or tb)
            print(f"{name:15} {rounds:>6} {len(lat):>5} {pct(lat, 50):>6.1f} {pct(lat, 99):>6.1f} "
                  f"{max(lat, default=float('nan')):>6.1f} {lost:>4} {errors:>3} "
                  f"{rss0:>5.0f}->{rss1:<5.0f} {cpu1 - cpu0:>5.2f} {fds0:>4}->{fds1:<4} "
                  f"{tb:>3} {hz:>7.1f}  {notes_of(stats)}", flush=True)
            await asyncio.to_thread(settle, proc, fds0)
        await close_all(peers)
        log = web.output()
        print(f"\nworker log: {log.count('Traceback')} tracebacks, "
              f"{sum(' WARNING ' in x for x in log.splitlines())} WARNING lines, "
              f"{sum(' ERROR ' in x for x in log.splitlines())} ERROR lines")
        print("columns: n = deliveries measured; p50/p99/max = delivery ms; lost = not acked "
              "or not delivered in 10 s; err = error/partner_left events the pairs received; "
              "tb = tracebacks the attack put in the worker's log; healthz = ms, after")
    finally:
        web.stop()
        matcher.stop()
        redis.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="window per attack (max 60)")
    ap.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(ATTACKS)}")
    args = ap.parse_args()
    picked = [x for x in args.only.split(",") if x]
    unknown = set(picked) - set(ATTACKS)
    if unknown:
        ap.error(f"unknown attacks: {sorted(unknown)}")
    sys.exit(asyncio.run(main(min(args.seconds, 60.0), picked)))
