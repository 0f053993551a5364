"""Two browsers chatting through nginx, each on another web worker behind it.

nginx (nginx/nginx.conf.j2, rendered for free ports as tests/test_nginx.py does) in front of
three web workers, the matcher and Redis. The page knows nothing of workers: which one a page
talks to is read from the Socket.IO `hello` event (its `worker` field, docs/protocol.md) in the
page's own traffic, long-polling responses (the client's first transport) and WebSocket frames.
"""
from __future__ import annotations

import asyncio
import json
import re
import signal

import pytest
from playwright.async_api import Page, Response, WebSocket, expect

from test_nginx import NginxStack  # tests/test_nginx.py

from .conftest import pair

MAX_TRIES = 10  # pages opened to find two on different workers: each new one differs from the
#                 first with probability 2/3, so ten all on one worker is a (1/3)^9 fluke

# A Socket.IO EVENT packet inside an Engine.IO MESSAGE: 42[...], 42/ns,[...], 42<ack id>[...]
EVENT = re.compile(r"42(?:/[^,\[]*,)?\d*(\[.*)", re.S)


@pytest.fixture(scope="module")
def stack():
    """Overrides the browser suite's stack for this module: nginx in front of three workers."""
    s = NginxStack(workers=3)
    yield s
    for p in s.procs():  # all at once: each web worker takes about a second to stop
        p.signal(signal.SIGTERM)
    s.stop()


class HelloSpy:
    """Collects the `hello` events a page receives, from its network traffic."""

    def __init__(self):
        self.hellos: list[dict] = []
        self.websockets: list[str] = []
        self.polls = 0

    async def install(self, page: Page):
        page.on("response", self._on_response)
        page.on("websocket", self._on_websocket)

    def _packets(self, payload) -> None:
        if isinstance(payload, bytes):
            return
        for packet in payload.split("\x1e"):  # Engine.IO v4 joins polled packets with 0x1e
            m = EVENT.fullmatch(packet)
            if not m:
                continue
            event = json.loads(m.group(1))
            if event and event[0] == "hello":
                self.hellos.append(event[1])

    async def _on_response(self, response: Response):
        if "/socket.io/" not in response.url or response.request.method != "GET" \
                or "transport=polling" not in response.url:
            return
        self.polls += 1
        try:
            body = await response.text()
        except Exception:  # the page went away mid-poll
            return
        self._packets(body)

    def _on_websocket(self, ws: WebSocket):
        self.websockets.append(ws.url)
        ws.on("framereceived", self._packets)

    async def worker(self, timeout: float = 10) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.hellos:
            assert loop.time() < deadline, "the page got no `hello`"
            await asyncio.sleep(0.05)
        return self.hellos[0]["worker"]


async def test_two_browsers_on_two_workers_chat_through_nginx(fresh, strangers):
    url = fresh.url
    workers = {w.worker_id for w in fresh.webs}

    # ---- open pages through nginx until two of them talk to different workers
    opened = []  # (stranger, spy, worker)
    second = None
    for _ in range(MAX_TRIES):
        spy = HelloSpy()
        person = await strangers(url, prepare=spy.install)
        worker = await spy.worker()
        assert worker in workers, (worker, workers)
        opened.append((person, spy, worker))
        if worker != opened[0][2]:
            second = opened[-1]
            break
    first = opened[0]
    assert second, f"{MAX_TRIES} pages through nginx all on {first[2]}: nginx does not spread them"
    for o in opened[1:-1]:  # the others (all on the first one's worker) leave
        await o[0].context.close()
    (a, spy_a, worker_a), (b, spy_b, worker_b) = first, second
    print(f"{len(opened)} page(s) opened; A on {worker_a}, B on {worker_b}")

    # each page got its affinity cookie from nginx (random, HttpOnly, for /socket.io/ only)
    cookies = []
    for p in (a, b):
        jar = {c["name"]: c for c in await p.context.cookies()}
        assert "chat_affinity" in jar, jar
        assert jar["chat_affinity"]["httpOnly"] and jar["chat_affinity"]["path"] == "/socket.io/"
        cookies.append(jar["chat_affinity"]["value"])
    assert cookies[0] != cookies[1]

    # ---- they chat, across the two workers
    await pair(a, b)
    await a.send("Hello from the first worker")
    await b.sees("Hello from the first worker")
    await b.send("你好，来自另一个 worker")
    await a.sees("你好，来自另一个 worker")

    # ---- Next: B is told; B finds someone new, and the only one waiting is A again
    await a.button("next").click()
    await expect(b.notice("notice_partner_next")).to_be_visible()
    await expect(b.page.locator("#chat-status")).to_have_text(b.t("chat_status_ended"))
    await expect(a.page.locator("#chat-status")).to_have_text(a.t("chat_status_waiting"))
    await b.button("find_new").click()
    await a.matched()
    await b.matched()
    await expect(a.bubbles("theirs")).to_have_count(0)  # a new chat starts with an empty log
    await b.send("again, after Next")
    await a.sees("again, after Next")
    await a.send("and back")
    await b.sees("and back")

    # every request of each page reached the worker that issued its session: one `hello` each,
    # never a reconnection elsewhere; both went over to the WebSocket, through nginx
    for spy, worker in ((spy_a, worker_a), (spy_b, worker_b)):
        assert [h["worker"] for h in spy.hellos] == [worker], spy.hellos
        assert spy.polls >= 1  # it started with long-polling, as the client does
        assert spy.websockets and all(
            u.startswith(url.replace("http://", "ws://") + "/socket.io/")
            for u in spy.websockets), spy.websockets
    for p in (a, b):
        assert p.dialogs == []
