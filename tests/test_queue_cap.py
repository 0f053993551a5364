"""The cap on what waits in a web worker for one client (MAX_QUEUED_BYTES, web/direct.py).

A client that stops reading but keeps its session alive (pongs sent blindly, without reading
the pings) made the worker keep every packet sent to it, for as long as it liked: its partner's
messages, `stats`, typing. Real processes: one worker with a small cap, a partner who sends
long messages, raw clients that do not read (a WebSocket whose receive window is tiny, a
long-polling session that never polls), an honest reader that is only slow, and a normal pair
beside them.
"""
from __future__ import annotations

import asyncio
import collections
import json
import re
import socket
import time
import urllib.request

import psutil
import pytest
from attacks import RawWS
from peer import Peer, close_all, exchange, pair
from procs import one_worker, wait_until
from test_direct_writes import worker_holds
from test_guard import handshake, read_frame, ws_upgrade

CAP = 256 * 1024  # MAX_QUEUED_BYTES of this worker
LONG = 10_000  # characters of a long message
FLOOD = 3000  # long messages to a client that does not read: 30 MB, far above the cap and
# anything the kernel's socket buffers hold (so without the cap the worker would keep ~25 MB)
PINGS = {"PING_INTERVAL": 2, "PING_TIMEOUT": 2}  # a session that stops answering soon ends
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def worker():
    with one_worker("cap", MAX_QUEUED_BYTES=CAP, MAX_MESSAGE_LEN=LONG, MESSAGE_RATE=10_000,
                    MESSAGE_BURST=100_000, PACKET_RATE=10_000, PACKET_BURST=100_000,
                    MAX_FRAME_BYTES=64 * 1024, RESUME_GRACE=60, **PINGS) as web:
        yield web


def overflows(web) -> int:
    """chat_queue_overflows_total of the worker's /metrics."""
    with urllib.request.urlopen(f"{web.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^chat_queue_overflows_total (\S+)$", text, re.MULTILINE)
    assert m, "no chat_queue_overflows_total in /metrics"
    return int(float(m.group(1)))


def rss_mib(web) -> float:
    return psutil.Process(web.p.pid).children()[0].memory_info().rss / MIB


class DeafWS(RawWS):
    """A raw WebSocket client whose kernel takes at most a few KiB for it (a receive buffer
    fixed before connecting), so what it does not read waits in the worker at once."""

    def __init__(self, web):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", web.port))
        opcode, payload = read_frame(s, ws_upgrade(s))
        assert opcode == 1 and payload.startswith(b"0{"), payload
        self.target, self.sock, self.buf, self.closed = web, s, b"", False
        self.codes, self.events = collections.Counter(), []

    def pong(self) -> None:
        """An Engine.IO PONG, sent without reading the PING it answers."""
        self.send("3")


async def matched_with(sender: Peer, raw: RawWS) -> None:
    raw.send("421" + json.dumps(["join", {}]))
    await sender.join()
    assert await asyncio.to_thread(raw.wait_event, "matched", 15) is not None
    await sender.next("matched", 15)


async def test_a_client_that_does_not_read_is_closed_past_the_cap_and_resumes(worker):
    web = worker
    before = overflows(web)
    sender, c, d = Peer(web.url, "sender"), Peer(web.url, "carol"), Peer(web.url, "dave")
    deaf = await asyncio.to_thread(DeafWS, web)
    try:
        await asyncio.gather(sender.connect(), c.connect(), d.connect())
        hello = await asyncio.to_thread(deaf.connect)
        assert hello is not None
        await pair(c, d)
        await matched_with(sender, deaf)
        client = deaf.sock.getsockname()
        rss_before = rss_mib(web)
        # From here the deaf client reads nothing, and answers every ping all the same.
        text = "x" * (LONG - 8)
        for i in range(FLOOD):
            ack = await asyncio.wait_for(sender.send(f"m{i}", f"{i:07d}" + text), 20)
            assert ack.get("ok"), (i, ack)  # the partner away is still a chat: stored
            if i % 25 == 0:
                deaf.pong()
            if i % 500 == 0:
                await asyncio.wait_for(exchange(c, d, f"during-{i}"), 20)
        grown = rss_mib(web) - rss_before
        assert grown < 8, f"the worker grew by {grown:.1f} MiB for a client that reads nothing"
        assert overflows(web) == before + 1
        await asyncio.to_thread(wait_until, lambda: not worker_holds(web, client), 20,
                                "the worker to let go of the TCP connection")
        assert "MAX_QUEUED_BYTES" in web.output()
        await asyncio.wait_for(exchange(c, d, "after"), 20)
        # The client comes back with its token (having shown nothing since `matched`): the
        # resume replays the chat's kept messages, up to the last one sent.
        back = Peer(web.url, "deaf-back")
        try:
            await back.connect(token=hello["token"])
            resumed = await back.next("resumed", 15)
            assert resumed["state"] == "chatting"
            assert resumed["history"][-1]["id"] == f"m{FLOOD - 1}"
            ack = await back.send("back", "hello again")
            assert ack.get("ok"), ack
            got = await sender.next("message", 15, where=lambda m: m["id"] == "back")
            assert got["text"] == "hello again"
        finally:
            await close_all([back])
    finally:
        deaf.close()
        await close_all([sender, c, d])


async def test_an_honest_slow_reader_below_the_cap_is_not_closed(worker):
    """It reads late and little at a time, but never more than the cap waits for it: every
    message arrives, in order, and its connection stays."""
    web = worker
    before = overflows(web)
    sender = Peer(web.url, "sender")
    slow = await asyncio.to_thread(DeafWS, web)
    try:
        await sender.connect()
        assert await asyncio.to_thread(slow.connect) is not None
        await matched_with(sender, slow)
        count, size = 80, 2000  # 160 KB in all: under the cap even if no socket buffered any
        text = "y" * (size - 8)
        for i in range(count):
            ack = await asyncio.wait_for(sender.send(f"s{i}", f"{i:07d}" + text), 20)
            assert ack.get("ok"), (i, ack)
            if i % 10 == 9:
                await asyncio.to_thread(slow.poll, 0.05)  # a little reading now and then

        def read_all():
            end = time.monotonic() + 20
            while len([e for e in slow.events if e[0] == "message"]) < count \
                    and not slow.closed and time.monotonic() < end:
                slow.poll(0.2)
            return [data for name, data in slow.events if name == "message"]

        got = await asyncio.to_thread(read_all)
        assert [m["id"] for m in got] == [f"s{i}" for i in range(count)]
        assert not slow.closed
        assert overflows(web) == before
        await sender.send("later", "still there?")
        assert await asyncio.to_thread(
            lambda: slow.poll(1) or any(e[0] == "message" and e[1]["id"] == "later"
                                        for e in slow.events))
    finally:
        slow.close()
        await close_all([sender])


class Polling:
    """A raw long-polling session that posts but never polls."""

    def __init__(self, web):
        self.web = web
        self.sid = handshake(web)
        self.url = f"{web.url}/socket.io/?EIO=4&transport=polling&sid={self.sid}"

    def post(self, body: str) -> int:
        req = urllib.request.Request(self.url, data=body.encode(),
                                     headers={"Content-Type": "text/plain"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code


async def test_a_long_polling_session_that_never_polls_is_closed_past_the_cap(worker):
    """Its pongs are posted blindly, so the ping timeout never ends it: the cap does."""
    web = worker
    before = overflows(web)
    sender = Peer(web.url, "sender")
    quiet = await asyncio.to_thread(Polling, web)
    try:
        await sender.connect()
        assert await asyncio.to_thread(quiet.post, "40{}") == 200
        assert await asyncio.to_thread(quiet.post, "421" + json.dumps(["join", {}])) == 200
        await sender.join()
        await sender.next("matched", 15)
        text = "z" * (LONG - 8)
        status = 200
        for i in range(200):  # 2 MB, eight times the cap
            ack = await asyncio.wait_for(sender.send(f"p{i}", f"{i:07d}" + text), 20)
            assert ack.get("ok"), (i, ack)
            if i % 10 == 0:
                status = await asyncio.to_thread(quiet.post, "3")
                if status != 200:
                    break
        await asyncio.to_thread(wait_until, lambda: overflows(web) == before + 1, 10,
                                "the overflow to be counted")
        # the session is gone: the next request is refused, and the client would reconnect
        assert await asyncio.to_thread(quiet.post, "3") == 400
    finally:
        await close_all([sender])


async def test_a_long_polling_session_that_stops_altogether_ends_at_the_ping_timeout(worker):
    """Without blind pongs, Engine.IO bounds it already: it never gets the ping to answer, and
    its session ends after PING_INTERVAL + PING_TIMEOUT (here 2 + 2 s), cap or not."""
    web = worker
    before = overflows(web)
    quiet = await asyncio.to_thread(Polling, web)
    assert await asyncio.to_thread(quiet.post, "40{}") == 200
    # an empty POST carries no packet (no pong): 200 while the session lives, then 400
    await asyncio.to_thread(wait_until, lambda: quiet.post("") == 400, 20, "the ping timeout")
    assert overflows(web) == before
