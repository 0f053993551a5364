"""Transport-level attacks on one real web worker (web/guard.py), each beside a normal pair.

One client on loopback sends what the issue measured (a 20 MiB WebSocket frame, oversized
long-polling POSTs, a huge or chunked body to an unauthenticated route, half-sent headers from
one address, malformed requests and frames) and the worker must refuse it cheaply: from the
frame or request header, with 413/1009 and a closed connection, within HEADER_TIMEOUT, one
throttled log line instead of tracebacks. A normal pair on the same worker keeps chatting.
Figures (bytes sent before the cut, memory) are printed, not asserted.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import signal
import socket
import struct
import time
import urllib.request

import psutil
import pytest
from geventwebsocket.websocket import Header
from peer import Peer, close_all, exchange, pair
from procs import RedisServer, WebWorker, base_env, one_worker, wait_until

from web.guard import GuardedWebSocket, unmask

MAX_FRAME = 16 * 1024  # MAX_FRAME_BYTES, set explicitly below
MAX_BODY = 64 * 1024  # MAX_BODY_BYTES
CAP = 12  # MAX_CONNS_PER_ADDR for this worker
HEADER_TIMEOUT = 1.0
ATTACKER = "127.0.0.2"  # another loopback address: its own per-address count
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def worker():
    with one_worker("guard", MAX_FRAME_BYTES=MAX_FRAME, MAX_BODY_BYTES=MAX_BODY,
                    MAX_CONNS_PER_ADDR=CAP, HEADER_TIMEOUT=HEADER_TIMEOUT) as web:
        yield web


@pytest.fixture(scope="module")
async def chatting(worker):
    """A normal pair on the attacked worker, connected before the attacks and kept through
    them (their WebSockets outlive HEADER_TIMEOUT many times over)."""
    a, b = Peer(worker.url, "alice"), Peer(worker.url, "bob")
    await asyncio.gather(a.connect(), b.connect())
    await pair(a, b)
    yield a, b
    await close_all([a, b])


def gunicorn_worker(web: WebWorker) -> psutil.Process:
    return psutil.Process(web.p.pid).children()[0]


def rss_mib(web: WebWorker) -> float:
    return gunicorn_worker(web).memory_info().rss / MIB


# ------------------------------------------------------------------------------ raw clients


def connect(web: WebWorker, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", web.port), timeout=timeout,
                                 source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP response: (status, headers in lower case, body by Content-Length)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response; got {buf!r}")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    n = int(headers.get("content-length", 0))
    while len(body) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def closed_by_server(s: socket.socket) -> bool:
    """True once the server has closed (EOF or reset); waits up to the socket's timeout."""
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def handshake(web: WebWorker) -> str:
    """A new Engine.IO long-polling session: its sid."""
    with urllib.request.urlopen(f"{web.url}/socket.io/?EIO=4&transport=polling", timeout=10) as r:
        body = r.read().decode()
    assert body.startswith("0"), body
    return json.loads(body[1:])["sid"]


def poll_status(web: WebWorker, sid: str) -> int:
    """The status of a polling GET on `sid` (400 once the session is gone)."""
    s = connect(web)
    with s:
        s.sendall(f"GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
                  f"Host: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return read_response(s)[0]


def ws_upgrade(s: socket.socket, query: str = "") -> bytes:
    """Send a WebSocket upgrade of /socket.io/?EIO=4&transport=websocket`query` on `s`, check
    the 101; the bytes that came after its headers."""
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /socket.io/?EIO=4&transport=websocket{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
              f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed during the WebSocket handshake; got {buf!r}")
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 101"), buf
    return buf.split(b"\r\n\r\n", 1)[1]


def ws_open(web: WebWorker, source: str = "127.0.0.1") -> socket.socket:
    """A raw WebSocket to Engine.IO, past the handshake and the open packet."""
    s = connect(web, source)
    opcode, payload = read_frame(s, ws_upgrade(s))
    assert opcode == 1 and payload.startswith(b"0{"), payload
    return s


def split_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole (unmasked, server-sent) frames at the start of `buf` as (opcode, payload), and
    what is left of `buf` after them."""
    frames = []
    while len(buf) >= 2:
        opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                break
            length, at = struct.unpack("!H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                break
            length, at = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < at + length:
            break
        frames.append((opcode, buf[at:at + length]))
        buf = buf[at + length:]
    return frames, buf


def read_frame(s: socket.socket, buf: bytes = b"") -> tuple[int, bytes]:
    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk

    need(2)
    opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
    at = 2
    if length == 126:
        need(4)
        length, at = struct.unpack("!H", buf[2:4])[0], 4
    elif length == 127:
        need(10)
        length, at = struct.unpack("!Q", buf[2:10])[0], 10
    need(at + length)
    return opcode, buf[at:at + length]


def frame_header(length: int, opcode: int = 1, fin: bool = True, flags: int = 0) -> bytes:
    """A masked client frame header (mask all zeros, so the payload is sent as is)."""
    first = (0x80 if fin else 0) | flags | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + b"\0\0\0\0"


def send_until_cut(s: socket.socket, total: int, chunk: int = 64 * 1024) -> tuple[int, bool]:
    """Send `total` bytes of payload until the server answers or cuts: (bytes sent, cut?)."""
    sent = 0
    piece = b"a" * chunk
    try:
        while sent < total:
            if select.select([s], [], [], 0)[0]:  # the server spoke (a close frame) or closed
                return sent, True
            n = s.send(piece[:min(chunk, total - sent)])
            sent += n
    except (ConnectionResetError, BrokenPipeError):
        return sent, True
    return sent, False


def close_code(s: socket.socket) -> int | None:
    """The code of the close frame the server sent, None if it reset the connection instead."""
    try:
        opcode, payload = read_frame(s)
    except (ConnectionError, OSError):
        return None
    assert opcode == 8, (opcode, payload[:50])
    return struct.unpack("!H", payload[:2])[0]


# ------------------------------------------------------------------------------ the attacks


async def test_a_huge_websocket_frame_is_cut_from_its_header(worker, chatting):
    """20 MiB announced in one frame header: refused with 1009 before the payload is read."""
    a, b = chatting
    before = rss_mib(worker)

    def attack():
        s = ws_open(worker, ATTACKER)
        with s:
            t0 = time.perf_counter()
            s.sendall(frame_header(20 * MIB))
            sent, cut = send_until_cut(s, 20 * MIB)
            took = time.perf_counter() - t0
            return sent, cut, took, close_code(s)

    sent, cut, took, code = await asyncio.to_thread(attack)
    print(f"\n20 MiB frame: cut after {sent / MIB:.2f} MiB sent, {took * 1000:.0f} ms, "
          f"close code {code}; worker RSS {before:.0f} -> {rss_mib(worker):.0f} MiB")
    assert cut and sent < 10 * MIB, f"{sent} bytes of a 20 MiB frame went in before a refusal"
    assert code in (1009, None)
    await exchange(a, b, "after-huge-frame")


async def test_a_frame_over_the_limit_with_a_16_bit_length_is_refused_from_its_header(
        worker, chatting):
    """The size a chat packet's frame announces (two length bytes), past MAX_FRAME_BYTES: the
    worker answers 1009 (or cuts) on the header alone, without waiting for a payload that
    never comes."""
    a, b = chatting

    def attack():
        s = ws_open(worker, ATTACKER)
        with s:
            s.settimeout(5)
            s.sendall(frame_header(MAX_FRAME + 1000))
            try:
                opcode, payload = read_frame(s)
            except TimeoutError:
                return "no answer: the worker waited for the payload"
            except (ConnectionError, OSError):
                return None  # cut (reset) instead of a close frame
            return struct.unpack("!H", payload[:2])[0] if opcode == 8 else (opcode, payload)

    assert MAX_FRAME + 1000 < 65536
    assert await asyncio.to_thread(attack) in (1009, None)
    await exchange(a, b, "after-16-bit-frame")


async def test_a_fragmented_message_over_the_limit_is_refused_with_1009(worker, chatting):
    a, b = chatting

    def attack():
        s = ws_open(worker, ATTACKER)
        with s:
            part = MAX_FRAME // 2 + 1
            s.sendall(frame_header(part, opcode=1, fin=False) + b"4" + b"x" * (part - 1))
            s.sendall(frame_header(part, opcode=0, fin=False) + b"x" * part)
            return close_code(s)

    assert await asyncio.to_thread(attack) in (1009, None)
    await exchange(a, b, "after-fragments")


def masked_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """A client frame with a random mask, as browsers send them."""
    mask = os.urandom(4)
    head = frame_header(len(payload), opcode, fin)[:-4]
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("fragments, valid", [
    ([b"40/\xc3\xa9,"], True),  # "40/é," in one frame
    ([b"40/\xc3", b"\xa9,"], True),  # é split between two fragments: still one valid message
    ([b"40/\xff,"], False),
    ([b"40/\xc3", b"(,"], False),  # a sequence broken across the fragments
    ([b"40/", b"\xed\xa0\x80,"], False),  # a UTF-16 surrogate, which UTF-8 may not carry
])
async def test_a_text_message_is_checked_as_utf8_once_it_is_whole(worker, chatting, fragments,
                                                                  valid):
    """Masked text frames: a valid message gets Socket.IO's answer (here CONNECT_ERROR for an
    unknown namespace), invalid UTF-8 closes the WebSocket with 1007, wherever the fragments cut
    a character."""
    a, b = chatting

    def attack():
        s = ws_open(worker, ATTACKER)
        with s:
            for i, part in enumerate(fragments):
                s.sendall(masked_frame(part, opcode=1 if i == 0 else 0,
                                       fin=i == len(fragments) - 1))
            if valid:
                return read_frame(s)
            return close_code(s)

    got = await asyncio.to_thread(attack)
    if valid:
        opcode, payload = got
        assert opcode == 1 and payload.startswith(b"44"), payload
    else:
        assert got == 1007
    await exchange(a, b, "after-utf8-" + os.urandom(4).hex())


def test_text_frames_are_framed_as_gevent_websocket_frames_them():
    """GuardedWebSocket.send against gevent-websocket's own header and payload, for every
    length kind (7-bit, 16-bit, 64-bit) and non-ASCII text."""
    from geventwebsocket.websocket import WebSocket

    class Sink:
        def __init__(self):
            self.frames = []

    for text in ["", "4", "x" * 125, "é" * 63, "y" * 126, "z" * 65535, "w" * 65536, "你" * 30000]:
        ours, theirs = Sink(), Sink()
        for sink, cls in ((ours, GuardedWebSocket), (theirs, WebSocket)):
            ws = object.__new__(cls)
            ws.closed, ws.raw_write = False, sink.frames.append
            cls.send(ws, text)
            ws.closed = True  # else its __del__ writes a close frame into the sink
        assert ours.frames == [bytes(f) for f in theirs.frames], len(text)


def test_unmask_is_the_protocols_xor():
    """web.guard.unmask against gevent-websocket's own byte loop, every length up to 3 masks'
    worth of tail and a large frame."""
    for n in [*range(0, 40), 125, 126, 4097, 70000]:
        payload, mask = os.urandom(n), os.urandom(4)
        header = Header(length=n)
        header.mask = mask
        expected = bytes(header.unmask_payload(payload))
        assert unmask(payload, mask) == expected, n


async def test_oversized_polling_posts_get_413_close_and_end_their_session(worker, chatting):
    """Each POST over MAX_FRAME_BYTES to a sid: answered 413 + Connection: close, its socket
    closed by the server, and that Engine.IO session gone. Before: never answered, never
    closed (300 POSTs left 300 descriptors open)."""
    a, b = chatting
    fds_before = gunicorn_worker(worker).num_fds()

    def attack(n: int = 40):
        socks = []
        for _ in range(n):
            sid = handshake(worker)
            s = connect(worker, ATTACKER, timeout=10)
            body = b"4" + b"x" * (MAX_FRAME + 100)
            s.sendall(f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
                      f"Host: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status, headers, _ = read_response(s)
            assert status == 413 and headers.get("connection") == "close", (status, headers)
            socks.append((s, sid))
        for s, sid in socks:
            assert closed_by_server(s), "the server kept an oversized POST's connection open"
            s.close()
            assert poll_status(worker, sid) == 400, "the session of an oversized POST lives on"
        return n

    n = await asyncio.to_thread(attack)
    fds_after = gunicorn_worker(worker).num_fds()
    print(f"\n{n} oversized polling POSTs: worker descriptors {fds_before} -> {fds_after}")
    await exchange(a, b, "after-polling-posts")


async def test_a_polling_post_of_an_unknown_packet_type_is_answered(worker):
    """Engine.IO disconnects such a session from inside the POST and used to wait there for
    a poll that never came: the POST was never answered."""
    def post(raw: bytes):
        sid = handshake(worker)
        s = connect(worker, ATTACKER)
        with s:
            s.sendall(f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
                      f"Host: 127.0.0.1\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
            status = read_response(s)[0]
        return status, poll_status(worker, sid)

    for raw in (b"9", b"6", b"24", b"7abc"):
        assert await asyncio.to_thread(post, raw) == (400, 400), raw


async def test_a_chunked_body_without_length_is_bounded_too(worker):
    def attack(path: str, size: int):
        s = connect(worker, ATTACKER)
        with s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Content-Type: application/x-www-form-urlencoded\r\n"
                      f"Transfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"x" * 4096
            try:
                for _ in range(size // len(chunk)):
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                s.sendall(b"0\r\n\r\n")
            except (ConnectionResetError, BrokenPipeError):
                pass
            status, headers, _ = read_response(s)
            return status, headers.get("connection")

    sid = handshake(worker)
    assert await asyncio.to_thread(attack, "/admin/login", 2 * MAX_BODY) == (413, "close")
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert await asyncio.to_thread(attack, path, 2 * MAX_FRAME) == (413, "close")
    assert await asyncio.to_thread(poll_status, worker, sid) == 400


async def test_a_300_mib_post_to_the_admin_login_is_refused_unread(worker, chatting):
    """Unauthenticated, before: the worker grew 176 -> 776 MiB. Now 413 from the header."""
    a, b = chatting
    before = rss_mib(worker)

    def attack():
        s = connect(worker, ATTACKER)
        with s:
            s.sendall(b"POST /admin/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/x-www-form-urlencoded\r\n"
                      b"Content-Length: %d\r\n\r\n" % (300 * MIB))
            sent, cut = send_until_cut(s, 300 * MIB)
            status, headers, _ = read_response(s)
            return sent, status, headers.get("connection")

    sent, status, connection = await asyncio.to_thread(attack)
    print(f"\n300 MiB POST to /admin/login: {status} after {sent / MIB:.2f} MiB sent; "
          f"worker RSS {before:.0f} -> {rss_mib(worker):.0f} MiB")
    assert (status, connection) == (413, "close")
    assert sent < 100 * MIB
    await exchange(a, b, "after-big-post")


async def test_half_sent_headers_are_capped_per_address_and_timed_out(worker, chatting):
    """Slowloris from one address: past MAX_CONNS_PER_ADDR a connection is closed at once;
    each half-sent request is closed after HEADER_TIMEOUT, though it keeps sending a byte now
    and then; other addresses are served all along."""
    a, b = chatting

    def attack():
        socks = []
        for _ in range(CAP + 8):
            s = connect(worker, ATTACKER, timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(s)
        # the CAP first ones are held, the rest closed at once, before any timeout
        extra = socks[CAP:]
        for s in extra:
            assert closed_by_server(s), "a connection past the per-address cap stayed open"
        with urllib.request.urlopen(worker.url + "/healthz", timeout=10) as r:
            assert r.status == 200
        t0 = time.perf_counter()
        # the held ones trickle header bytes; the deadline is total, not per read
        pending = list(socks[:CAP])
        closed_at = []
        while pending:
            readable, _, _ = select.select(pending, [], [], 0.2)
            for s in readable:
                try:
                    s.recv(4096)
                except OSError:
                    pass
                closed_at.append(time.perf_counter() - t0)
                pending.remove(s)
            for s in pending:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
            assert time.perf_counter() - t0 < 30, f"{len(pending)} half-sent requests still open"
        for s in socks:
            s.close()
        return max(closed_at)

    took = await asyncio.to_thread(attack)
    print(f"\n{CAP + 8} half-sent requests from one address: {8} closed at once, the rest "
          f"after {took:.2f} s (HEADER_TIMEOUT {HEADER_TIMEOUT} s)")
    # the pair's WebSockets, open since before the attack, outlived HEADER_TIMEOUT
    await exchange(a, b, "after-slowloris")
    # and once the attacker's connections are gone, the address may connect again
    s = await asyncio.to_thread(connect, worker, ATTACKER)
    with s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert (await asyncio.to_thread(read_response, s))[0] == 200


def test_a_request_whose_headers_end_with_the_connection_is_not_served(worker):
    """A half-sent request, then the client goes (slowloris dropping its connections): pywsgi's
    parser took end of file for the blank line and served the request, rendering the page for
    each dropped connection. Now nothing is answered, and the worker logs nothing for it."""
    seen = len(worker.output())
    cpu0 = sum(gunicorn_worker(worker).cpu_times()[:2])
    got = []
    for _ in range(50):
        s = connect(worker, ATTACKER)
        with s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            got.append(data)
    print(f"\n50 requests cut inside their headers: worker CPU "
          f"{sum(gunicorn_worker(worker).cpu_times()[:2]) - cpu0:.3f} s")
    assert not [g for g in got if g], got[0][:200]
    log = worker.output()[seen:]
    assert "Traceback" not in log and "bad HTTP request" not in log, log[-2000:]


MALFORMED_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\nConnection: close\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade, close\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade, close\r\nSec-WebSocket-Version: 99\r\n\r\n",
    b"GET /socket.io/?EIO=9&transport=carrier-pigeon HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"POST /socket.io/?EIO=4&transport=polling&sid=nope HTTP/1.1\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n40",
]
MALFORMED_FRAMES = [
    frame_header(1, flags=0x40) + b"4",  # reserved bit
    frame_header(1, opcode=0x3) + b"4",  # unknown opcode
    frame_header(2) + b"\xff\xfe",  # invalid UTF-8 in a text frame
    frame_header(1, opcode=0) + b"4",  # continuation without a start
    frame_header(200, opcode=0x9) + b"p" * 200,  # a ping over 125 bytes
    frame_header(3, opcode=0x8) + b"\x03\xe8\xff",  # close with invalid UTF-8 reason
]


async def test_malformed_requests_and_frames_log_no_traceback(worker, chatting):
    """A few hundred malformed requests and frames: no traceback in the worker's log and a
    handful of WARNING lines (one per kind per 10 s), not one per attempt."""
    a, b = chatting
    seen = len(worker.output())

    def attack(rounds: int = 25):
        sent = 0
        for _ in range(rounds):
            for raw in MALFORMED_HTTP:
                s = connect(worker, ATTACKER)
                with s:
                    s.sendall(raw)
                    try:  # an answer or a close; some answers keep the connection alive
                        s.recv(65536)
                    except ConnectionResetError:
                        pass
                sent += 1
            for raw in MALFORMED_FRAMES:
                s = ws_open(worker, ATTACKER)
                with s:
                    s.sendall(raw)
                    closed_by_server(s)
                sent += 1
        return sent

    sent = await asyncio.to_thread(attack)
    await exchange(a, b, "after-malformed")
    log = worker.output()[seen:]
    warnings = [line for line in log.splitlines() if " WARNING " in line or "ERROR" in line]
    print(f"\n{sent} malformed requests/frames: {len(warnings)} WARNING/ERROR lines, "
          f"{log.count('Traceback')} tracebacks")
    assert "Traceback" not in log, log[-3000:]
    assert len(warnings) <= 40, "\n".join(warnings[:60])


def test_sigterm_stops_accepting_and_drains():
    """SIGTERM (a rolling deploy, or `make run` stopped): the app's drain runs, the listener is
    closed at once (a request after the signal is not served), the worker exits in time."""
    redis = RedisServer()
    web = WebWorker(base_env(redis.url), "guard-drain")
    try:
        web.wait_ready()
        web.signal(signal.SIGTERM)  # gunicorn's master and its worker, as honcho or a deploy does
        wait_until(lambda: "SIGTERM: draining" in web.output(), 15, "the drain to start")
        got = b""
        try:
            s = connect(web, timeout=15)
        except ConnectionRefusedError:
            s = None
        if s is not None:
            with s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                web.p.wait(15)
                try:
                    got = s.recv(4096)
                except OSError:
                    pass
        web.p.wait(15)
        assert not got.startswith(b"HTTP/"), got
        out = web.output()
        assert "drain done" in out and "Traceback" not in out, out[-3000:]
    finally:
        web.stop()
        redis.stop()


async def test_a_draining_worker_refuses_new_sessions_even_on_a_kept_alive_connection():
    """nginx keeps connections to a worker alive: a handshake that arrives on one after the
    SIGTERM must be refused (503, which nginx passes on to another worker), not given a session
    on a worker about to close it."""
    redis = RedisServer()
    web = WebWorker(base_env(redis.url), "guard-drain-503")
    stay = Peer(web.url, "ignores draining")
    try:
        web.wait_ready()
        await stay.connect()  # keeps the drain waiting for DRAIN_TIMEOUT
        s = connect(web, timeout=10)
        with s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(s)[0] == 200  # the connection is open and kept alive
            web.signal(signal.SIGTERM)
            await stay.next("draining", timeout=10)
            s.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"
                      b"Host: 127.0.0.1\r\n\r\n")
            status, headers, _ = read_response(s)
        assert status == 503 and headers.get("connection") == "close"
        web.p.wait(15)
        assert "Traceback" not in web.output()
    finally:
        await stay.close()
        web.stop()
        redis.stop()


def test_new_sessions_from_one_address_are_limited_and_others_are_not():
    """SESSION_RATE / SESSION_BURST on a worker reached directly: one address opening sessions
    as fast as it can (a flood that reconnects, frames refused one after another) gets 429 past
    the burst, and each refused one costs no session; another address is served as before."""
    redis = RedisServer()
    web = WebWorker(base_env(redis.url, SESSION_RATE="0.5", SESSION_BURST="5"), "guard-sessions")
    try:
        web.wait_ready()
        statuses = []
        for _ in range(8):
            with connect(web, ATTACKER) as s:
                s.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"
                          b"Host: 127.0.0.1\r\n\r\n")
                status, headers, _ = read_response(s)
                statuses.append((status, headers.get("connection")))
        assert [status for status, _ in statuses[:5]] == [200] * 5, statuses
        assert statuses[5:] == [(429, "close")] * 3, statuses
        assert handshake(web)  # 127.0.0.1 is another address: its own budget
        assert "Traceback" not in web.output()
    finally:
        web.stop()
        redis.stop()


# -- the WebSocket's frame writer (web/guard.py FrameWriter) -------------------------------------
@pytest.mark.parametrize("size", [200, 4 * 1024 * 1024])
def test_the_frame_writer_delivers_small_and_larger_than_buffer_frames_whole(size):
    import gevent
    import gevent.socket

    from web.guard import FrameWriter

    a, b = gevent.socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # one send cannot take 4 MiB
        b.settimeout(10)  # a writer that stopped short fails the test instead of hanging it
        data = os.urandom(size)
        writer = gevent.spawn(FrameWriter(a), data)
        got = bytearray()
        while len(got) < size:
            chunk = b.recv(65536)
            assert chunk, "the writer's side closed early"
            got += chunk
        writer.get(timeout=10)
        assert bytes(got) == data
    finally:
        a.close()
        b.close()
