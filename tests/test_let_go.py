"""What a worker lets go of when a WebSocket's socket has no timeout (web/direct.py `close`,
`_let_go`, `_websocket_handler`): the connection of a session that ended, a stalled upgrade,
and nothing more than one wait per session however often its client sends CLOSE.

Raw clients against a real worker that pings every second and waits a second for the answer.
"""
from __future__ import annotations

import threading
import urllib.error
import urllib.request

import psutil
import pytest
from attacks import RawWS
from procs import one_worker
from test_guard import frame_header
from test_upgrades import Upgrade, acked, polling_session

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def worker():
    with one_worker("letgo", PING_INTERVAL=1, PING_TIMEOUT=1) as web:
        yield web


def peak_rss(web) -> int:
    """The worker's peak resident size so far (VmHWM), in bytes: gunicorn's worker process,
    the child of the one started."""
    pid = psutil.Process(web.p.pid).children()[0].pid
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def served(web) -> None:
    """One request answered: the greenlets started before it have run (the event loop runs
    what was spawned before it polls for the request)."""
    with urllib.request.urlopen(web.url + "/readyz", timeout=10) as r:
        assert r.status == 200


def gone(sock, timeout: float = 10) -> bool:
    """Whether the server closes its end within `timeout` (what it sends is read and dropped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: gone as well
    return True


def test_closes_after_the_first_cost_nothing(worker):
    """Engine.IO's reader calls `close` for every CLOSE packet it still finds after the first;
    each call used to start a greenlet kept for a ping timeout: 50,000 CLOSE frames (350 KB)
    grew the worker by over 400 MB."""
    ws = RawWS(worker)
    try:
        assert ws.connect() is not None
        before = peak_rss(worker)
        ws.send_raw((frame_header(1) + b"1") * 50_000)
        ws.drain(10)
        assert ws.closed, "the server did not close the WebSocket after its CLOSE packet"
        assert gone(ws.sock), "the server kept the TCP connection"  # its reader has ended
        served(worker)
        grown = peak_rss(worker) - before
        assert grown < 40 * MIB, f"the worker grew by {grown / MIB:.0f} MiB"
    finally:
        ws.close()


def test_a_silent_client_loses_its_connection_after_the_ping_timeout(worker):
    """A client that neither reads nor answers: its session ends at the ping timeout, and
    a ping timeout later its TCP connection is closed by the server (nothing else ends the
    reader's wait on a socket without a timeout)."""
    ws = RawWS(worker)
    try:
        assert ws.connect() is not None
        ws._packet = lambda text: None  # no pong from now on
        ws.drain(15)
        assert ws.closed, "the server kept the silent client's connection"
    finally:
        ws.close()


def test_an_upgrade_that_never_finishes_is_closed(worker):
    """A polling session kept alive by pongs sent blindly, whose WebSocket upgrade never sends
    its probe: the upgrade's connection is closed after a ping interval and timeout (before,
    its socket's timeout did that; without one it waited for as long as the session lived)."""
    sid = polling_session(worker)
    stop = threading.Event()

    def pong_blindly():
        url = f"{worker.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
        while not stop.wait(0.3):
            req = urllib.request.Request(url, data=b"3", headers={"Content-Type": "text/plain"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    assert r.read() == b"OK"
            except urllib.error.HTTPError:
                return  # the session is gone or upgraded (the test's end): no more pongs here

    alive = threading.Thread(target=pong_blindly, daemon=True)
    alive.start()
    stalled = Upgrade(worker, sid)
    try:
        assert stalled.wait_closed(15), "the stalled upgrade was kept"
        assert alive.is_alive(), "the session itself ended: the test proves nothing"
        # and the session goes on: its polls get its packets (the pings sent meanwhile), not
        # the NOOP of a session still upgrading, and it can upgrade and chat on its WebSocket
        url = f"{worker.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
        with urllib.request.urlopen(url, timeout=10) as r:
            polled = r.read().decode().split("\x1e")
        assert "2" in polled, polled
        again = Upgrade(worker, sid)
        try:
            again.upgrade()
            assert acked(again, 1), again.texts
        finally:
            again.close()
    finally:
        stop.set()
        alive.join(10)
        stalled.close()
