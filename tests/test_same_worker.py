"""Two users on one web worker: the worker delivers their messages and typing itself, without the
trip through the Redis queue (message.lua's `here`), and nothing of the queue's guarantees goes:
order, exactly once, and a partner's new connection still hears its `resumed` before anything
that its snapshot does not hold. Real worker processes, on one Redis and on the Redis Cluster.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading

from peer import Peer, pair, wait_for
from procs import RedisServer
from test_metrics import scrape, value

from common import events as ev
from common.config import load
from common.keys import WORKER_CHANNEL_INFIX, user_room
from common.store import Store


def delivered_here(worker) -> float:
    return value(scrape(worker.url + "/metrics"), "chat_messages_here_total")


async def test_partners_on_one_worker_chat_in_order_exactly_once_without_the_queue(fresh_any):
    w1 = fresh_any.webs[0]
    a, b = Peer(w1.url, "A"), Peer(w1.url, "B")
    for p in (a, b):
        await p.connect()
    room = await pair(a, b)
    before = delivered_here(w1)
    for i in range(10):
        assert await a.call("typing", {"typing": True}) == {"ok": True}
        assert (await a.send(f"a{i}", f"from A {i}"))["ok"]
        assert (await b.send(f"b{i}", f"from B {i}"))["ok"]
    await b.next("message", where=lambda m: m["id"] == "a9")
    await a.next("message", where=lambda m: m["id"] == "b9")
    assert [m["id"] for m in b.events["message"]] == [f"a{i}" for i in range(10)]
    assert [m["id"] for m in a.events["message"]] == [f"b{i}" for i in range(10)]
    seqs = [m["seq"] for m in b.events["message"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10
    assert b.count("typing") == 10 and all(t == {"typing": True, "room": room}
                                           for t in b.events["typing"])
    # every one by the worker's own hand, the first ones too: the worker told both of them
    # their room (`matched`), so it knows who each one's partner is
    assert delivered_here(w1) - before == 20
    for p in (a, b):
        await p.close()


async def test_partners_on_two_workers_still_go_through_the_queue(fresh_any):
    w1, w2 = fresh_any.webs[0], fresh_any.webs[1]
    a, b = Peer(w1.url, "A"), Peer(w2.url, "B")
    for p in (a, b):
        await p.connect()
    await pair(a, b)
    before = delivered_here(w1), delivered_here(w2)
    for i in range(5):
        assert (await a.send(f"a{i}", f"from A {i}"))["ok"]
        assert (await b.send(f"b{i}", f"from B {i}"))["ok"]
    await b.next("message", where=lambda m: m["id"] == "a4")
    await a.next("message", where=lambda m: m["id"] == "b4")
    assert (delivered_here(w1), delivered_here(w2)) == before
    for p in (a, b):
        await p.close()


FAST = {"MESSAGE_RATE": "2000", "MESSAGE_BURST": "2000", "PACKET_RATE": "2000",
        "PACKET_BURST": "2000"}  # A may stream as fast as acks come back


async def test_a_partner_reloading_mid_stream_misses_nothing(make_stack, backend):
    """B's page reloads (a new connection, same token, same worker) three times while A sends
    one message after another: whatever reaches a new connection before its `resumed` is in
    that snapshot (a fresh page drops it), and after it each message it lacks comes once, in
    order."""
    w1 = make_stack(workers=1, **backend, **FAST).webs[0]
    a, b = Peer(w1.url, "A"), Peer(w1.url, "B")
    for p in (a, b):
        await p.connect()
    room = await pair(a, b)
    await a.send("warm", "warm up")  # the worker now delivers A's messages to B itself
    await b.next("message")
    total, acked = 300, []

    async def stream():
        for i in range(total):
            ack = await a.send(f"s{i}", f"stream {i}")
            assert ack["ok"], ack
            acked.append(ack["seq"])

    sender = asyncio.create_task(stream())
    reloads = []
    for n in range(3):
        await wait_for(lambda: len(acked) > (n + 1) * 40, 20, "A's stream to go on")
        again = Peer(w1.url, f"B reload {n}")
        await again.connect(token=b.token, since=0)
        reloads.append(again)
    await sender
    assert len(acked) == total
    for page in reloads[-1:]:  # the last one stays: it must end with every message
        await page.next("message", where=lambda m: m["seq"] == total + 1, timeout=15)
    for page in reloads:
        order = list(page.order)
        resumed_at = next(i for i, (e, _) in enumerate(order) if e == "resumed")
        snapshot = order[resumed_at][1]
        assert snapshot["state"] == "chatting" and snapshot["room"] == room
        held = {m["seq"] for m in snapshot["history"] if not m["mine"]}
        early = [d["seq"] for e, d in order[:resumed_at] if e == "message"]
        assert set(early) <= held, (page.name, early, sorted(held))
        # after it: what the snapshot lacked, in order, once each (a page skips a seq it has)
        late = [d["seq"] for e, d in order[resumed_at + 1:] if e == "message"
                and d["seq"] not in held]
        assert late == sorted(set(late)) and all(s > max(held) for s in late), page.name
        if page is reloads[-1]:
            assert held | set(late) == set(range(1, total + 2))  # every one of A's messages
    for p in (a, b, *reloads):
        await p.close()


class ReplyGate:
    """A TCP proxy in front of Redis that can hold Redis's replies to a web worker's commands
    (not what its pub/sub listener reads): a script has run, its caller has not heard yet."""

    def __init__(self, port: int):
        self.target = port
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.lsock.getsockname()[1]}/0"
        self.lock = threading.Lock()
        self.holding = False
        self.links: list[dict] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:  # Redis stopped: the stack is going down
                client.close()
                continue
            link = {"client": client, "server": server, "pubsub": False, "held": []}
            with self.lock:
                self.links.append(link)
            threading.Thread(target=self._up, args=(link,), daemon=True).start()
            threading.Thread(target=self._down, args=(link,), daemon=True).start()

    def _up(self, link):
        while data := self._recv(link["client"]):
            if b"SUBSCRIBE" in data.upper():
                link["pubsub"] = True
            if not self._send(link["server"], data):
                break
        link["server"].close()

    def _down(self, link):
        while data := self._recv(link["server"]):
            with self.lock:
                if self.holding and not link["pubsub"]:
                    link["held"].append(data)
                    continue
            if not self._send(link["client"], data):
                break
        link["client"].close()

    @staticmethod
    def _recv(sock) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def _send(sock, data: bytes) -> bool:
        try:
            sock.sendall(data)
            return True
        except OSError:
            return False

    def hold(self):
        with self.lock:
            self.holding = True

    def release(self):
        with self.lock:
            self.holding = False
            for link in self.links:
                for data in link["held"]:
                    self._send(link["client"], data)
                link["held"].clear()

    def close(self):
        self.lsock.close()
        with self.lock:
            for link in self.links:
                for s in (link["client"], link["server"]):
                    s.close()


async def test_a_chat_ended_while_a_message_is_on_its_way_ends_after_it(make_stack):
    """A's message is stored (message.lua said: deliver it yourself); before A's worker hears
    back, another process ends the chat (an admin's ban, A's tab on another worker) and its
    `partner_left` reaches the worker. B must still see the message, then the end: a page that
    has ended the chat drops what comes after. The queue path gives that order by itself."""
    redis = RedisServer()
    gate = ReplyGate(redis.port)
    try:
        stack = make_stack(workers=1, redis=redis, REDIS_URL=gate.url)
        w1 = stack.webs[0]
        a, b, c = Peer(w1.url, "A"), Peer(w1.url, "B"), Peer(w1.url, "C")
        for p in (a, b, c):
            await p.connect()
        room = await pair(a, b)
        await a.send("warm", "warm up")  # the worker now delivers A's messages to B itself
        await b.next("message")
        store = Store(redis.client, load(stack.env))
        gate.hold()
        last = asyncio.create_task(a.send("last", "said before the chat ended"))
        await wait_for(lambda: redis.client.hget(store.k.chat(room), "seq") == "2", 10,
                       "A's message to be stored")
        store.end_chat(a.user, ev.REASON_LEFT, requeue=False)  # partner_left to B's worker
        # a probe published after it on the worker's channel: once C has it, the worker's
        # listener has handled the partner_left too
        probe = {"method": "emit", "event": "probe", "data": [{}], "namespace": "/",
                 "room": user_room(c.user)}
        redis.client.publish(store.k.room_tag(room) + WORKER_CHANNEL_INFIX + w1.worker_id,
                             json.dumps(probe))
        await c.next("probe")
        gate.release()
        assert (await last)["ok"]
        await b.next("partner_left")
        await b.next("message", where=lambda m: m["id"] == "last")
        seen = [e if e != "message" else d["id"] for e, d in b.order
                if e in ("message", "partner_left")]
        assert seen == ["warm", "last", "partner_left"], seen
        for p in (a, b, c):
            await p.close()
    finally:
        gate.release()
        gate.close()
        redis.stop()
