"""The matcher daemon: atomic pairing under two matchers, restarts, clean shutdown."""
from __future__ import annotations

import asyncio
from collections import Counter

from peer import Peer, pair, wait_for
from procs import MatcherProc, base_env, free_port, wait_until


async def _crowd_is_paired_once(s, tag: str) -> list[Peer]:
    """200 users join at once through two workers; each is paired exactly once, 100 pairs."""
    urls = s.urls()
    peers = [Peer(urls[i % 2], f"{tag}{i}") for i in range(200)]
    await asyncio.gather(*(p.connect(timeout=30) for p in peers))
    acks = await asyncio.gather(*(p.call("join", {}) for p in peers))
    assert all(a == {"ok": True} for a in acks)
    matched = await asyncio.gather(*(p.next("matched", timeout=30) for p in peers))

    rooms = Counter(m["room"] for m in matched)
    assert len(rooms) == 100 and set(rooms.values()) == {2}
    by_user = {p.user: m["room"] for p, m in zip(peers, matched)}
    assert len(by_user) == 200  # 200 distinct users, each in one room
    partner = dict(zip(by_user, s.client.hmget(s.home_key("partner"), list(by_user))))
    for u, v in partner.items():
        assert v is not None and u != v and partner[v] == u and by_user[u] == by_user[v]
    assert s.client.zcard(s.home_key("queue")) == 0
    return peers


async def test_two_matchers_and_200_users_at_once_make_exactly_100_pairs(make_stack, backend):
    # 200 clients from one address: the worker's own per-address cap is for `make run` alone.
    # One pair per script call (MATCH_BATCH=2): a matcher then needs a hundred calls for the
    # crowd, and the other one, woken by the joins meanwhile, pairs beside it (with the default
    # batch the first one woken could pair everyone in three calls before the other looked).
    # Which one wakes first is up to the scheduler: should one of them have paired the whole
    # crowd alone, another crowd comes (at most three), so that the two did work side by side.
    s = make_stack(workers=2, matchers=2, MAX_CONNS_PER_ADDR=0, MATCH_BATCH=2, **backend)
    peers: list[Peer] = []

    def both_matched():
        return all("matched" in m.output() for m in s.matchers)

    try:
        for crowd in range(3):
            peers += await _crowd_is_paired_once(s, f"c{crowd}u")
            try:  # a matcher logs its first pairs at the end of that pass
                await wait_for(both_matched, 2, "a line of pairs from each matcher")
                break
            except AssertionError:
                continue
        assert both_matched(), [m.output() for m in s.matchers]
        # nobody was told of a second match
        assert all(p.count("matched") == 1 for p in peers)
    finally:
        await asyncio.gather(*(p.close() for p in peers))


async def test_users_waiting_while_the_matcher_is_down_are_matched_after_restart(make_stack,
                                                                                 backend):
    s = make_stack(workers=2, matchers=1, **backend)
    s.matchers[0].kill()
    w1, w2 = s.urls()
    a, b = Peer(w1), Peer(w2)
    await a.connect()
    await b.connect()
    await a.join()
    await b.join()
    s.matchers.append(MatcherProc(s.env, "matcher-restarted"))
    ma = await a.next("matched", timeout=15)
    mb = await b.next("matched", timeout=15)
    assert ma["room"] == mb["room"]
    await a.close()
    await b.close()


async def test_matcher_stops_cleanly_on_sigterm(make_stack):
    s = make_stack(workers=1, matchers=1)
    w = s.urls()[0]
    a, b = Peer(w), Peer(w)
    await a.connect()
    await b.connect()
    await pair(a, b)  # the matcher is up and working
    code = s.matchers[0].stop(timeout=10)
    assert code == 0, s.matchers[0].output()
    assert "matcher stopped" in s.matchers[0].output()
    await a.close()
    await b.close()


def test_matcher_started_before_its_redis_cluster_waits_for_it():
    """A Redis Cluster that does not answer yet (a deployment's start-up order): the matcher
    retries with its back-off, as the archiver does, instead of exiting at its start; SIGTERM
    still stops it with 0."""
    nowhere = f"redis://127.0.0.1:{free_port()}"
    m = MatcherProc(base_env(nowhere, REDIS_CLUSTER_URL=nowhere))
    try:
        wait_until(lambda: "redis unavailable" in m.output() or not m.alive(), 20,
                   "the matcher to say the cluster is unavailable")
        assert m.alive(), m.output()
        assert "retrying in" in m.output()
        assert m.stop(timeout=10) == 0, m.output()
    finally:
        m.stop()
