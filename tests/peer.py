"""A test user: a real Socket.IO client that records every event it receives."""
from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import time
from collections import defaultdict

import aiohttp
import socketio

_ids = itertools.count(1)


class Peer:
    def __init__(self, url: str, name: str = "", transports=("websocket",),
                 headers: dict | None = None):
        self.url = url
        self.headers = dict(headers or {})  # e.g. a browser's Cookie
        self.name = name or f"peer{next(_ids)}"
        self.transports = list(transports)
        self.sio = socketio.AsyncClient(reconnection=False)
        if any(h.lower() == "cookie" for h in self.headers):
            # engine.io moves a Cookie header into its session's jar, and aiohttp's default jar
            # drops cookies for an IP address (127.0.0.1), which a browser keeps
            self.sio.eio.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.events: dict[str, list] = defaultdict(list)
        self.order: list[tuple[str, object]] = []  # every event as it came, in order
        self._taken: dict[str, int] = defaultdict(int)
        self._changed = asyncio.Event()
        self.token: str | None = None
        self.user: str | None = None
        self.worker: str | None = None

        @self.sio.on("*")
        async def record(event, data=None):
            self.events[event].append(data)
            self.order.append((event, data))
            if event == "hello":
                self.token, self.user, self.worker = data["token"], data["user"], data["worker"]
            self._changed.set()

    async def connect(self, token: str | None = None, since: int = 0, timeout: float = 10):
        auth = {"since": since}
        if token:
            auth["token"] = token
        await self.sio.connect(self.url, auth=auth, transports=self.transports,
                               headers=dict(self.headers),  # engine.io edits it
                               wait_timeout=timeout)
        await self.next("hello", timeout=timeout)
        return self

    async def next(self, event: str, timeout: float = 10, where=None):
        """The next not yet consumed `event` (that satisfies `where`), waiting up to `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got = self.events[event]
            for i in range(self._taken[event], len(got)):
                if where is None or where(got[i]):
                    self._taken[event] = i + 1
                    return got[i]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {event!r} within {timeout}s; "
                                   f"got {dict(self.events)}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def count(self, event: str) -> int:
        return len(self.events[event])

    async def call(self, event: str, data=None, timeout: float = 10):
        return await self.sio.call(event, data, timeout=timeout)

    async def send(self, msg_id: str, text: str):
        return await self.call("message", {"id": msg_id, "text": text})

    async def join(self, interests=None):
        ack = await self.call("join", {} if interests is None else {"interests": interests})
        assert ack == {"ok": True}, ack
        return await self.next("waiting")

    async def close(self):
        if self.sio.connected:
            await self.sio.disconnect()

    async def vanish(self):
        """Drop the connection without a Socket.IO goodbye, like a killed browser."""
        eio = self.sio.eio
        eio.state = "disconnecting"
        if eio.ws is not None:
            await eio.ws.close()
        if eio.http is not None and not eio.external_http:
            await eio.http.close()


async def pair(a: Peer, b: Peer, timeout: float = 10) -> str:
    await a.join()
    await b.join()
    ma = await a.next("matched", timeout)
    mb = await b.next("matched", timeout)
    assert ma["room"] == mb["room"]
    return ma["room"]


async def close_all(peers) -> None:
    """Disconnect every peer, and close the HTTP sessions the polling ones brought."""
    await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
    for p in peers:
        http = getattr(p.sio.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()


async def join_and_pair(peers, timeout: float = 20) -> dict[str, list[Peer]]:
    """Everyone joins; wait until everyone is matched; {room: [a, b]}."""
    acks = await asyncio.gather(*(p.call("join", {}) for p in peers))
    assert all(a == {"ok": True} for a in acks), acks
    matched = await asyncio.gather(*(p.next("matched", timeout) for p in peers))
    rooms: dict[str, list[Peer]] = collections.defaultdict(list)
    for p, m in zip(peers, matched):
        rooms[m["room"]].append(p)
    assert all(len(v) == 2 for v in rooms.values()), {k: [p.name for p in v]
                                                      for k, v in rooms.items()}
    return rooms


async def wait_for(cond, timeout: float, what: str, step: float = 0.1):
    """Poll `cond()` (a value or an awaitable) until it is truthy; return it, or fail naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = cond()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        assert loop.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(step)


def polling_peer(url: str, name: str, *, cookies: bool = True, upgrade: bool = False,
                 jar=None) -> Peer:
    """A client that starts with long-polling, as a browser does, and keeps cookies like one.

    aiohttp's default cookie jar refuses cookies from an IP address (127.0.0.1); a browser
    keeps them, so these clients get a jar that does (`cookies=False`: a jar that keeps none).
    """
    p = Peer(url, name, transports=("polling", "websocket") if upgrade else ("polling",))
    if jar is None:
        jar = aiohttp.CookieJar(unsafe=True) if cookies else aiohttp.DummyCookieJar()
    p.jar = jar
    p.sio.eio.http = aiohttp.ClientSession(cookie_jar=jar)
    return p


async def connect_all(peers, **kw):
    await asyncio.gather(*(p.connect(**kw) for p in peers))
    return peers


async def exchange(a: Peer, b: Peer, tag: str, sent: set[str] | None = None) -> None:
    """a -> b and b -> a, each acked and received with the acked seq; ids are added to `sent`."""
    for src, dst in ((a, b), (b, a)):
        mid = f"{tag}-{src.name}"  # the tag and the names make it unique in a run
        ack = await src.send(mid, f"hello from {src.name} on {src.worker}")
        assert ack["ok"], ack
        if sent is not None:
            sent.add(mid)
        got = await dst.next("message", where=lambda m, mid=mid: m["id"] == mid)
        assert got["seq"] == ack["seq"] and got["text"].startswith("hello from")


def partners(rooms: dict[str, list[Peer]]) -> dict[Peer, Peer]:
    """Each peer's partner, from join_and_pair's rooms."""
    return {p: (b if p is a else a) for a, b in rooms.values() for p in (a, b)}


def reported(ack: dict) -> bool:
    """A `report`'s ack of success: ok, and until when the two are kept apart (in the future)."""
    return (set(ack) == {"ok", "blocked_until"} and ack["ok"] is True
            and isinstance(ack["blocked_until"], int) and ack["blocked_until"] > time.time() * 1000)
