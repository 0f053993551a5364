"""A seeded fuzzer against one live web worker: random and malformed events and raw packets.

Every run draws a seed (print it; `FUZZ_SEED=<n>` replays it, `FUZZ_CASES=<n>` sets the size)
and sends at least 10,000 cases over several raw connections: client events with wrong types,
huge and odd strings, lone surrogates, deep nesting, unknown and reserved names, numbers as
names, with and without acks; and raw Socket.IO packets (mutated, odd types, namespaces,
attachments, binary frames). Each connection's cases come from its own generator seeded with
(seed, connection), so a case is named by its connection and index and can be replayed.

What must hold, whatever was sent: no traceback in the worker's output, every refusal a
documented code (common/events.py ERRORS) with a message, every ack `{ok: …}`, /healthz answers,
and a normal pair chatting beside the fuzzer the whole time loses nothing.

The main run gives the worker a generous packet budget so that cases reach the event handlers;
a smaller run keeps the defaults, where the gate closes flooding connections and the fuzzer
reconnects. A third test sends garbage below Socket.IO, at the Engine.IO level.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import string
import time
from dataclasses import dataclass

import aiohttp
import pytest
from conftest import Stack
from socketio import packet as sio_packet
from test_packets import DEFAULTS, WAIT, Pair, Raw, healthz_ms

from common import events as ev

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
CASES = int(os.environ.get("FUZZ_CASES") or 10_000)
CONNECTIONS = 8
BATCH = 25  # cases sent before a probe whose ack proves every answer to them has come
PROBE = "fuzz-probe"  # an unknown event: always answered, changes nothing
MAX_CASE_BYTES = DEFAULTS.max_frame_bytes - 512  # frames over the limit are the guard's business
GENEROUS = {"PACKET_RATE": 10_000, "PACKET_BURST": 100_000, "CONTROL_RATE": 10_000,
            "CONTROL_BURST": 100_000, "MESSAGE_RATE": 10_000, "MESSAGE_BURST": 100_000}


# -- the generator -------------------------------------------------------------------------------
ODD_STRINGS = [
    "", " ", "\t\n ", "\u200b", "\ufeff", "\u202egnp.exe", "\ud800", "\udfff", "a\ud800b",
    "\ud83d", "\ud83d\ude00", "\x00", "\x00\x01\x1f", "é" * 30, "中文" * 20, "😀" * 40,
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "' OR 1=1 --", "%s%n%x",
    "{{7*7}}", "${jndi:ldap://x}", "../../etc/passwd", "null", "undefined", "NaN", "true",
    "__proto__", "constructor", "toString", "\\", '"', "\r\n\r\n", " padded ", "x" * 64,
    "x" * 65, "m" * 500, "m" * 501, " " * 600, "z" * 5000,
]
NAMES = [
    ev.JOIN, ev.MESSAGE, ev.TYPING, ev.NEXT, ev.LEAVE, ev.REPORT,  # the real ones, most often
    ev.JOIN, ev.MESSAGE, ev.TYPING, ev.NEXT, ev.LEAVE, ev.REPORT,
    "connect", "disconnect", "connect_error", "*", "", " ", "error", "hello", "matched",
    "stats", "resumed", "waiting", "partner_left", "newListener", "__proto__", "Message",
    "JOIN", "join ", "message\x00", "\ud800", "a" * 5000, "fuzz",
]
NON_STRING_NAMES = ["0", "1", "-1", "3.5", "1e999", "null", "true", "[]", "{}", '["join"]',
                    '{"a":1}', "9" * 400]
KEYS = ["id", "text", "interests", "typing", "reason", "token", "since", "room", "to", "seq",
        "ok", "user", "__proto__", "", "\ud800", "x" * 300]


@dataclass
class Case:
    conn: int
    index: int
    raw: str | bytes
    ack_id: int | None

    def __str__(self) -> str:
        raw = repr(self.raw)
        raw = raw if len(raw) <= 300 else raw[:200] + f"... ({len(self.raw)} long) ..." + raw[-60:]
        return f"[seed {SEED}, connection {self.conn}, case {self.index}] {raw}"


class Gen:
    """JSON text is written directly (not json.dumps of values): deep nesting, huge integers
    and NaN need no Python value to exist first."""

    def __init__(self, seed: str):
        self.rng = random.Random(seed)

    def string(self) -> str:
        r = self.rng
        if r.random() < 0.6:
            s = r.choice(ODD_STRINGS)
        else:
            s = "".join(r.choice(string.printable + "\u00e9\u4e2d\ud800\udc00\u200b")
                        for _ in range(r.randrange(40)))
        return json.dumps(s)  # escapes surrogates and controls: valid JSON text, odd content

    def number(self) -> str:
        r = self.rng
        return r.choice([
            "0", "-0", "1", "-1", "64", "65", str(r.randrange(-10**6, 10**6)),
            str(2**53 + 1), str(2**63), "9" * r.choice([20, 300, 4300, 4301, 5000]), "1.5",
            "-0.0", "1e308", "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "0.1e-400"])

    def scalar(self) -> str:
        r = self.rng.random()
        if r < 0.15:
            return self.rng.choice(["null", "true", "false"])
        if r < 0.45:
            return self.number()
        return self.string()

    def value(self, depth: int = 0) -> str:
        r = self.rng
        k = r.random()
        if depth > 3 or k < 0.45:
            return self.scalar()
        if k < 0.65:
            return "[" + ",".join(self.value(depth + 1) for _ in range(r.randrange(5))) + "]"
        if k < 0.93:
            return "{" + ",".join(f"{json.dumps(r.choice(KEYS))}:{self.value(depth + 1)}"
                                  for _ in range(r.randrange(5))) + "}"
        n = r.choice([10, 100, 900, 2000, 5000])
        opener, closer = r.choice([("[", "]"), ('{"a":', "}")])
        return opener * n + self.scalar() + closer * n

    def plausible(self, name: str) -> str:
        """A payload shaped like the real one with one field odd: reaches deeper code."""
        r = self.rng
        odd = self.value()
        fields = {
            ev.MESSAGE: {"id": json.dumps(f"fz{r.randrange(10**6)}"), "text": '"hi"'},
            ev.JOIN: {"interests": '["music","travel"]'},
            ev.TYPING: {"typing": "true"},
            ev.REPORT: {"reason": '"spam"'},
        }.get(name, {"x": "1"})
        key = r.choice([*fields, r.choice(KEYS)])
        if r.random() < 0.8:
            fields[key] = odd
        else:
            fields.pop(key, None)
        return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"

    def event(self, ack_id: int | None) -> str:
        r = self.rng
        if r.random() < 0.9:
            name = json.dumps(r.choice(NAMES))
        else:
            name = r.choice(NON_STRING_NAMES)
        args = []
        k = r.random()
        if k < 0.45:
            args.append(self.plausible(json.loads(name) if name.startswith('"') else ""))
        elif k < 0.9:
            args = [self.value() for _ in range(r.choice([0, 1, 1, 1, 2, 3]))]
        return "42" + ("" if ack_id is None else str(ack_id)) + "[" + ",".join([name, *args]) + "]"

    def mutate(self, text: str) -> str:
        r = self.rng
        for _ in range(r.randrange(1, 4)):
            if not text:
                break
            i = r.randrange(len(text))
            j = min(len(text), i + r.randrange(1, 8))
            op = r.randrange(4)
            if op == 0:
                text = text[:i] + text[j:]
            elif op == 1:
                text = text[:i] + "".join(r.choice('[]{}",:0123456789-/\\ eu') for _ in
                                          range(r.randrange(1, 5))) + text[i:]
            elif op == 2:
                text = text[:i]
            else:
                text = text[:i] + text[i:j][::-1] + text[j:]
        return "4" + text[1:] if text else "4"

    def packet(self, ack_id: int | None) -> str | bytes:
        """A raw Socket.IO packet in an Engine.IO MESSAGE (or a binary frame)."""
        r = self.rng
        k = r.random()
        if k < 0.45:
            return self.mutate(self.event(ack_id))
        if k < 0.85:
            kind = r.choice("0123456789x-/ ")
            att = r.choice(["", "", "1-", "0-", "9999999-", "99999999999-", "-"])
            nsp = r.choice(["", "", "", "/,", "/admin,", "/x?y=1,", "/"])
            pid = r.choice(["", "", "1", "007", "9" * 99, "9" * 101])
            body = r.choice([self.value(), self.event(None)[2:], "", "[", "x"])
            return "4" + kind + att + nsp + pid + body
        if k < 0.95:
            return bytes(r.randrange(256) for _ in range(r.choice([0, 1, 16, 1000])))
        return "4" + self.value()  # JSON that the Engine.IO layer decodes before Socket.IO

    def case(self, conn: int, index: int, ack_id: int) -> Case:
        r = self.rng
        wants_ack = r.random() < 0.7
        raw = self.event(ack_id if wants_ack else None) if r.random() < 0.6 else \
            self.packet(ack_id if wants_ack else None)
        if len(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")) > \
                MAX_CASE_BYTES:
            raw = raw[:MAX_CASE_BYTES // 4]
        return Case(conn, index, raw, ack_id if wants_ack else None)

    def auth(self, token: str | None) -> str:
        r = self.rng
        k = r.random()
        if k < 0.6:
            return "{}"
        if k < 0.8 and token:
            return json.dumps({"token": token, "since": r.choice([0, 1, -1, 10**30, "1"])})
        auth = "{" + ",".join(f"{json.dumps(r.choice(['token', 'since', 'x']))}:{self.value()}"
                              for _ in range(r.randrange(3))) + "}"
        return auth if len(auth) <= MAX_CASE_BYTES else "{}"


def disconnects_namespace(raw) -> bool:
    """Whether python-socketio would take this packet as a DISCONNECT from `/`."""
    if not isinstance(raw, str) or not raw.startswith("41"):
        return False
    try:
        pkt = sio_packet.Packet(encoded_packet=raw[1:])
    except Exception:  # noqa: BLE001 - whatever the decoder raises, it is no DISCONNECT
        return False
    return pkt.packet_type == sio_packet.DISCONNECT and pkt.namespace in (None, "/")


async def hello_or_close(client: Raw, start: int = 0):
    """The hello after `start`, or None when the connection closed (or its CONNECT failed)."""
    def seen():
        for e, data in client.events[start:]:
            if e == ev.HELLO:
                return (data,)
        if client.closed.is_set() or client.connect_errors:
            return (None,)
    return (await client.until(seen, "hello or a close"))[0]


# -- the run ---------------------------------------------------------------------------------------
class Run:
    """Drives the connections, checks every answer, attributes a fault to its case(s)."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession):
        self.stack, self.session = stack, session
        self.url = stack.webs[0].url
        self.faults: list[str] = []
        self.sent = self.answers = self.reconnects = 0
        self.codes: dict[str, int] = {}
        self.inflight: dict[int, list[Case]] = {}
        self.log_seen = len(stack.webs[0].output())

    def fault(self, what: str, cases) -> None:
        if len(self.faults) < 20:
            named = "\n    ".join(str(c) for c in cases) or "(no case)"
            self.faults.append(f"{what}\n  case(s):\n    {named}")

    def check_error(self, err, cases, where: str) -> None:
        if not (isinstance(err, dict) and err.get("code") in ev.ERRORS
                and isinstance(err.get("message"), str) and err["message"].strip()):
            self.fault(f"undocumented refusal in {where}: {err!r}", cases)
        else:
            self.codes[err["code"]] = self.codes.get(err["code"], 0) + 1

    def check_ack(self, ack, case: Case) -> None:
        if not (isinstance(ack, list) and len(ack) == 1 and isinstance(ack[0], dict)
                and isinstance(ack[0].get("ok"), bool)):
            return self.fault(f"ack is not {{ok: …}}: {ack!r}", [case])
        if ack[0]["ok"] is False:
            self.check_error(ack[0].get("error"), [case], "an ack")

    def check_log(self) -> None:
        out = self.stack.webs[0].output()
        new, self.log_seen = out[self.log_seen:], len(out)
        for m in re.finditer("Traceback", new):
            excerpt = new[m.start():m.start() + 2500]
            tail = excerpt.split("\n\n")[0][-1200:]
            self.fault(f"traceback in the worker's log:\n{tail}",
                       [c for cases in self.inflight.values() for c in cases])

    async def connect(self, gen: Gen, name: str, token: str | None) -> Raw:
        auth = gen.auth(token)
        client = await Raw(self.url, self.session, name).open(connect=False)
        await client.send("40" + auth)
        await hello_or_close(client)
        for err in client.connect_errors:
            self.check_error(err.get("data") if isinstance(err, dict) else err,
                             [f"CONNECT with auth {auth[:300]!r}"], "CONNECT_ERROR")
        if client.connect_errors:  # its auth was refused: connect as the page does
            await client.send("40{}")
            await hello_or_close(client)
        return client

    async def connection(self, conn: int, cases: int) -> None:
        gen = Gen(f"{SEED}:{conn}")
        client, token, ack_id, index = None, None, 0, 0
        while index < cases:
            if client is None or client.closed.is_set():
                if client is not None:
                    await client.close()
                    self.reconnects += 1
                client = await self.connect(gen, f"fuzz{conn}", token)
                hello = await hello_or_close(client)
                if hello is None:
                    continue
                token = hello.get("token")
            start_errors = len(client.errors())
            batch: list[Case] = []
            self.inflight[conn] = batch
            for _ in range(BATCH):
                ack_id += 1
                case = gen.case(conn, index, ack_id)
                index += 1
                if not await client.send(case.raw):
                    break
                batch.append(case)
                self.sent += 1
                if disconnects_namespace(case.raw):  # the page would connect again
                    n = len(client.events)
                    await client.send("40{}")
                    await hello_or_close(client, start=n)
            ack_id += 1
            probe = ack_id
            await client.send(f"42{probe}{json.dumps([PROBE])}")
            await client.until(lambda c=client, p=probe: p in c.acks or c.closed.is_set(),
                               f"the probe's ack after {batch[-1:]}", timeout=2 * WAIT)
            for case in batch:
                if case.ack_id is not None and case.ack_id in client.acks:
                    self.answers += 1
                    self.check_ack(client.acks.pop(case.ack_id), case)
            client.acks.pop(probe, None)
            no_ack = [c for c in batch if c.ack_id is None]
            for err in client.errors()[start_errors:]:
                self.answers += 1
                self.check_error(err, no_ack, "an error event")
            self.check_log()
            self.inflight.pop(conn, None)
        await client.close()

    async def go(self, total: int, connections: int) -> None:
        per = -(-total // connections)
        await asyncio.gather(*(self.connection(i, per) for i in range(connections)))
        self.check_log()


async def fuzz(stack: Stack, total: int, connections: int, label: str) -> None:
    async with aiohttp.ClientSession() as session:
        normal = await Pair(stack.webs[0].url, f"beside-{label}").start()
        run = Run(stack, session)
        t0 = time.perf_counter()
        try:
            await run.go(total, connections)
        finally:
            took = time.perf_counter() - t0
            print(f"\nfuzz {label}: seed {SEED}, {run.sent} cases in {took:.1f} s over "
                  f"{connections} connections ({run.reconnects} reconnects), {run.answers} "
                  f"answers checked, codes {dict(sorted(run.codes.items()))}; /healthz "
                  f"{healthz_ms(stack.webs[0].url):.1f} ms; normal pair {normal.rounds} "
                  f"rounds, worst {normal.worst_ms:.0f} ms")
        assert not run.faults, f"{len(run.faults)} fault(s), replay with FUZZ_SEED={SEED}:\n" + \
            "\n".join(run.faults)
        assert stack.webs[0].alive()
        await normal.finish()  # every acked message of the pair arrived, with its seq
        assert run.sent >= total * 0.95, run.sent


@pytest.fixture(scope="module")
def generous():
    s = Stack(workers=1, matchers=1, **GENEROUS)
    yield s
    s.stop(background=True)


@pytest.fixture(scope="module")
def defaults():
    s = Stack(workers=1, matchers=1)
    yield s
    s.stop(background=True)


async def test_fuzz_events_and_packets_reach_the_handlers(generous):
    await fuzz(generous, CASES, CONNECTIONS, "generous budget")


async def test_fuzz_with_the_default_packet_budget(defaults):
    await fuzz(defaults, max(CASES // 5, 500), CONNECTIONS // 2, "default budget")


ENGINEIO_GARBAGE = ["x", "", "9", "6", "7abc", "b", "b!!!", "bAAA", "\u00e9", " 4", "24"]


async def test_engineio_level_garbage_leaves_no_traceback(defaults):
    """Below Socket.IO: Engine.IO packets of unknown types, empty ones, bad base64, WebSocket
    text frames that are not UTF-8, and the same in long-polling POST bodies. Each may close
    its connection; none may raise in the worker."""
    web = defaults.webs[0]
    seen = len(web.output())
    async with aiohttp.ClientSession() as session:
        for raw in [*ENGINEIO_GARBAGE, b"\xff\xfe not utf-8"]:
            client = await Raw(web.url, session).open()
            if isinstance(raw, bytes):  # a TEXT frame whose bytes are not UTF-8
                await client.ws.send_frame(raw, aiohttp.WSMsgType.TEXT)
            else:
                await client.send(raw)
            await client.send('421["leave"]')
            await client.until(lambda c=client: 1 in c.acks or c.closed.is_set(),
                               f"an answer or a close after {raw!r}")
            await client.close()
        polling = web.url + "/socket.io/?EIO=4&transport=polling"

        async def post(raw):
            async with session.get(polling) as r:
                sid = json.loads((await r.text())[1:])["sid"]
            try:
                async with session.post(polling + f"&sid={sid}", data=raw,
                                        timeout=aiohttp.ClientTimeout(total=WAIT / 2)) as r:
                    await r.read()
            except TimeoutError:
                return f"a long-polling POST of {raw!r} got no answer within {WAIT / 2} s"

        unanswered = [u for u in await asyncio.gather(*(post(raw) for raw in [
            *ENGINEIO_GARBAGE, "40{}\x1ex", "\x1e", "d=%", b"\xff\xfe"])) if u]
    healthz_ms(web.url)  # the worker still answers
    found = re.findall(r"Traceback.*?\n(\S[^\n]*Error[^\n]*)\n", web.output()[seen:], re.DOTALL)
    assert not found and not unanswered, (
        f"{len(found)} Engine.IO packet(s) raised in the worker (sent: {ENGINEIO_GARBAGE} and "
        f"a non-UTF-8 text frame, by WebSocket and by polling):\n" + "\n".join(found) + "\n" +
        "\n".join(unanswered))
