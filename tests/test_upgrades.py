"""Two WebSocket upgrades of one Engine.IO session (web/direct.py `_websocket_handler`).

python-engineio refuses an upgrade of a session already upgraded (a 400 that gevent-websocket,
having sent its 101 already, turns into a closed WebSocket), but not one that arrives while
another is still in its probe: both handlers ran, and the session's `ws` (where packets are
written directly) was the last one's, so a client's acks and events went to the WebSocket it
had not upgraded. Raw clients against a real worker: the first upgrade keeps everything, the
second gets nothing but its close.
"""
from __future__ import annotations

import base64
import json
import os
import select
import struct
import time
import urllib.request

import pytest
from procs import one_worker
from test_guard import connect, frame_header, handshake


@pytest.fixture(scope="module")
def worker():
    with one_worker("upgrades") as web:
        yield web


class Upgrade:
    """A raw WebSocket upgrade of the polling session `sid`: sends text frames, reads frames
    without blocking longer than asked."""

    def __init__(self, web, sid: str):
        self.sock = connect(web)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            assert chunk, f"closed during the handshake; got {buf!r}"
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 101"), buf
        self.buf = buf.split(b"\r\n\r\n", 1)[1]
        self.texts: list[str] = []
        self.closed = False

    def send(self, text: str) -> None:
        """One text frame; nothing once the server has closed (a refused upgrade)."""
        try:
            self.sock.sendall(frame_header(len(text.encode())) + text.encode())
        except OSError:
            self.closed = True

    def _parse(self) -> None:
        while len(self.buf) >= 2:
            opcode, length, at = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if length == 126:
                if len(self.buf) < 4:
                    return
                length, at = struct.unpack("!H", self.buf[2:4])[0], 4
            elif length == 127:
                if len(self.buf) < 10:
                    return
                length, at = struct.unpack("!Q", self.buf[2:10])[0], 10
            if len(self.buf) < at + length:
                return
            payload, self.buf = self.buf[at:at + length], self.buf[at + length:]
            if opcode == 8:
                self.closed = True
                return
            if opcode == 1:
                self.texts.append(payload.decode())

    def read(self, timeout: float) -> None:
        """Read what arrives within `timeout`, or until the server closes."""
        end = time.monotonic() + timeout
        while not self.closed:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.buf += chunk
            self._parse()

    def wait_for(self, check, timeout: float = 10.0):
        """The first text frame `check` accepts (answering pings meanwhile), or None."""
        end = time.monotonic() + timeout
        seen = 0
        while True:
            for text in self.texts[seen:]:
                if text == "2":
                    self.send("3")
                if check(text):
                    return text
            seen = len(self.texts)
            if self.closed or time.monotonic() > end:
                return None
            self.read(min(0.2, end - time.monotonic()))

    def wait_closed(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            self.read(min(0.2, end - time.monotonic()))
        return self.closed

    def upgrade(self) -> None:
        """The probe and the UPGRADE packet."""
        self.send("2probe")
        assert self.wait_for(lambda t: t == "3probe") is not None, self.texts
        self.send("5")

    def close(self) -> None:
        self.sock.close()


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

