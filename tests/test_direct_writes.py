"""Packets written to a WebSocket by the emitting greenlet itself (web/direct.py).

That write must never wait for the socket: a partner who stops reading (a frozen tab, a hostile
client) would otherwise stall the sender's acks (here the sender's own handler delivers to a
partner on the same worker), and through a shared greenlet (the pub/sub listener, the stats
pacer) everyone on the worker. What the socket does not take waits in the worker, in order,
until the reader reads. And a WebSocket whose packets all go that way stays open: the writer
it bypasses used to close it after a ping interval and timeout without a queued packet.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import psutil
import pytest
from attacks import RawWS
from peer import Peer, close_all, exchange, pair
from procs import one_worker, wait_until

LONG = 10_000  # characters per message: 600 of them are 6 MB, more than any socket buffers
COUNT = 600
# What may wait for one client (MAX_QUEUED_BYTES) above those 6 MB: these tests are about the
# writes, not the cap (tests/test_queue_cap.py), so the reader that stops is kept.
NO_CAP = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def worker():
    with one_worker("slow", MAX_MESSAGE_LEN=LONG, MESSAGE_RATE=10_000, MESSAGE_BURST=100_000,
                    PACKET_RATE=10_000, PACKET_BURST=100_000, MAX_FRAME_BYTES=64 * 1024,
                    MAX_QUEUED_BYTES=NO_CAP) as web:
        yield web


@pytest.fixture(scope="module")
def quick_pings():
    """A worker that pings every second and waits a second for the answer."""
    with one_worker("pings", PING_INTERVAL=1, PING_TIMEOUT=1) as web:
        yield web


class CountingWS(RawWS):
    """A raw client that counts the server's pings (it answers each, as any client does)."""

    pings = 0

    def _packet(self, text: str) -> None:
        if text == "2":
            self.pings += 1
        super()._packet(text)


async def test_websockets_stay_open_over_many_ping_intervals(quick_pings):
    """Six pings, each answered: three times the interval + timeout after which the writer
    used to give up. The pair on the same worker still chats, in both directions."""
    a, b = Peer(quick_pings.url, "alice"), Peer(quick_pings.url, "bob")
    counting = await asyncio.to_thread(CountingWS, quick_pings)
    try:
        await asyncio.gather(a.connect(), b.connect())
        assert await asyncio.to_thread(counting.connect) is not None
        await pair(a, b)

        def pinged(n: int) -> bool:
            end = time.monotonic() + 20
            while counting.pings < n and not counting.closed and time.monotonic() < end:
                counting.poll(0.5)
            return counting.pings >= n and not counting.closed

        assert await asyncio.to_thread(pinged, 6)
        assert a.sio.connected and b.sio.connected
        await exchange(a, b, "after-pings")
    finally:
        counting.close()
        await close_all([a, b])


def received_messages(raw: RawWS) -> list[dict]:
    return [data for name, data in raw.events if name == "message"]


async def test_a_partner_who_stops_reading_stalls_no_sender_and_misses_nothing(worker):
    sender, c, d = Peer(worker.url, "sender"), Peer(worker.url, "carol"), Peer(worker.url, "dave")
    stalled = await asyncio.to_thread(RawWS, worker)
    try:
        await asyncio.gather(sender.connect(), c.connect(), d.connect())
        assert await asyncio.to_thread(stalled.connect) is not None
        await pair(c, d)
        stalled.send("421" + json.dumps(["join", {}]))
        await sender.join()
        assert await asyncio.to_thread(stalled.wait_event, "matched", 15) is not None
        await sender.next("matched", 15)
        # From here on the stalled client reads nothing, and 6 MB are sent to it: more than its
        # kernel's receive buffer and the worker's send buffer hold (this test fails when the
        # worker's write waits for the socket: the sender's acks stop).
        text = "x" * (LONG - 8)
        for i in range(COUNT):
            ack = await asyncio.wait_for(sender.send(f"m{i}", f"{i:07d}" + text), 20)
            assert ack.get("ok"), (i, ack)
        # ... and the worker's other users do not notice
        await asyncio.wait_for(exchange(c, d, "while-stalled"), 20)
        # The stalled client reads again: every message, once, in order, whole.
        def read_all():
            end = time.monotonic() + 60
            while len(received_messages(stalled)) < COUNT and not stalled.closed \
                    and time.monotonic() < end:
                stalled.poll(0.5)
            return received_messages(stalled)

        got = await asyncio.to_thread(read_all)
        assert [m["id"] for m in got] == [f"m{i}" for i in range(COUNT)]
        assert all(m["text"] == f"{i:07d}" + text for i, m in enumerate(got))
        seqs = [m["seq"] for m in got]
        assert seqs == list(range(seqs[0], seqs[0] + COUNT))
    finally:
        stalled.close()
        await close_all([sender, c, d])


@pytest.fixture(scope="module")
def quick_pings_long():
    """Quick pings (1 s + 1 s) and long messages: a client that stops reading is soon gone."""
    with one_worker("gone", PING_INTERVAL=1, PING_TIMEOUT=1, MAX_MESSAGE_LEN=LONG,
                    MESSAGE_RATE=10_000, MESSAGE_BURST=100_000, PACKET_RATE=10_000,
                    PACKET_BURST=100_000, MAX_FRAME_BYTES=64 * 1024,
                    MAX_QUEUED_BYTES=NO_CAP) as web:
        yield web


def worker_holds(web, client: tuple) -> bool:
    """Whether the worker's process (or its gunicorn worker) still has a TCP connection to
    `client` (an address and port) open."""
    root = psutil.Process(web.p.pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.raddr and tuple(c.raddr) == client for c in conns):
            return True
    return False


async def test_a_client_that_stops_reading_is_let_go_with_what_was_kept_for_it(quick_pings_long):
    """A client that stops reading (and sending) while packets wait for it, its own socket full:
    its Engine.IO session ends at the ping timeout, and then the worker must also let go of the
    connection, the writer blocked on that socket and what was kept for it. Engine.IO means its
    WebSocket to time out after ping interval + timeout; behind gevent-websocket that never
    reached the socket, so the writer and the reader waited on it for as long as the client
    kept the TCP connection open (forever, for a frozen or hostile client without nginx)."""
    web = quick_pings_long
    sender = Peer(web.url, "sender")
    stalled = await asyncio.to_thread(RawWS, web)
    try:
        await sender.connect()
        assert await asyncio.to_thread(stalled.connect) is not None
        stalled.send("421" + json.dumps(["join", {}]))
        await sender.join()
        assert await asyncio.to_thread(stalled.wait_event, "matched", 15) is not None
        await sender.next("matched", 15)
        client = stalled.sock.getsockname()
        text = "x" * (LONG - 8)
        for i in range(COUNT):  # stops reading from here: up to 6 MB wait for it in the worker
            ack = await asyncio.wait_for(sender.send(f"m{i}", f"{i:07d}" + text), 20)
            if not ack.get("ok"):
                break  # its session has ended: no chat any more

        await asyncio.to_thread(wait_until, lambda: not worker_holds(web, client), 30,
                                "the worker to let go of the stalled client's connection")
        # the worker is well: a new pair chats
        a, b = Peer(web.url, "alice"), Peer(web.url, "bob")
        try:
            await asyncio.gather(a.connect(), b.connect())
            await pair(a, b)
            await exchange(a, b, "after")
        finally:
            await close_all([a, b])
    finally:
        stalled.close()
        await close_all([sender])


def test_frames_from_two_waiting_writers_go_out_whole_one_after_the_other():
    """The connection's writer halfway through a frame the socket could not take at once, and
    gevent-websocket's pong (written by the reader's greenlet, for a client's ping) meanwhile:
    the pong waits for the frame to end. It used to be written into the middle of it, or to
    fail with gevent's "socket already used by another greenlet", which ended the connection."""
    import gevent
    import gevent.socket

    from web.guard import FrameWriter

    a, b = gevent.socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # one send cannot take 4 MiB
        b.settimeout(10)
        frames = FrameWriter(a)
        big, pong = os.urandom(4 * 1024 * 1024), b"\x8a\x04ping"
        writer = gevent.spawn(frames, big)
        while not frames.busy:  # the writer has started its frame and waits for the socket
            gevent.sleep(0)
        reader = gevent.spawn(frames, pong)
        gevent.sleep(0)
        got = bytearray()
        while len(got) < len(big) + len(pong):
            chunk = b.recv(65536)
            assert chunk, "the writer's side closed early"
            got += chunk
        writer.get(timeout=10)
        reader.get(timeout=10)
        assert bytes(got) == big + pong
    finally:
        a.close()
        b.close()
