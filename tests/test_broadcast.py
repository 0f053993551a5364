"""Broadcasts (`stats`) reach every connection of a worker, although a worker sends them a chunk
at a time (web/listener.py: BROADCAST_CHUNK) so as not to hold the chat's messages behind them.
"""
from __future__ import annotations

import asyncio

from peer import pair

CONNECTIONS = 100  # three chunks and a bit on one worker


async def test_every_connection_of_a_worker_gets_the_stats_and_chats_go_on(fresh, peers):
    w1, w2 = fresh.urls()
    crowd = await asyncio.gather(*(peers(w1, f"P{i}") for i in range(CONNECTIONS)))
    a, b = await peers(w2, "A"), await peers(w1, "B")
    await pair(a, b)
    everyone = [*crowd, a, b]

    # the matcher's next broadcast after all connected counts all of them, for everyone
    def full(s):
        return s["online"] >= len(everyone)
    got = await asyncio.gather(*(p.next("stats", 20, where=full) for p in everyone))
    assert all(s == got[0] for s in got), "one broadcast, the same counts for everyone"
    assert got[0]["chatting"] == 2
    # and the chat was never held up for good: a message still arrives, once
    ack = await a.send("m1", "after the broadcast")
    assert ack["ok"], ack
    msg = await b.next("message")
    assert msg["text"] == "after the broadcast" and msg["seq"] == ack["seq"]


async def test_next_tells_the_online_count_of_the_latest_stats(fresh, peers):
    """`waiting` after a Next says how many are online as the worker's latest `stats` did
    (web/listener.py ChatQueue.online), without a round trip of its own."""
    w1, _ = fresh.urls()
    a, b, c = [await peers(w1, name) for name in "ABC"]
    await pair(a, b)
    stats = await a.next("stats", 20, where=lambda s: s["online"] >= 3)
    ack = await a.call("next", {})
    assert ack == {"ok": True}, ack
    waiting = await a.next("waiting", 10, where=lambda w: True)
    assert waiting["online"] == stats["online"] == 3, (waiting, stats)
