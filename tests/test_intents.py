"""Steps that span two hash slots, their process killed -9 between the two halves.

Pairing (match.lua in the home slot, then open.lua in the room's shard) and parting
(end_chat.lua, then close.lua) are two scripts each on a Redis Cluster: the first leaves an
intent that whoever finds it carries out (common/store.py). Here a real process runs the first
half and is killed -9 before the second; the users must end up exactly where one step would have
put them. On one Redis and on the Redis Cluster.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from peer import Peer, close_all, exchange, wait_for
from procs import ROOT, MatcherProc

FIRST_HALF = r"""
import json, os, signal, sys
from common import config
from common.redisconn import connect
from common.store import Store

settings = config.load()
store = Store(connect(settings), settings)
k = store.k
if sys.argv[1] == "match":  # the matcher's pairing, without the rooms' opening
    out = store._run("match", [k.queue, k.prefs, k.partner, k.room, k.last, k.alive, k.workers,
                               k.opening], [0, 16, *[os.urandom(16).hex() for _ in range(8)]])
else:  # a worker's Next, without the room's closing
    out = store._run("end_chat", [k.partner, k.room, k.last, k.queue, k.wake, k.closing, k.hosts],
                     [sys.argv[2], "next", "0"])
print(json.dumps(out), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def first_half_then_kill(stack, *args: str) -> list:
    p = subprocess.run([sys.executable, "-c", FIRST_HALF, *args], env={**os.environ, **stack.env},
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == -signal.SIGKILL, p.stderr
    return json.loads(p.stdout)


async def test_pairing_and_parting_cut_by_a_kill_are_finished_by_whoever_comes(make_stack,
                                                                              backend):
    s = make_stack(workers=2, matchers=0, **backend)
    w1, w2 = s.urls()
    a, b, c, d = Peer(w1, "A"), Peer(w2, "B"), Peer(w1, "C"), Peer(w2, "D")
    peers = [a, b, c, d]
    try:
        for p in peers:
            await p.connect()
            await p.join()
        made = first_half_then_kill(s, "match")
        assert len(made) == 4  # two pairs made in the home slot, no room opened
        assert a.count("matched") == b.count("matched") == 0

        # A reloads: the resume meets the unopened room and opens it; B is told `matched`
        a2 = await Peer(w2, "A again").connect(token=a.token)
        peers.append(a2)
        resumed = await a2.next("resumed")
        assert resumed["state"] == "chatting"
        assert (await b.next("matched"))["room"] == resumed["room"]
        await exchange(a2, b, "after a resume opened it")

        # nobody comes for C and D: a matcher finds the intent (stale after STALE_INTENT_MS) and opens it
        s.matchers.append(MatcherProc(s.env, "matcher"))
        mc, md = await c.next("matched", timeout=20), await d.next("matched", timeout=20)
        assert mc["room"] == md["room"]
        await exchange(c, d, "after a matcher opened it")

        # A's Next, its worker killed after the home slot: B is told by the matcher
        partner, room, _ = first_half_then_kill(s, "end", a2.user)
        assert (partner, room) == (b.user, resumed["room"])
        left = await b.next("partner_left", timeout=20)
        assert left == {"reason": "next", "room": room}
        assert (await b.call("message", {"id": "late", "text": "anyone?"}))["ok"] is False
        assert s.client.hgetall(s.home_key("opening")) == {}
        # the intent is the matcher's last step, after close.lua told B: gone soon after
        await wait_for(lambda: s.client.hgetall(s.home_key("closing")) == {}, 10,
                       "the closing intent to be carried out and removed")
        for p in (a2, b, c, d):
            assert p.count("matched") + p.count("resumed") == 1  # told once each
    finally:
        await close_all(peers)
