"""The Socket.IO packet gate (web/packets.py) against a real web worker and hand-written packets.

A Socket.IO client library only sends well-formed packets, so these tests speak the protocol by
hand over aiohttp (WebSocket and long-polling). Each measured attack of the issue is replayed:
binary attachments that never end, floods of cheap packets, the malformed-packet set. Each time
the attacker is answered with a documented error and closed, a normal pair on the same worker
keeps chatting, /healthz answers, and the worker's log has no traceback.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import re
import time
import urllib.request

import aiohttp
import pytest
from conftest import Stack
from peer import Peer, close_all, exchange, pair, wait_for

from common import events as ev
from common.config import load as load_settings
from web import packets

DEFAULTS = load_settings({})
WAIT = 10  # seconds to wait for any one answer


# -- a hand-written client ----------------------------------------------------------------------
class Raw:
    """Engine.IO v4 + Socket.IO v5 by hand over one WebSocket: sends anything, records all."""

    def __init__(self, url: str, session: aiohttp.ClientSession, name: str = "raw"):
        self.url, self.session, self.name = url, session, name
        self.events: list[tuple[str, object]] = []   # (event, first argument)
        self.acks: dict[int, list] = {}
        self.connect_errors: list = []
        self.answered: list = []  # every refusal or ack, in order: its error (None when ok)
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._changed = asyncio.Event()
        self.ws = None
        self.reader = None

    async def open(self, connect: bool = True, auth: dict | None = None) -> Raw:
        ws_url = self.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = await self.session.ws_connect(ws_url, max_msg_size=0, autoping=True)
        first = await self.ws.receive(timeout=WAIT)
        assert first.type == aiohttp.WSMsgType.TEXT and first.data[:1] == "0", first
        self.reader = asyncio.create_task(self._read())
        if connect:
            await self.send("40" + json.dumps(auth or {}))
            await self.event(ev.HELLO)
        return self

    async def _read(self):
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._packet(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.events.append(("<binary>", msg.data))
                self._changed.set()
        except Exception as exc:  # noqa: BLE001 - however the server cut the connection
            self.close_reason = repr(exc)
        finally:
            self.close_reason = self.close_reason or f"closed ({self.ws.close_code})"
            self.closed.set()
            self._changed.set()

    async def _packet(self, data: str):
        if data == "2":  # Engine.IO ping
            await self.ws.send_str("3")
        elif data == "1":  # Engine.IO close
            self.close_reason = "Engine.IO CLOSE"
            await self.ws.close()
        elif data.startswith("42"):
            args = json.loads(data[2:])
            self.events.append((args[0], args[1] if len(args) > 1 else None))
            if args[0] == ev.ERROR:
                self.answered.append(args[1])
        elif data.startswith("43"):
            m = re.match(r"43(\d+)(.*)", data, re.DOTALL)
            self.acks[int(m.group(1))] = json.loads(m.group(2))
            self.answered.append(self.acks[int(m.group(1))][0].get("error"))
        elif data.startswith("44"):
            self.connect_errors.append(json.loads(data[2:]))

    async def send(self, data) -> bool:
        """Send one raw frame (str: text, bytes: binary); False once the server has closed."""
        if self.closed.is_set() or self.ws.closed:
            return False
        try:
            if isinstance(data, (bytes, bytearray)):
                await self.ws.send_bytes(bytes(data))
            else:
                await self.ws.send_str(data)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return False
        return True

    async def until(self, check, what: str, timeout: float = WAIT):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got = check()
            if got:
                return got
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {what} within {timeout} s; events "
                                     f"{self.events[-5:]}, closed: {self.close_reason!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def event(self, name: str, start: int = 0, timeout: float = WAIT):
        """The first `name` event at or after index `start` of self.events."""
        def find():
            for e, data in self.events[start:]:
                if e == name:
                    return (data,)
        return (await self.until(find, f"{name!r} event", timeout))[0]

    async def ack(self, ack_id: int, timeout: float = WAIT):
        return (await self.until(lambda: (self.acks.get(ack_id),) if ack_id in self.acks
                                 else None, f"ack {ack_id}", timeout))[0]

    async def send_answered(self, data) -> bool:
        """Send, then wait for its answer (an error event or an ack); False once closed."""
        n = len(self.answered)
        if not await self.send(data):
            return False
        await self.until(lambda: len(self.answered) > n or self.closed.is_set(),
                         f"an answer to {str(data)[:60]!r}")
        return len(self.answered) > n and not self.closed.is_set()

    def errors(self) -> list:
        return [data for e, data in self.events if e == ev.ERROR]

    async def wait_closed(self, timeout: float = WAIT):
        await self.until(self.closed.is_set, "close", timeout)

    async def close(self):
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait([self.reader], timeout=WAIT)


def check_error(err, code: str) -> None:
    assert isinstance(err, dict) and err.get("code") == code, f"expected {code}, got {err!r}"
    assert err["code"] in ev.ERRORS, err
    assert isinstance(err.get("message"), str) and err["message"].strip(), err
    assert "Traceback" not in err["message"], err


def tracebacks(stack: Stack) -> list[str]:
    out = stack.webs[0].output()
    return [out[max(0, m.start() - 300):m.start() + 1500] for m in re.finditer("Traceback", out)]


def gate_warnings(stack: Stack) -> list[str]:
    return [ln for ln in stack.webs[0].output().splitlines() if "packet gate:" in ln]


def worker_usage(stack: Stack) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds) of the web worker process (gunicorn's child)."""
    import psutil

    proc = psutil.Process(stack.webs[0].p.pid)
    proc = (proc.children() or [proc])[0]
    cpu = proc.cpu_times()
    return proc.memory_info().rss / 2**20, cpu.user + cpu.system


def healthz_ms(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url + "/healthz", timeout=WAIT) as r:
        assert r.status == 200
    return (time.perf_counter() - t0) * 1000


class Pair:
    """A normal pair beside the attacker: chats the whole time; every acked message must arrive."""

    def __init__(self, url: str, tag: str):
        self.a, self.b = Peer(url, f"{tag}-a"), Peer(url, f"{tag}-b")
        self.tag, self.rounds, self.worst_ms = tag, 0, 0.0
        self.stop = asyncio.Event()
        self.task = None

    async def start(self):
        await self.a.connect()
        await self.b.connect()
        await pair(self.a, self.b)
        self.task = asyncio.create_task(self._chat())
        return self

    async def _chat(self):
        # one round trip each way at a time, paced below MESSAGE_RATE like people typing
        while not self.stop.is_set():
            t0 = time.perf_counter()
            await exchange(self.a, self.b, f"{self.tag}-{self.rounds}")
            self.worst_ms = max(self.worst_ms, (time.perf_counter() - t0) * 1000)
            self.rounds += 1
            try:
                await asyncio.wait_for(self.stop.wait(), 2 / DEFAULTS.message_rate)
            except TimeoutError:
                pass

    async def finish(self) -> None:
        """Stop, then one more round: the pair still chats after the attack."""
        self.stop.set()
        await self.task  # raises what went wrong (an unacked or undelivered message)
        await exchange(self.a, self.b, f"{self.tag}-after")
        assert self.a.count("partner_left") == 0 and self.b.count("partner_left") == 0
        assert not [e for e in (*self.a.events[ev.ERROR], *self.b.events[ev.ERROR])], \
            (self.a.events[ev.ERROR], self.b.events[ev.ERROR])
        await close_all([self.a, self.b])


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack():
    """One web worker with the default packet budget, and a matcher for the normal pair."""
    s = Stack(workers=1, matchers=1)
    yield s
    s.stop(background=True)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clean(stack):
    """The stack with an empty Redis; afterwards: the worker alive and without a traceback."""
    stack.redis.client.flushall()
    yield stack
    assert stack.webs[0].alive(), stack.webs[0].output()[-4000:]
    found = tracebacks(stack)
    assert not found, "tracebacks in the worker's log:\n" + "\n-----\n".join(found[:3])


# -- row 1: binary attachments -------------------------------------------------------------------
BINARY_ATTACK = '459999999-["message",{"_placeholder":true,"num":0}]'


async def test_endless_binary_attachments_are_refused_and_never_stored(clean, session):
    url = clean.webs[0].url
    normal = await Pair(url, "bin").start()
    attacker = await Raw(url, session, "attacker").open()
    frame = b"\x00" * 16_000
    rss0, cpu0 = worker_usage(clean)
    sent = 1 if await attacker.send(BINARY_ATTACK) else 0
    t0 = time.perf_counter()
    while sent < 2000 and await attacker.send(frame):  # 32 MB if nothing stops it
        sent += 1
    await attacker.wait_closed()  # the budget closes it: before the gate it stayed open
    rss1, cpu1 = worker_usage(clean)
    print(f"\nbinary attack: {sent} frames sent before the close, "
          f"{time.perf_counter() - t0:.2f} s; worker RSS {rss0:.0f} -> {rss1:.0f} MiB, "
          f"CPU {cpu1 - cpu0:.2f} s; /healthz {healthz_ms(url):.1f} ms; normal pair "
          f"{normal.rounds} rounds, worst {normal.worst_ms:.0f} ms")
    # A client that keeps sending may lose the answers to a reset (the worker closes with its
    # frames unread); whatever did arrive is documented, and bounded by the budget.
    errors = attacker.errors()
    for err in errors:
        assert err["code"] in ("bad_payload", "rate_limited"), err
        check_error(err, err["code"])
    assert len(errors) <= DEFAULTS.packet_burst, len(errors)
    await normal.finish()


async def test_binary_packets_answered_one_by_one_until_the_budget_closes(clean, session):
    attacker = await Raw(clean.webs[0].url, session).open()
    frames = [BINARY_ATTACK] + [b"\x00" * 16_000] * 1000
    answered = 0
    while await attacker.send_answered(frames[answered]):
        answered += 1
    await attacker.wait_closed()
    codes = [e["code"] for e in attacker.errors()]
    assert codes[-1] == "rate_limited" and set(codes[:-1]) == {"bad_payload"}, codes
    assert len(codes) <= DEFAULTS.packet_burst, len(codes)


async def test_a_binary_message_alone_is_refused(clean, session):
    attacker = await Raw(clean.webs[0].url, session).open()
    for data in (b"\x00\x01", b"4", bytearray(b"2[]")):
        n = len(attacker.errors())
        assert await attacker.send(data)
        await attacker.until(lambda n=n: len(attacker.errors()) > n, "an error for a binary frame")
        check_error(attacker.errors()[-1], "bad_payload")
    await attacker.close()


# -- row 2: floods of cheap packets ----------------------------------------------------------------
FLOODS = {
    "bad_id": '42["message",{"id":1,"text":"x"}]',
    "bad_id_acked": '421["message",{"id":1,"text":"x"}]',  # refused in the ack
    "unknown_event": '42["nope",{}]',
    "valid_typing": '42["typing",{"typing":true}]',
}


@pytest.mark.parametrize("kind", list(FLOODS))
async def test_cheap_packets_are_answered_until_the_budget_closes_the_connection(clean, session,
                                                                               kind):
    """One packet at a time, each answered: the budget's arithmetic, seen by the client."""
    client = await Raw(clean.webs[0].url, session).open()
    t0 = time.monotonic()
    sent = 1
    while await client.send_answered(FLOODS[kind]):
        sent += 1
        assert sent <= 2 * DEFAULTS.packet_burst, "the budget never closed the connection"
    await client.wait_closed()
    codes = [e["code"] for e in client.answered]
    print(f"\n{kind} one at a time: {sent} packets, closed after answers "
          f"{dict(collections.Counter(codes))}")
    assert codes[-1] == "rate_limited", codes
    # the budget: PACKET_BURST, less the CONNECT, plus what refilled while this ran
    low = DEFAULTS.packet_burst - 1
    high = low + DEFAULTS.packet_rate * (time.monotonic() - t0) + 1
    if kind == "valid_typing":
        # valid packets cost one each; the handlers refuse them (not_chatting, then their own
        # per-user CONTROL_BURST says rate_limited), which the packet budget does not charge
        assert low <= len(codes) - 1 <= high, (len(codes), low, high)
    else:  # refused for a protocol fault: REFUSED_COST each
        assert "rate_limited" not in codes[:-1], codes
        cost = packets.REFUSED_COST
        assert -(-low // cost) <= len(codes) - 1 <= high / cost + 1, (len(codes), low, high)


@pytest.mark.parametrize("kind", list(FLOODS))
async def test_a_flood_of_cheap_packets_is_closed_and_the_worker_keeps_serving(clean, session,
                                                                             kind):
    """The measured attack: packets as fast as the client can write them."""
    url = clean.webs[0].url
    normal = await Pair(url, f"flood-{kind}").start()
    attacker = await Raw(url, session, "flooder").open()
    cpu0 = worker_usage(clean)[1]
    t0 = time.perf_counter()
    sent = 0
    while sent < 200_000 and await attacker.send(FLOODS[kind]):
        sent += 1
        if sent % 500 == 0:
            await asyncio.sleep(0)  # let the reader see the close
    await attacker.wait_closed()
    took = time.perf_counter() - t0
    print(f"\nflood of {kind}: closed after {sent} packets written, {took:.2f} s, "
          f"{len(attacker.errors())} errors received ({attacker.close_reason}), worker CPU "
          f"{worker_usage(clean)[1] - cpu0:.2f} s; /healthz {healthz_ms(url):.1f} ms; "
          f"normal pair {normal.rounds} rounds, worst round {normal.worst_ms:.0f} ms")
    assert sent < 200_000, "the flood was never closed"
    for err in attacker.errors():  # what arrived before the close (a reset may drop the rest)
        check_error(err, err["code"])
    assert len(attacker.errors()) <= DEFAULTS.packet_burst, len(attacker.errors())
    await normal.finish()


async def test_a_sustained_attack_that_reconnects_leaves_a_normal_pair_chatting(clean, session):
    """Four attackers reconnect as soon as they are closed and flood again (cheap events,
    binary attachments, malformed packets) while a pair on the same worker chats: every acked
    message arrives with its seq, and /healthz answers throughout."""
    url = clean.webs[0].url
    normal = await Pair(url, "sustained").start()
    payloads = [FLOODS["bad_id"], FLOODS["unknown_event"], BINARY_ATTACK, b"\x00" * 16_000,
                *MALFORMED]
    stop = asyncio.Event()
    written = closes = 0
    health: list[float] = []
    cpu0 = worker_usage(clean)[1]

    async def attacker(n: int):
        nonlocal written, closes
        while not stop.is_set():
            raw = await Raw(url, session, f"attacker{n}").open()
            i = n
            while await raw.send(payloads[i % len(payloads)]):
                written, i = written + 1, i + 1
                if i % 100 == 0:
                    await asyncio.sleep(0)
            await raw.wait_closed()
            await raw.close()
            closes += 1

    async def healthz():
        while not stop.is_set():
            health.append(await asyncio.to_thread(healthz_ms, url))
            await asyncio.sleep(0.2)  # a sampling pace, not a synchronisation

    tasks = [asyncio.create_task(attacker(n)) for n in range(4)]
    tasks.append(asyncio.create_task(healthz()))
    try:
        await wait_for(lambda: normal.rounds >= 10 or normal.task.done(), 60,
                       "ten rounds of the normal pair")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(f"\nsustained attack: {written} packets written over {closes} connections the gate "
          f"closed; worker CPU {worker_usage(clean)[1] - cpu0:.2f} s; normal pair "
          f"{normal.rounds} rounds, worst round {normal.worst_ms:.0f} ms; /healthz worst "
          f"{max(health):.1f} ms of {len(health)}")
    assert closes >= 4
    await normal.finish()  # every acked message of the pair arrived, with its seq


async def test_a_polling_flood_is_closed_too(clean, session):
    """Long-polling: packets come 16 to a POST; the session ends, and a GET that was waiting
    carries the `rate_limited` error and the Engine.IO CLOSE out."""
    url = clean.webs[0].url + "/socket.io/?EIO=4&transport=polling"
    async with session.get(url) as r:
        sid = json.loads((await r.text())[1:])["sid"]
    url += f"&sid={sid}"
    async with session.post(url, data="40{}") as r:
        assert r.status == 200
    received: list[str] = []
    polls = 0

    async def poll():
        nonlocal polls
        while True:
            polls += 1
            async with session.get(url) as r:
                if r.status != 200:
                    return r.status
                for pkt in (await r.text()).split("\x1e"):
                    received.append(pkt)
                    if pkt == "1":
                        return "closed"

    poller = asyncio.create_task(poll())
    # the hello has come back: the poller's next GET is (almost surely) waiting at the server
    await wait_for(lambda: polls >= 2, WAIT, "the second poll")
    body = "\x1e".join([FLOODS["unknown_event"]] * 16)
    posts, status = 0, 200
    while status == 200 and posts < 500:
        async with session.post(url, data=body) as r:
            posts, status = posts + 1, r.status
    outcome = await asyncio.wait_for(poller, WAIT)
    errors = [json.loads(p[2:])[1] for p in received if p.startswith('42["error"')]
    print(f"\npolling flood: {posts} POSTs of 16 packets until {status}; the poller ended with "
          f"{outcome!r} after {len(errors)} error events")
    assert status == 400, "the flooding session was never closed"
    assert posts * 16 <= 2 * DEFAULTS.packet_burst, posts
    if outcome == "closed":
        check_error(errors[-1], "rate_limited")


# -- row 3: the malformed-packet set ----------------------------------------------------------------
MALFORMED = [
    "42[",                                            # broken JSON
    "4x",                                             # not a Socket.IO packet type
    "44",                                             # CONNECT_ERROR from a client
    "4",                                              # an empty Socket.IO packet
    "4null", "4{}", "4[1]", "4true",                  # JSON the Engine.IO layer decoded
    "42",                                             # an event without data
    "42[]",                                           # an event without a name
    '42{"a":1}',                                      # event data that is not a list
    '42"join"',                                       # event data that is a string
    "421",                                            # an ack id and nothing else
    '42["message",' + "[" * 6000 + "]" * 6000 + "]",  # deeper than the JSON decoder goes
    '42["message",{"id":"n","text":"x","n":' + "9" * 5000 + "}]",  # a 5000-digit integer
    "4" + "[" * 6000 + "]" * 6000,                    # too deep for Engine.IO's own decode
    "42" + "9" * 150 + '["leave"]',                   # an ack id of 150 digits
    BINARY_ATTACK,                                    # binary event, attachments announced
    '451-["message",{"_placeholder":true,"num":0}]',
    '461-1[{"_placeholder":true,"num":0}]',           # binary ack
    "45",                                             # binary event, nothing else
    "40/admin,{}",                                    # CONNECT to another namespace
    "40{}",                                           # a second CONNECT to /
    '42/admin,["leave"]',                             # an event on another namespace
    "41/admin,",                                      # DISCONNECT from another namespace
    "431[]",                                          # an ACK for an id never sent
    '43["x"]',                                        # an ACK without an id
    "47hello", "4-1", "4 ", "4\u00e9",                 # unknown Socket.IO packet types
]


@pytest.mark.parametrize("raw", MALFORMED, ids=lambda r: r if len(r) < 30 else r[:27] + "...")
async def test_a_malformed_packet_is_bad_payload_and_the_connection_goes_on(clean, session, raw):
    client = await Raw(clean.webs[0].url, session).open()
    assert await client.send(raw)
    assert await client.send('421["leave"]')  # in order after it: its ack proves the answer came
    ack = await client.ack(1)
    assert ack and ack[0].get("ok") is True, ack
    errors = client.errors()
    assert len(errors) == 1, errors
    check_error(errors[0], "bad_payload")
    await client.close()


@pytest.mark.parametrize("raw", ["40/admin,", "40[1]", '40"token"', "4x"])
async def test_before_connecting_a_malformed_packet_is_a_connect_error(clean, session, raw):
    client = await Raw(clean.webs[0].url, session).open(connect=False)
    assert await client.send(raw)
    await client.until(lambda: client.connect_errors, "CONNECT_ERROR")
    err = client.connect_errors[0]
    check_error(err.get("data"), "bad_payload")
    # the connection is still usable: a proper CONNECT is answered with the hello
    assert await client.send("40{}")
    await client.event(ev.HELLO)
    await client.close()


async def test_the_malformed_set_in_a_row_is_answered_then_closed(clean, session):
    """Refused packets cost REFUSED_COST: the whole set on one connection spends its budget."""
    url = clean.webs[0].url
    normal = await Pair(url, "malformed").start()
    warnings_before, t0 = len(gate_warnings(clean)), time.monotonic()
    client = await Raw(url, session).open()
    rounds = 0
    while await client.send_answered(MALFORMED[rounds % len(MALFORMED)]):
        rounds += 1
        assert rounds < 1000, "the budget never closed the connection"
    await client.wait_closed()
    codes = [e["code"] for e in client.errors()]
    print(f"\nmalformed set in a row: {rounds + 1} packets sent, {len(codes)} answers, "
          f"then closed")
    assert set(codes) == {"bad_payload", "rate_limited"}, codes
    assert codes[-1] == "rate_limited"
    assert codes.count("bad_payload") <= DEFAULTS.packet_burst // packets.REFUSED_COST + 1
    # one WARNING line per LOG_EVERY seconds for all of them, never a traceback (`clean`)
    new_lines = len(gate_warnings(clean)) - warnings_before
    assert gate_warnings(clean), "no WARNING line at all"
    assert new_lines <= 1 + (time.monotonic() - t0) / packets.LOG_EVERY, gate_warnings(clean)
    await normal.finish()


# -- cost of the valid path ---------------------------------------------------------------------
def test_cpu_per_valid_packet_before_and_after_the_gate(capsys):
    """Prints the cost of one valid event through python-socketio's dispatch, without and with
    the gate, in-process (no network): the figure the hot path is judged by."""
    import socketio

    def build(gated: bool):
        server = socketio.Server(async_mode="threading", logger=False, engineio_logger=False,
                                 async_handlers=False)  # as web/app.py
        server.on("message", lambda sid, data: {"ok": True, "id": data["id"], "seq": 1},
                  namespace="/")
        if gated:
            packets.guard(server, dataclasses.replace(DEFAULTS, packet_rate=1e9,
                                                      packet_burst=10**9))
        server.eio.send_packet = lambda eio_sid, pkt: None  # no socket: the send is not measured
        server.eio.handlers["connect"]("e1", {"REMOTE_ADDR": "127.0.0.1"})
        server.eio.handlers["message"]("e1", "0{}")
        assert server.manager.sid_from_eio_sid("e1", "/")
        return server.eio.handlers["message"]

    data = '21["message",{"id":"m-1","text":"hello there"}]'
    n = 20_000
    figures = {}
    for gated in (False, True) * 3:
        handle = build(gated)
        t0 = time.process_time()
        for _ in range(n):
            handle("e1", data)
        figures.setdefault(gated, []).append((time.process_time() - t0) / n * 1e6)
    with capsys.disabled():
        before, after = min(figures[False]), min(figures[True])
        print(f"\nCPU per valid event packet (dispatch + handler + ack, best of 3 x {n}): "
              f"without gate {before:.2f} us, with gate {after:.2f} us "
              f"(+{after - before:.2f} us)")


@pytest.mark.parametrize("obj", [
    [{"ok": True, "id": "m-1", "ts": 1733380000000, "seq": 17}],
    ["message", {"id": "m-1", "room": "r", "text": "é 你好 \U0001f600 \"q\" \\ \n\t\x00", "ts": 1,
                 "seq": 2}],
    ["stats", {"online": 3, "ratio": 0.5, "none": None, "no": False, "list": [1, [2, []], {}]}],
    "a string alone", 12, None,
])
def test_packets_encode_as_the_json_module_does(obj):
    """The packet encoder built once writes what json.dumps with compact separators writes,
    for the values the chat sends (non-ASCII as \\u escapes, as JavaScript's JSON.parse reads)."""
    expected = json.dumps(obj, separators=(",", ":"))
    assert packets.PacketJson.dumps(obj, separators=(",", ":")) == expected
    assert packets.PacketJson.dumps(obj) == expected


@pytest.mark.parametrize("event,data", [
    ("message", {"id": "m-1", "room": "r", "text": "h\u00e9llo \"x\" \U0001f600", "ts": 1,
                 "seq": 2}),
    ("typing", {"typing": True, "room": "r"}), ("stats", None), ("resumed", ({"a": [1, 2]}, "b")),
    ("waiting", {"online": 10**20}), ("error", {"code": "bad_payload", "message": "<\n>"}),
])
def test_an_event_is_encoded_as_the_libraries_encode_it(event, data):
    """An event's Engine.IO packet is what python-socketio's packet, encoded into Engine.IO's,
    makes of it: the same text on the wire and on a long-poll, and a MESSAGE with text data."""
    from engineio import packet as eio_packet
    from socketio import packet as sio_packet

    args = ([event] if data is None else [event, *data] if isinstance(data, tuple)
            else [event, data])
    theirs = eio_packet.Packet(eio_packet.MESSAGE, packets.TextPacket(
        sio_packet.EVENT, namespace="/", data=args).encode())
    ours = packets.event_packet(event, data)
    assert ours.encode() == theirs.encode() and ours.encode(b64=True) == theirs.encode(b64=True)
    assert (ours.packet_type, ours.data, ours.binary) == (
        theirs.packet_type, theirs.data, theirs.binary)


@pytest.mark.parametrize("ack_id,data", [
    (0, [{"ok": True, "id": "m-1", "ts": 1733380000000, "seq": 17}]), (7, []),
    (10**99, [{"ok": False, "error": {"code": "too_long"}}]), (3, ["\u00e9", None, 1.5]),
])
def test_an_ack_is_encoded_as_the_libraries_encode_it(ack_id, data):
    """An ack's Engine.IO packet is the text python-socketio's ACK packet makes of it."""
    from engineio import packet as eio_packet
    from socketio import packet as sio_packet

    theirs = eio_packet.Packet(eio_packet.MESSAGE, packets.TextPacket(
        sio_packet.ACK, namespace="/", id=ack_id, data=data).encode())
    ours = packets.ack_packet(ack_id, data)
    assert ours.encode() == theirs.encode()
    assert (ours.packet_type, ours.data, ours.binary) == (
        theirs.packet_type, theirs.data, theirs.binary)


@pytest.mark.parametrize("data", [
    '2["message",{"id":"m-1","text":"a-b"}]', '21["typing",true]', '2["x"]',
    "2" + "9" * 100 + '["m"]', "2" + "9" * 101 + '["m"]', '2/,7["m"]', '2/chat,1["m"]',
    '21-["m"]', "2[]", "2{}", '2["m"', '2["m"]x', '2\u0661["m"]', '2 ["m"]', "2", '2"m"',
    '2[' * 5000,
])
def test_an_event_is_read_as_python_socketio_reads_it(data):
    """The gate's own reading of `2[…]` and `2<id>[…]` gives each event the ack id and arguments
    python-socketio's packet gives it, and refuses what that packet refuses or is not an
    event on `/`."""
    import socketio

    server = socketio.Server(async_mode="threading", logger=False, engineio_logger=False,
                             async_handlers=False)
    gate = packets.guard(server, dataclasses.replace(DEFAULTS, packet_rate=1e9,
                                                     packet_burst=10**9))
    seen, refused = [], []
    gate.event = lambda eio_sid, ack_id, args: seen.append((ack_id, args))
    gate.refuse = lambda eio_sid, bucket, what, exc=None, answer="": refused.append(what)
    gate.buckets["e1"] = packets.TokenBucket(1e9, 10**9)
    gate.message("e1", data)

    try:
        pkt = packets.TextPacket(encoded_packet=data)
    except Exception:  # noqa: BLE001 - whatever the library refuses
        expected = None
    else:
        ok = pkt.data.__class__ is list and pkt.data and pkt.namespace in (None, "/")
        expected = (pkt.id, pkt.data) if ok else None
    assert seen == ([expected] if expected else [])
    assert len(refused) == (0 if expected else 1)
