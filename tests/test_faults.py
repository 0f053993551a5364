"""Faults on real processes: nothing acknowledged `ok` is ever lost (issues 11 and 16).

Pairs of resuming clients chat across three web workers, each message acknowledged and resent
until it is; every message acknowledged `ok` must be shown to the partner, live or in a
`resumed` snapshot, whatever happens around them: Redis shut down and started again, a worker
SIGTERMed (a rolling deploy), the queue listener's connection killed while Redis stays up, the
matcher killed -9 while pairing. The same scenarios, repeated for minutes, are `make soak`
(tests/soak.py), which prints the figures quoted in docs/RELIABILITY.md.
"""
from __future__ import annotations

import asyncio
import collections
import signal
import time

import pytest
import socketio

from conftest import Stack, flushed
from peer import Peer, close_all, connect_all, wait_for
from procs import MatcherProc, RedisServer

from common.keys import Keys

# RESUME_GRACE above the longest fault, so presence never ends a chat the fault only paused;
# one address (127.0.0.1) holds every test client.
FAULT_ENV = {"RESUME_GRACE": 10, "MAX_CONNS_PER_ADDR": 10000, "DRAIN_TIMEOUT": 3}
SEND_EVERY = 0.3  # seconds between one client's messages
ACK_TIMEOUT = 3.0
SETTLE = 15.0  # seconds for every acknowledged message to be shown, after the traffic stops


class Chatter:
    """A client that behaves like the page: acks, resends, and resumes on another worker.

    It keeps its token and, per room, every seq it knows (its acked messages and the partner's
    shown ones); `since` is the end of the unbroken run 1..n of those, so a message lost in a
    gap is asked for again even when later ones arrived. On `draining` or a lost connection it
    reconnects at once to the next worker, as nginx's next upstream would.
    """

    def __init__(self, urls: list[str], name: str, start: int):
        self.urls, self.name, self.i = urls, name, start
        self.sio: socketio.AsyncClient | None = None
        self.token = self.user = self.worker = self.room = None
        self.known: set[int] = set()
        self.shown: dict[str, float] = {}  # partner message id -> when first shown (live or snapshot)
        self.acked: dict[str, float] = {}  # own message id -> when its ok ack arrived
        self.codes: collections.Counter = collections.Counter()  # refusals, acks and events
        self.partner_left = 0
        self.not_chatting_states: list[str] = []
        self.resumed_at: list[float] = []  # each `resumed` that followed a reconnect
        self.drained_at: float | None = None
        self.obeys_drain = True  # False: an old page that ignores `draining`
        self.closing = False
        self._up = asyncio.Event()
        self._moving: asyncio.Task | None = None
        self._matched = asyncio.Event()
        self._reconnected = asyncio.Event()

    # connection -------------------------------------------------------------------------------
    def since(self) -> int:
        n = 0
        while n + 1 in self.known:
            n += 1
        return n

    def _set_room(self, room: str) -> None:
        if room != self.room:
            self.room, self.known = room, set()

    async def connect(self, resume: bool = False, timeout: float = 5) -> None:
        sio = socketio.AsyncClient(reconnection=False)
        hello = asyncio.get_running_loop().create_future()

        @sio.on("*")
        async def on_event(event, data=None):
            if sio is not self.sio and event != "hello":
                return
            if event == "hello":
                self.token, self.user, self.worker = data["token"], data["user"], data["worker"]
                if not hello.done():
                    hello.set_result(data)
            elif event == "resumed":
                if data.get("state") == "chatting":
                    self._set_room(data["room"])
                    for m in data.get("history", []):
                        self.known.add(m["seq"])
                        if not m["mine"]:
                            self.shown.setdefault(m["id"], time.monotonic())
                else:
                    self.not_chatting_states.append(data.get("state"))
                self.resumed_at.append(time.monotonic())
                self._reconnected.set()
            elif event == "matched":
                self._set_room(data["room"])
                self._matched.set()
            elif event == "message":
                if data.get("room") == self.room:
                    self.known.add(data["seq"])
                    self.shown.setdefault(data["id"], time.monotonic())
            elif event == "partner_left":
                self.partner_left += 1
            elif event == "error":
                self.codes[data.get("code")] += 1
            elif event == "draining":
                self.drained_at = time.monotonic()
                if self.obeys_drain:
                    self._move()

        @sio.event
        async def disconnect(reason=None):
            if sio is self.sio and not self.closing:
                self._move()

        auth = {"since": self.since()}
        if resume and self.token:
            auth["token"] = self.token
        self.sio = sio
        try:
            await sio.connect(self.urls[self.i], auth=auth, transports=["websocket"],
                              wait_timeout=timeout)
            await asyncio.wait_for(hello, timeout)
        except BaseException:
            self.sio = None
            await sio.disconnect()
            raise
        self._up.set()

    def _move(self) -> None:
        if self._moving is None or self._moving.done():
            self._moving = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        """Leave this worker and resume on the next one that takes the connection."""
        self._up.clear()
        old, self.sio = self.sio, None
        if old is not None:
            await old.disconnect()
        while not self.closing:
            self.i = (self.i + 1) % len(self.urls)
            try:
                await self.connect(resume=True)
                return
            except Exception:
                await asyncio.sleep(0.1)  # that worker is gone too: try the next one

    async def join(self, timeout: float = 20) -> None:
        ack = await self.sio.call("join", {}, timeout=timeout)
        assert ack == {"ok": True}, (self.name, ack)
        await asyncio.wait_for(self._matched.wait(), timeout)

    async def close(self) -> None:
        self.closing = True
        if self._moving is not None:
            self._moving.cancel()
        if self.sio is not None:
            await self.sio.disconnect()

    # traffic ----------------------------------------------------------------------------------
    async def chat(self, stop: asyncio.Event, hard_stop: asyncio.Event) -> None:
        """Send until `stop`; resend each message until acknowledged (or `hard_stop`)."""
        n = 0
        while not stop.is_set():
            n += 1
            mid = f"{self.name}-{n}"
            while not hard_stop.is_set():
                sio = self.sio
                if sio is None or not sio.connected:
                    try:
                        await asyncio.wait_for(self._up.wait(), 1)
                    except asyncio.TimeoutError:
                        pass
                    continue
                try:
                    ack = await sio.call("message", {"id": mid, "text": f"{mid} says hi"},
                                         timeout=ACK_TIMEOUT)
                except Exception:  # timed out or disconnected: resend on the next connection
                    continue
                if ack.get("ok"):
                    self.acked[mid] = time.monotonic()
                    self.known.add(ack["seq"])
                    break
                self.codes[ack["error"]["code"]] += 1
                await asyncio.sleep(SEND_EVERY)  # refused: try the same id again later
            await asyncio.sleep(SEND_EVERY)


async def make_pairs(urls: list[str], n_pairs: int, tag: str) -> list[tuple[Chatter, Chatter]]:
    """2 * n_pairs chatters spread over the workers, joined and paired by the matcher."""
    chatters = [Chatter(urls, f"{tag}{i}", i % len(urls)) for i in range(2 * n_pairs)]
    await asyncio.gather(*(c.connect() for c in chatters))
    await asyncio.gather(*(c.join() for c in chatters))
    rooms = collections.defaultdict(list)
    for c in chatters:
        rooms[c.room].append(c)
    assert all(len(v) == 2 for v in rooms.values()), {r: [c.name for c in v]
                                                      for r, v in rooms.items()}
    return [tuple(v) for v in rooms.values()]


class Traffic:
    """Every chatter sending, until stopped; then the ledger: acknowledged, shown, lost."""

    def __init__(self, pairs):
        self.pairs = pairs
        self.chatters = [c for p in pairs for c in p]
        self.stop, self.hard_stop = asyncio.Event(), asyncio.Event()
        self.tasks = [asyncio.ensure_future(c.chat(self.stop, self.hard_stop))
                      for c in self.chatters]

    def _delivered_after(self, after: float) -> dict[str, float]:
        """Per chatter: when the first message it sent after `after` was shown to its partner."""
        out = {}
        for a, b in self.pairs:
            for src, dst in ((a, b), (b, a)):
                times = [dst.shown[m] for m, t in src.acked.items() if t > after and m in dst.shown]
                if times:
                    out[src.name] = min(times)
        return out

    async def until_delivered(self, after: float, timeout: float = 10) -> float:
        """Wait until every chatter's messages sent after `after` reach its partner again;
        the seconds from `after` to the last of those first deliveries."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            got = self._delivered_after(after)
            if len(got) == len(self.chatters):
                return max(got.values()) - after
            if loop.time() - start > timeout:
                slow = [c.name for c in self.chatters if c.name not in got]
                raise AssertionError(f"nothing delivered within {timeout} s from {slow}; "
                                     f"refusals {self.codes()}")
            await asyncio.sleep(0.05)

    async def goes_on(self, after: float, acked: int, timeout: float = 10) -> float:
        """Past a fault that ended at `after`: messages delivered again, and `acked` more acked
        by every chatter; how long the first delivery took."""
        again = await self.until_delivered(after, timeout=timeout)
        await self.until_acked(acked, after=after, timeout=timeout)
        return again

    async def until_acked(self, count: int, after: float = 0.0, timeout: float = 10) -> None:
        """Wait until every chatter has `count` ok acks after `after`."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            if all(sum(t > after for t in c.acked.values()) >= count for c in self.chatters):
                return
            if loop.time() - start > timeout:
                slow = [c.name for c in self.chatters
                        if sum(t > after for t in c.acked.values()) < count]
                raise AssertionError(f"no {count} acks within {timeout} s for {slow}; "
                                     f"refusals {self.codes()}")
            await asyncio.sleep(0.05)

    def codes(self) -> collections.Counter:
        total = collections.Counter()
        for c in self.chatters:
            total.update(c.codes)
        return total

    def missing(self) -> dict[str, set[str]]:
        out = {}
        for a, b in self.pairs:
            for src, dst in ((a, b), (b, a)):
                lost = {m for m in src.acked if m not in dst.shown}
                if lost:
                    out[src.name] = lost
        return out

    async def finish(self, settle: float = SETTLE) -> dict:
        """Stop sending, let the last messages be acknowledged and shown; the ledger."""
        self.stop.set()
        try:
            await asyncio.wait_for(asyncio.gather(*self.tasks), ACK_TIMEOUT * 4)
        except asyncio.TimeoutError:
            self.hard_stop.set()
            await asyncio.gather(*self.tasks)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        while self.missing() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        acked = sum(len(c.acked) for c in self.chatters)
        lost = sum(len(v) for v in self.missing().values())
        return {"acknowledged": acked, "shown": acked - lost, "lost": lost,
                "lost_ids": self.missing(), "codes": dict(self.codes()),
                "partner_left": sum(c.partner_left for c in self.chatters),
                "not_chatting": sum(len(c.not_chatting_states) for c in self.chatters)}

    async def close(self) -> None:
        self.stop.set()
        self.hard_stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.chatters), return_exceptions=True)


def figures(name: str, f: dict) -> None:
    shown = {k: v for k, v in f.items() if k != "lost_ids"}
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in shown.items()))


# the scenarios (also run by tests/soak.py) -------------------------------------------------------
async def redis_restart(stack: Stack, pairs: int = 6, down: float = 2.5) -> dict:
    """Redis SHUTDOWN under traffic, started again `down` s later on the same port (AOF)."""
    traffic = Traffic(await make_pairs(stack.urls(), pairs, "r"))
    try:
        await traffic.until_acked(3)
        await asyncio.to_thread(stack.redis.shutdown)
        await asyncio.sleep(down)  # the outage itself
        await asyncio.to_thread(stack.redis.start_again)
        up = time.monotonic()
        again = await traffic.goes_on(up, 3, timeout=10)
        f = await traffic.finish()
        f["chat_again_s"] = round(again, 2)
        return f
    finally:
        await traffic.close()


async def listener_kill(stack: Stack, pairs: int = 6, kills: int = 20) -> dict:
    """The queue listeners' connections killed (CLIENT KILL TYPE pubsub) while Redis stays up."""
    traffic = Traffic(await make_pairs(stack.urls(), pairs, "k"))
    try:
        await traffic.until_acked(2)
        killed = 0
        for _ in range(kills):
            killed += await asyncio.to_thread(stack.redis.kill_clients, "pubsub")
            mark = time.monotonic()
            await traffic.until_acked(1, after=mark)  # traffic flows between two kills
        f = await traffic.finish()
        f["listeners_killed"] = killed
        return f
    finally:
        await traffic.close()


async def worker_drain(stack: Stack, pairs: int = 6, victim: int = 0) -> dict:
    """SIGTERM to one worker's gunicorn (a rolling deploy); its clients resume elsewhere."""
    traffic = Traffic(await make_pairs(stack.urls(), pairs, "d"))
    web = stack.webs[victim]
    try:
        await traffic.until_acked(2)
        moved = [c for c in traffic.chatters if c.worker == web.worker_id]
        assert len(moved) >= 2, "clients on the worker to stop"
        for c in moved:
            c._reconnected.clear()
        for c in moved[::2]:  # these stay until the worker closes their transport
            c.obeys_drain = False
        signaled = time.monotonic()
        web.signal(signal.SIGTERM)
        await asyncio.gather(*(asyncio.wait_for(c._reconnected.wait(), 30) for c in moved))
        resume = sorted(c.resumed_at[-1] - signaled for c in moved)
        told_resume = sorted(c.resumed_at[-1] - signaled for c in moved if c.obeys_drain)
        await traffic.until_acked(2, after=time.monotonic())
        f = await traffic.finish()
        await asyncio.to_thread(web.p.wait, 30)
        f.update(moved=len(moved), told=sum(c.drained_at is not None for c in moved),
                 ignored_drain=len(moved[::2]), resume_s=[round(x, 2) for x in resume],
                 resume_told_s=[round(x, 2) for x in told_resume],
                 on_victim=sum(c.worker == web.worker_id for c in traffic.chatters))
        return f
    finally:
        await traffic.close()


async def matcher_kill(stack: Stack, users: int = 200, waves: int = 5) -> dict:
    """kill -9 of the matcher while users join in waves; a new matcher takes over."""
    urls = stack.urls()
    peers = [Peer(urls[i % len(urls)], f"m{i}") for i in range(users)]
    await connect_all(peers)
    try:
        size = users // waves
        first = peers[:size]
        await asyncio.gather(*(p.call("join", {}) for p in first))
        await wait_for(lambda: any(p.count("matched") for p in first), 20, "a first match")
        stack.matchers[0].kill()
        stack.matchers.pop(0)
        for w in range(1, waves):
            await asyncio.gather(*(p.call("join", {}) for p in peers[w * size:(w + 1) * size]))
        stack.matchers.append(MatcherProc(stack.env, "matcher-again"))
        try:
            await wait_for(lambda: all(p.count("matched") for p in peers), 20, "every match")
        except AssertionError:
            pass  # counted below
        stuck = [p.user for p in peers if not p.count("matched")]
        rooms = collections.defaultdict(set)
        for p in peers:
            for m in p.events["matched"]:
                rooms[m["room"]].add(p.user)
        half = [r for r, us in rooms.items() if len(us) != 2]
        k = Keys(stack.env.get("REDIS_PREFIX", "chat"))
        partner = stack.redis.client.hgetall(k.partner)
        unpaired = [u for u, v in partner.items() if partner.get(v) != u]
        return {"users": users, "matched": users - len(stuck), "stuck_waiting": len(stuck),
                "half_pairs": len(half), "inconsistent_partners": len(unpaired),
                "queue_left": stack.redis.client.zcard(k.queue)}
    finally:
        await close_all(peers)


# the tests ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aof_stack():
    redis = RedisServer(aof=True)
    s = Stack(workers=3, redis=redis, **FAULT_ENV)
    yield s
    s.stop(background=True, then=redis.stop)


@pytest.fixture
def faults(aof_stack):
    yield from flushed(aof_stack)


def assert_nothing_lost(f: dict) -> None:
    """No acknowledged message lost, no chat ended, nobody told `not_chatting`."""
    assert f["lost"] == 0, f["lost_ids"]
    assert f["partner_left"] == 0 and f["not_chatting"] == 0, f


async def test_redis_restart_loses_nothing_acknowledged(faults):
    f = await redis_restart(faults)
    figures("redis restart", f)
    assert_nothing_lost(f)
    assert f["codes"].get("unavailable", 0) > 0, "nobody was told that Redis was away"


async def test_killed_listener_loses_nothing(faults):
    f = await listener_kill(faults)
    figures("listener killed", f)
    assert f["listeners_killed"] > 0
    assert f["lost"] == 0, f["lost_ids"]
    assert f["partner_left"] == 0, f


async def test_matcher_kill_while_pairing_leaves_no_half_pair(faults):
    f = await matcher_kill(faults)
    figures("matcher kill -9", f)
    assert f["half_pairs"] == 0 and f["inconsistent_partners"] == 0, f
    assert f["stuck_waiting"] == 0 and f["queue_left"] == 0, f


async def test_sigterm_worker_clients_resume_elsewhere_at_once(make_stack):
    stack = make_stack(workers=3, **FAULT_ENV)
    f = await worker_drain(stack)
    figures("worker SIGTERM", f)
    assert_nothing_lost(f)
    assert f["on_victim"] == 0
    assert max(f["resume_s"]) < 5, f["resume_s"]
    assert f["told"] == f["moved"], "every client of the stopped worker is told to move"


async def test_a_takeover_lost_in_a_listener_gap_is_done_by_the_replay(faults):
    """The older tab's `replaced` and `disconnect` are published while its worker's listener
    is away: the replay after the gap sees the sid is no longer the user's and does it."""
    w1 = faults.urls()[0]
    old = await Peer(w1, "old tab").connect()
    r = faults.redis.client
    where = "{chat}:where:" + old.user
    await wait_for(lambda: r.hlen(where) == 1, 5, "the tab's connection to be listed")
    r.delete(where)
    r.hset(where, "a-newer-connection", "elsewhere")  # what a takeover leaves, its events lost
    faults.redis.kill_clients("pubsub")  # the gap: the worker subscribes again and replays
    err = await old.next("error", timeout=10)
    assert err["code"] == "replaced"
    await wait_for(lambda: not old.sio.connected, 10, "the replaced tab to be closed")
    await old.close()
