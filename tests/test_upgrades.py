"""Two WebSocket upgrades of one Engine.IO session (web/direct.py `_websocket_handler`).

python-engineio refuses an upgrade of a session already upgraded (a 400 that gevent-websocket,
having sent its 101 already, turns into a closed WebSocket), but not one that arrives while
another is still in its probe: both handlers ran, and the session's `ws` (where packets are
written directly) was the last one's, so a client's acks and events went to the WebSocket it
had not upgraded. Raw clients against a real worker: the first upgrade keeps everything, the
second gets nothing but its close.
"""
from __future__ import annotations

import collections
import json
import time
import urllib.request

import pytest
from attacks import RawWS
from procs import one_worker
from test_guard import connect, handshake, ws_upgrade


@pytest.fixture(scope="module")
def worker():
    with one_worker("upgrades") as web:
        yield web


class Upgrade(RawWS):
    """A raw WebSocket upgrade of the polling session `sid` (attacks.RawWS's reading and
    writing, from the loopback address), keeping every text frame it gets."""

    def __init__(self, web, sid: str):
        self.target = web
        self.sock = connect(web)
        self.buf = ws_upgrade(self.sock, f"&sid={sid}")
        self.closed = False
        self.codes: collections.Counter = collections.Counter()
        self.events: list[tuple[str, object]] = []
        self.texts: list[str] = []

    def _packet(self, text: str) -> None:
        self.texts.append(text)
        super()._packet(text)  # answers pings

    def wait_for(self, check, timeout: float = 10.0):
        """The first text frame `check` accepts, or None."""
        end = time.monotonic() + timeout
        seen = 0
        while True:
            for text in self.texts[seen:]:
                if check(text):
                    return text
            seen = len(self.texts)
            if self.closed or time.monotonic() > end:
                return None
            self.poll(min(0.2, end - time.monotonic()))

    def wait_closed(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            self.poll(min(0.2, end - time.monotonic()))
        return self.closed

    def upgrade(self) -> None:
        """The probe and the UPGRADE packet."""
        self.send("2probe")
        assert self.wait_for(lambda t: t == "3probe") is not None, self.texts
        self.send("5")



def polling_session(web) -> str:
    """An Engine.IO polling session connected to Socket.IO's `/`: its sid."""
    sid = handshake(web)
    req = urllib.request.Request(f"{web.url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                                 data=b"40{}", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.read() == b"OK"
    return sid


def acked(ws: Upgrade, n: int) -> bool:
    """Ask for the chat (`join`, ack id `n`) on `ws`: whether its ack came back on it."""
    ws.send(f"42{n}" + json.dumps(["join", {}]))
    return ws.wait_for(lambda t: t.startswith(f"43{n}")) is not None


def test_a_second_upgrade_during_the_first_gets_nothing(worker):
    sid = polling_session(worker)
    first = Upgrade(worker, sid)
    second = Upgrade(worker, sid)  # while the first waits for its probe
    try:
        first.upgrade()
        assert first.wait_for(lambda t: t.startswith("42") and '"hello"' in t) is not None
        assert acked(first, 1)  # written to the first, the session's only WebSocket
        assert second.wait_closed()
        assert second.texts == []  # nothing but its close
        assert acked(first, 2)
        assert not first.closed
    finally:
        first.close()
        second.close()


def test_the_second_upgrade_cannot_take_the_session_from_the_first(worker):
    """The second does the whole probe too: it is closed, and the first keeps the session."""
    sid = polling_session(worker)
    first = Upgrade(worker, sid)
    second = Upgrade(worker, sid)
    try:
        second.send("2probe")
        first.upgrade()
        second.send("5")
        assert acked(first, 1)
        assert second.wait_closed()
        assert second.texts == []  # nothing but its close
        assert acked(first, 2)
    finally:
        first.close()
        second.close()


def test_an_upgrade_after_the_first_is_closed_with_nothing(worker):
    sid = polling_session(worker)
    first = Upgrade(worker, sid)
    try:
        first.upgrade()
        assert acked(first, 1)
        second = Upgrade(worker, sid)  # Engine.IO refuses it (already upgraded)
        try:
            assert second.wait_closed()
            assert second.texts == []  # nothing but its close
        finally:
            second.close()
        assert acked(first, 2)
        assert not first.closed
    finally:
        first.close()


def test_a_refused_second_upgrade_leaves_direct_writes_to_the_first(worker):
    """The first upgraded and idle (its packets are written by the emitting greenlet); a second
    upgrade comes and goes: the first still gets its acks, at once."""
    sid = polling_session(worker)
    first = Upgrade(worker, sid)
    try:
        first.upgrade()
        assert acked(first, 1)
        for _ in range(3):
            second = Upgrade(worker, sid)
            second.close()
        assert acked(first, 2)
        assert acked(first, 3)
    finally:
        first.close()

