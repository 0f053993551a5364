"""A connection that stops reading holds up nobody, and gets everything once it reads again.

The worker writes a packet to an idle WebSocket from the emitting greenlet itself (web/direct.py):
here that is the sender's own handler, delivering to a partner on the same worker. That write
must never wait for the partner's socket: a partner who stops reading (a frozen tab, a hostile
client) would otherwise stall the sender's acks, and through a shared greenlet (the pub/sub
listener, the stats pacer) everyone on the worker. What the socket does not take waits in the
worker, in order, until the reader reads.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from attacks import RawWS
from peer import Peer, close_all, exchange, pair
from procs import MatcherProc, RedisServer, WebWorker, base_env, stop_in_background

LONG = 10_000  # characters per message: 600 of them are 6 MB, more than any socket buffers
COUNT = 600


@pytest.fixture(scope="module")
def worker():
    redis = RedisServer()
    env = base_env(redis.url, MAX_MESSAGE_LEN=LONG, MESSAGE_RATE=10_000, MESSAGE_BURST=100_000,
                   PACKET_RATE=10_000, PACKET_BURST=100_000, MAX_FRAME_BYTES=64 * 1024)
    web = WebWorker(env, "slow")
    matcher = MatcherProc(env, "slow-matcher")
    try:
        web.wait_ready()
        yield web
    finally:
        stop_in_background([web, matcher], redis.stop)


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
