"""Transport-level defences of a web worker: what one hostile client can make it read, hold or do
before any chat code runs.

- `BodyLimit`: one WSGI middleware in front of everything (Flask and Engine.IO). A body over
  MAX_BODY_BYTES (MAX_FRAME_BYTES under /socket.io/) is answered 413 with `Connection: close`
  without being read; an oversized long-polling POST also ends its Engine.IO session. New
  Engine.IO sessions: 503 while the worker drains, 429 past SESSION_RATE/SESSION_BURST from one
  address (`SessionRate`).
- `GuardedWebSocket`: refuses a WebSocket frame from its header (close 1009) instead of reading
  the whole payload first.
- `GuardedHandler` / `GuardedServer`: a header-read deadline (HEADER_TIMEOUT) and a cap of open
  connections per client address (MAX_CONNS_PER_ADDR), for `make run`, which has no nginx.
- `GuardedWorker`: gunicorn's gevent-websocket worker with the above, and a drain on SIGTERM.

Checked against gevent-websocket 0.10.1 (its last release, 2017), gevent 26.9 and gunicorn 27.

One module over ~400 lines on purpose: each defence subclasses or wraps one class of gevent,
gevent-websocket or gunicorn, and they are only safe together (the handler's deadline, the
frame check and the drain rely on each other's state); reading them side by side against the
library versions above is what keeps them correct.
"""
from __future__ import annotations

import base64
import io
import logging
import re
import socket
import struct
import time
from urllib.parse import parse_qs

import gevent
from gevent.lock import Semaphore
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import MSG_SOCKET_DEAD, Header, WebSocket
from gunicorn.workers.ggevent import PyWSGIServer

from common import config
from common.limits import ROUTABLE_WORKER_ID

from .drain import close_session
from .ratelimit import KeyedBuckets, TokenBucket

log = logging.getLogger("web.guard")  # refusals: throttled by common/logs.py
info = logging.getLogger("web")

CLOSE_TOO_BIG = 1009  # RFC 6455: "message too big"
CLOSE_POLICY = 1008  # RFC 6455: "policy violation" (here: frames past the frame budget)
CONTROL_FRAME_MAX = 125  # RFC 6455 5.5: control frames carry at most 125 bytes
REFUSED = "chat.guard.refused"  # environ flag: the handler must not read the body to discard it
# After the drain, the connections still open get this long to finish before gunicorn's own
# graceful stop (and then its master) cuts them.
GRACE_AFTER_DRAIN = 2.0

_TOO_LARGE_BODY = b"Payload Too Large\n"
_DRAINING_BODY = b"This worker is restarting; connect again.\n"
_SESSIONS_BODY = b"Too many new connections from your address; wait a moment.\n"
_FULL_BODY = b"This server is full; connect again in a moment.\n"
FULL_LOG_EVERY = 10.0  # s: one log line per this many seconds of refusals while full


def _refuse(start_response, status: str, body: bytes):
    start_response(status, [
        ("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", "1"),
        ("Content-Length", str(len(body))), ("Connection", "close")])
    return [body]


class SessionRate(KeyedBuckets):
    """New Engine.IO sessions per client address."""


def settings_of(app) -> config.Settings:
    """The worker's Settings, from the app's extensions (one load per process)."""
    chat = getattr(app, "extensions", {}).get("chat") or {}
    return chat.get("settings") or config.load()


# ------------------------------------------------------------------------------ HTTP bodies


class BodyLimit:
    """Refuse oversized request bodies before anyone reads them, for every route.

    A declared Content-Length over the limit is refused from the header. A chunked body (no
    length) is read up to the limit + 1 byte and refused past it, else handed on from memory,
    so no route can be made to hold more than the limit. Flask's own MAX_CONTENT_LENGTH would
    not cover Engine.IO, which reads `wsgi.input` itself.
    """

    def __init__(self, app, settings: config.Settings):
        self.app = app
        self.body_limit = settings.max_body_bytes
        self.socketio_limit = settings.max_frame_bytes
        chat = getattr(app, "extensions", {}).get("chat") or {}
        self.conns = chat.get("conns")
        socketio = chat.get("socketio")
        # Engine.IO's sessions of this worker, connected to the chat or not yet
        self.sessions_open = socketio.server.eio.sockets if socketio is not None else {}
        self.max_sessions = settings.max_connections
        self._full_refused, self._full_logged = 0, 0.0
        # behind a proxy every request comes from it: nginx limits per client address itself
        self.sessions = (SessionRate(settings.session_rate, settings.session_burst)
                         if settings.session_rate and not settings.trusted_proxies else None)

    @property
    def extensions(self):
        """The app's extensions (web/__main__.py reaches `worker.wsgi.extensions["chat"]`)."""
        return self.app.extensions

    def new_session_refusal(self, wsgi_env) -> tuple[str, bytes] | None:
        """(status, reason) when a request that would open an Engine.IO session must not.

        Checked here for polling, and by GuardedHandler before it upgrades a WebSocket (after
        the 101 a refusal could no longer be said, nor passed on to another worker by nginx).
        """
        if not wsgi_env.get("PATH_INFO", "").startswith("/socket.io") \
                or "sid=" in wsgi_env.get("QUERY_STRING", ""):
            return None
        if self.conns is not None and self.conns.draining:
            # A stopping worker takes no new session, even on a connection nginx keeps alive
            # to it: 503, which nginx passes to the next worker (http_503).
            return "503 Service Unavailable", _DRAINING_BODY
        if self.max_sessions and len(self.sessions_open) >= self.max_sessions:
            # Past its capacity a worker would slow down everyone it already serves: the
            # newcomer is refused with the reason, and nginx tries the next worker (http_503).
            self._log_full()
            return "503 Service Unavailable", _FULL_BODY
        if self.sessions is not None and not self.sessions.take(wsgi_env.get("REMOTE_ADDR", "")):
            # Each session is memory until its ping times out: one address may not open them
            # faster than SESSION_RATE (a refused frame or a flood reconnecting).
            log.warning("refused a new session: too many from one address")
            return "429 Too Many Requests", _SESSIONS_BODY
        return None

    def __call__(self, wsgi_env, start_response):
        path = wsgi_env.get("PATH_INFO", "")
        if "wsgi.websocket" not in wsgi_env:  # an upgraded one was checked before the upgrade
            refusal = self.new_session_refusal(wsgi_env)
            if refusal is not None:
                return _refuse(start_response, *refusal)
        limit = self.socketio_limit if path.startswith("/socket.io") else self.body_limit
        declared = wsgi_env.get("CONTENT_LENGTH")
        if declared:
            try:
                length = int(declared)
            except ValueError:
                length = limit + 1
            if length > limit:
                return self._too_large(wsgi_env, start_response, "declared")
        elif "chunked" in wsgi_env.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = wsgi_env["wsgi.input"].read(limit + 1)
            if len(body) > limit:
                return self._too_large(wsgi_env, start_response, "chunked")
            wsgi_env["wsgi.input"] = io.BytesIO(body)
            wsgi_env["CONTENT_LENGTH"] = str(len(body))
        return self.app(wsgi_env, start_response)

    def _log_full(self) -> None:
        self._full_refused += 1
        now = time.monotonic()
        if now - self._full_logged >= FULL_LOG_EVERY:
            log.warning("full: refused %d new sessions (MAX_CONNECTIONS %d)", self._full_refused,
                        self.max_sessions)
            self._full_refused, self._full_logged = 0, now

    def _too_large(self, wsgi_env, start_response, how: str):
        wsgi_env[REFUSED] = True
        where = "socket.io" if wsgi_env.get("PATH_INFO", "").startswith("/socket.io") else "http"
        log.warning("refused an oversized %s body (%s) on %s", how, wsgi_env.get("REQUEST_METHOD"),
                    where)
        if where == "socket.io":
            self._end_session(wsgi_env)
        start_response("413 Payload Too Large", [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(_TOO_LARGE_BODY))),
            ("Connection", "close"),
        ])
        return [_TOO_LARGE_BODY]

    def _end_session(self, wsgi_env) -> None:
        """An oversized POST to a sid ends that Engine.IO session, as a frame too big does."""
        sid = parse_qs(wsgi_env.get("QUERY_STRING", "")).get("sid", [None])[0]
        socketio = (getattr(self.app, "extensions", {}).get("chat") or {}).get("socketio")
        if not sid or socketio is None:
            return
        eio = socketio.server.eio
        close_session(eio, sid, reason=eio.reason.TRANSPORT_ERROR)


def wrap(app, settings: config.Settings | None = None):
    """The app with every transport guard that is WSGI middleware in front of it."""
    socketio = (getattr(app, "extensions", {}).get("chat") or {}).get("socketio")
    if socketio is not None:
        _disconnect_without_waiting(socketio.server.eio)
    return BodyLimit(app, settings or settings_of(app))


def name_sessions(eio, worker_id: str) -> bool:
    """Start every Engine.IO session id this worker issues with its name, so that nginx sends
    the session's requests here by the sid alone (nginx/nginx.conf.j2, $session_upstream): a
    full worker's polling users are never sent elsewhere, and a newcomer may be let in by any
    worker. False (ids unchanged, nginx falls back to the affinity key) for a name it could not
    route by. The random part stays Engine.IO's own (12 random bytes and a counter)."""
    if not re.fullmatch(ROUTABLE_WORKER_ID, worker_id):
        log.warning("WORKER_ID %r is not a routable name (%s): session ids carry no worker name",
                    worker_id, ROUTABLE_WORKER_ID)
        return False
    issue = eio.generate_id
    eio.generate_id = lambda: f"{worker_id}.{issue()}"
    return True


def _disconnect_without_waiting(eio) -> None:
    """python-engineio 4.15's `Server.disconnect(sid)` closes with wait=True: it blocks until
    the close packet is fetched by a long-polling GET. When a polling POST carries an unknown
    packet type (`9`, `6`, `24`), Engine.IO disconnects that session from inside the POST, and
    the POST then waited forever: never answered, its descriptor never closed. Here the close
    packet is queued for whoever polls next and the caller goes on."""
    original = eio.disconnect

    def disconnect(sid=None):
        if sid is None:
            return original()
        close_session(eio, sid)
        return None

    eio.disconnect = disconnect


# ------------------------------------------------------------------------------ WebSocket frames


class FrameTooBig(Exception):
    """A frame (or a fragmented message so far) is over MAX_FRAME_BYTES; raised from its header.

    Deliberately not geventwebsocket's ProtocolError: `WebSocket.receive` turns that into close
    1002, and the right code is 1009.
    """


class TooManyFrames(Exception):
    """WebSocket frames that are not a whole message (a ping, a pong, a fragment) past the
    connection's budget (PACKET_RATE/s, burst PACKET_BURST). They are handled below Engine.IO,
    where the packet gate cannot see them: 100,000 pings on one connection were each answered
    with a pong, and a message of 1,000,000 empty fragments was read to the end, for free."""


class FrameWriter:
    """A WebSocket's `raw_write`: each frame's bytes onto gevent's socket, whole and in order.

    Two kinds of writer. The connection's writer greenlet (and gevent-websocket's own pong and
    close frames) may wait for the socket: one send, then sendall for what did not fit. Not
    sendall alone (gevent-websocket's way): gevent's sendall asks the kernel for the socket's
    send buffer size (getsockopt) on every call to size its chunks, one more system call per
    frame (2.4 % of a worker's samples at 1000 users), for frames that one send takes whole.

    A greenlet that emits to someone else's connection (web/direct.py) must never wait for
    that reader: with `now` set, a frame gets one non-blocking send, and what the socket did
    not take is kept in `pending`, which the next waiting write sends first (web/direct.py then
    wakes the connection's writer for it). `ready` says whether a frame may be written now:
    nothing pending, and no waiting write halfway through a frame.

    Waiting writes take turns (`turn`): the reader's greenlet writes gevent-websocket's pongs
    and close frames, and one of those coming while the writer waits halfway through a frame
    went into the middle of it, or failed with gevent's "socket already used by another
    greenlet", which ended the connection.
    """

    __slots__ = ("sock", "pending", "now", "busy", "turn")

    def __init__(self, sock):
        self.sock = sock
        self.pending: memoryview | None = None
        self.now = False
        self.busy = False
        self.turn = Semaphore()

    @property
    def ready(self) -> bool:
        return self.pending is None and not self.busy

    def __call__(self, data: bytes) -> None:
        if self.now:
            try:
                sent = self.sock._sock.send(data)  # gevent's non-blocking socket underneath
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self.pending = memoryview(data)[sent:]
            return
        with self.turn:
            self.busy = True
            try:
                if self.pending is not None:
                    rest, self.pending = self.pending, None
                    self.sock.sendall(rest)
                sent = self.sock.send(data)
                if sent < len(data):
                    self.sock.sendall(memoryview(data)[sent:])
            finally:
                self.busy = False


def unmask(payload: bytes, mask: bytes) -> bytes:
    """A client frame's payload XOR its 4-byte mask, as one integer operation: gevent-websocket
    0.10.1 (without the optional `wsaccel`) does it in a Python loop over every byte."""
    n = len(payload)
    key = mask * (n // 4) + mask[:n % 4]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class GuardedWebSocket(WebSocket):
    """gevent-websocket 0.10.1's WebSocket with a size check between a frame's header and its
    payload.

    Why: its `read_frame` reads the whole payload the header announces (`raw_read(length)`)
    before anything can look at it, so one 100 MiB frame held the worker at 100 % CPU for ~17 s
    and its memory grew by the frame; Engine.IO's max_http_buffer_size is only checked after
    that. This class reads the header, refuses from the announced length (and from the running
    total of a fragmented message), and only then reads the payload. The upstream project has
    had no release since 2017, so the fix lives here.

    Installed by GuardedHandler on the object gevent-websocket creates (same slots, so only the
    class changes); the per-message running total lives on the handler. It also unmasks and
    checks UTF-8 in C rather than in 0.10.1's per-byte Python loops (unmask, validate_utf8).
    """

    __slots__ = ()

    def read_frame(self):
        header = Header.decode_header(self.stream)
        handler = self.handler
        limit = handler.server.max_frame_bytes
        if header.opcode & 0x8:  # close, ping, pong
            if header.length > CONTROL_FRAME_MAX:
                raise FrameTooBig(f"control frame of {header.length} bytes")
        else:
            so_far = handler.ws_message_bytes if header.opcode == self.OPCODE_CONTINUATION else 0
            total = so_far + header.length
            if total > limit:
                raise FrameTooBig(f"a message of {total} bytes or more (limit {limit})")
            handler.ws_message_bytes = 0 if header.fin else total
        if header.opcode != self.OPCODE_CLOSE and (
                header.opcode & 0x8 or not header.fin or header.opcode == self.OPCODE_CONTINUATION):
            if handler.ws_frames is None:
                handler.ws_frames = TokenBucket(handler.server.packet_rate,
                                                handler.server.packet_burst)
            if not handler.ws_frames.take():
                raise TooManyFrames("pings, pongs or fragments past the frame budget")
        if header.flags:
            raise ProtocolError("reserved bits set")
        payload = self.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("Unexpected EOF reading frame payload")
        if header.mask:
            payload = unmask(payload, header.mask)
        return header, payload

    def read_message(self):
        """A whole text message in one frame of under 64 KiB (every packet of a chat client)
        straight from the read buffer; anything else the general way (`read_frame`, 0.10.1's
        `read_message`), which has not been touched.

        Why: per frame the general way made a Header object, unpacked two bytes with struct
        and called the buffer's `read` three times (header, mask, payload) through four layers:
        ~6 % of a loaded worker's Python time (py-spy --gil) for frames of ~100 bytes. Here a
        `peek` at the buffered bytes (the same wait for data as the header's `read`) says
        whether the frame is the plain kind, and one `read` takes it whole. The checks of
        `read_frame` that such a frame can meet are made the same way: its length against
        MAX_FRAME_BYTES before its payload is read, and UTF-8 (close 1007)."""
        handler = self.handler
        head = handler.rfile.peek(4)
        if len(head) >= 2 and head[0] == 0x81 and head[1] & 0x80:  # FIN, text, no RSV; masked
            length = head[1] & 0x7F
            start = 2
            if length == 126 and len(head) >= 4:
                length = head[2] << 8 | head[3]
                start = 4
            if length < 126 or start == 4:
                if length > handler.server.max_frame_bytes:
                    raise FrameTooBig(f"a message of {length} bytes or more (limit "
                                      f"{handler.server.max_frame_bytes})")
                frame = self.raw_read(start + 4 + length)
                if len(frame) != start + 4 + length:
                    raise WebSocketError("Unexpected EOF reading frame payload")
                handler.ws_message_bytes = 0
                payload = unmask(frame[start + 4:], frame[start:start + 4])
                try:
                    return payload.decode("utf-8")
                except UnicodeDecodeError:
                    self.close(1007)
                    return None
        return super().read_message()

    def send(self, message, binary=None):
        """A text message framed here, in one step: 0.10.1 built each frame's header bit by bit
        in a bytearray through two more calls (~3 % of a loaded worker's Python time, py-spy
        --gil). The same bytes; the same errors (WebSocketError, after `on_close`)."""
        if message.__class__ is not str or binary or self.closed:
            return super().send(message, binary)
        data = message.encode("utf-8")
        n = len(data)
        if n < 126:
            head = bytes((0x81, n))
        elif n < 0x10000:
            head = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            head = b"\x81\x7f" + n.to_bytes(8, "big")
        try:
            self.raw_write(head + data)
        except OSError:
            self.current_app.on_close(MSG_SOCKET_DEAD)
            raise WebSocketError(MSG_SOCKET_DEAD) from None

    def validate_utf8(self, payload):
        """Nothing per frame: `read_message` ends a text message with `bytes.decode('utf-8')`,
        which refuses invalid UTF-8 with the same UnicodeError (close 1007). 0.10.1 also ran its
        validator, a Python loop over every byte, on each frame and then on the whole message
        again: ~2 % of a loaded worker. A fragmented message is checked once it is whole, which
        read_frame bounds by MAX_FRAME_BYTES."""

    def receive(self):
        try:
            return super().receive()
        except (FrameTooBig, TooManyFrames) as exc:
            too_big = isinstance(exc, FrameTooBig)
            code = CLOSE_TOO_BIG if too_big else CLOSE_POLICY
            log.warning("closed a WebSocket with %d: %s", code, exc)
            handler = self.handler
            try:
                self.close(code, b"message too big" if too_big else b"too many frames")
            finally:
                # Stop the sender at once: the payload still coming is never read, and closing
                # with unread data resets the connection.
                handler.abort_connection()
            return None

    def close(self, code=1000, message=b""):
        """Send a close frame that carries its code (0.10.1 sends only the reason, so 1009
        arrived as a code made of the reason's first two bytes), then let the socket go."""
        if self.closed:
            return
        if isinstance(message, str):
            message = message.encode("utf-8")
        try:
            self.send_frame(struct.pack("!H", code) + (message or b"")[:123], self.OPCODE_CLOSE)
        except (WebSocketError, OSError):
            pass  # the peer is gone already: nothing to tell it
        finally:
            self.closed = True
            self.stream = self.raw_write = self.raw_read = self.environ = None


# ------------------------------------------------------------------------------ HTTP handler


class HeadersTooSlow(OSError):
    """Raised into a handler whose request line and headers took over HEADER_TIMEOUT.

    An OSError, so that a request line cut short by it ends the connection quietly the way a
    reset does (gevent.pywsgi treats socket errors there as a closed connection).
    """


class SlowHeadersRequest(ValueError):
    """The same, once inside the header parser: pywsgi answers a ValueError there with 400."""


class HeadersCutShort(ValueError):
    """The connection ended before the blank line that closes the request headers."""


class _HeaderLines:
    """The request's file as http.client's header parser reads it (`readline` only), raising
    at end of file instead of returning b"", which the parser takes for the blank line."""

    __slots__ = ("fp",)

    def __init__(self, fp):
        self.fp = fp

    def readline(self, limit=-1):
        line = self.fp.readline(limit)
        if not line:
            raise HeadersCutShort("the connection ended inside the request headers")
        return line


class GuardedHandler(WebSocketHandler):
    """gevent-websocket's handler with a header-read deadline and bounded frames.

    The deadline covers the request line and all headers of each request (a keep-alive
    connection idle between requests included) as one total, not per read: a client sending one
    byte every few seconds cannot stretch it. It is a gevent timer rather than a socket timeout,
    and it is cancelled as soon as the headers are parsed, so a long poll or a WebSocket lives
    as long as it likes afterwards.
    """

    ws_message_bytes = 0
    ws_frames = None  # the connection's TokenBucket for pings, pongs and fragments

    def handle_one_request(self):
        timer = gevent.Timeout(self.server.header_timeout, HeadersTooSlow("header timeout"))
        self._header_timer = timer
        timer.start()
        try:
            return super().handle_one_request()
        finally:
            timer.close()

    # A HEAD response has headers only, but pywsgi (gevent 26.9) sends whatever the application
    # returns (Engine.IO's 405 answers a HEAD with "Method Not Found"), and ends a chunked
    # response (an export's) with the last chunk `0\r\n\r\n` all the same: the keep-alive
    # client, or nginx on its upstream connection, read those bytes as the next response.
    def finalize_headers(self):
        super().finalize_headers()
        if self.command == "HEAD":
            self.response_use_chunked = False

    def _write(self, data, *args, **kwargs):
        if self.command != "HEAD":
            super()._write(data, *args, **kwargs)

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        except HeadersTooSlow:
            raise SlowHeadersRequest("request headers not received in time") from None
        finally:
            self._header_timer.close()

    def MessageClass(self, fp, *args):  # noqa: N802 - pywsgi's name
        """The request headers, refused when the connection ends inside them.

        http.client's parser (which pywsgi uses) ends the headers at end of file as at a blank
        line, so a half-sent request whose client went away was served as complete: every
        slowloris connection the attacker dropped rendered the page (55 % of the worker's
        time under 1,000 such connections a second, a normal pair's p99 over 1 s).
        """
        return super().MessageClass(_HeaderLines(fp), *args)

    def upgrade_websocket(self):
        # 0.10.1 answers a bad upgrade (wrong version, bad key) with a body of str, which
        # gevent.pywsgi refuses with a TypeError traceback: bytes instead.
        result = super().upgrade_websocket()
        if isinstance(result, list):
            result = [x.encode("utf-8") if isinstance(x, str) else x for x in result]
        return result

    def upgrade_connection(self):
        wsgi_env = self.environ
        check = getattr(self.application, "new_session_refusal", None)
        refusal = check(wsgi_env) if check is not None else None
        if refusal is not None:
            return _refuse(self.start_response, *refusal)
        # 0.10.1 decodes the key expecting Python 2's TypeError; on Python 3 a key that is not
        # base64 raises binascii.Error, a traceback per request: check it first.
        key = wsgi_env.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        try:
            valid = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:  # binascii.Error
            valid = False
        if not valid:
            self.start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"invalid Sec-WebSocket-Key"]
        result = super().upgrade_connection()
        ws = getattr(self, "websocket", None)
        if ws is not None and type(ws) is WebSocket:
            ws.__class__ = GuardedWebSocket
            ws.raw_write = FrameWriter(self.socket)
        return result

    def run_application(self):
        try:
            return super().run_application()
        finally:
            if self.environ.get(REFUSED):
                # The body was refused unread: pywsgi would otherwise read it all to "discard"
                # it before closing (300 MiB for a 300 MiB POST). Close instead.
                self.close_connection = True
                self.wsgi_input = _NothingToDiscard

    def abort_connection(self) -> None:
        """Close the TCP connection now, unread data and all (the peer gets a reset). Shut down
        first: `close` alone leaves the descriptor open while the request's reader (a makefile
        of the socket) exists, and a greenlet waiting on it from another one (the WebSocket's
        reader, a writer blocked on a full socket) would wait on."""
        self.close_connection = True
        sock = getattr(self, "socket", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected any more
            try:
                sock.close()
            except OSError:
                pass

    def handle_error(self, t, v, tb):
        """An exception out of the app. Engine.IO's WebSocket reader decodes each packet
        without a guard (python-engineio 4.15: `Packet(encoded_packet=...)` raises ValueError on
        `x`, an empty frame, bad base64), so one client frame printed a full traceback through
        the gevent hub. A ValueError (binascii and Unicode errors are ValueErrors) or a
        WebSocketError is what the client sent: one throttled line, the connection closed. Any
        other exception is ours and keeps its traceback."""
        if issubclass(t, (ValueError, WebSocketError)):
            where = "WebSocket" if self.environ.get("wsgi.websocket_version") else "HTTP"
            log.warning(f"{where} request ended by what the client sent ({t.__name__}): %s", v)
            self.close_connection = True
            if not self.response_length and not self.headers_sent and where == "HTTP":
                self._send_error_response_if_possible(400)
            return
        super().handle_error(t, v, tb)

    # gevent.pywsgi writes client errors straight to its error log (stderr by default) with the
    # client's address, and prints a traceback for some: one throttled line instead, no address.
    def log_error(self, msg, *args):
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg!r} {args!r}"
        log.warning("bad HTTP request: %s", text)

    def _handle_client_error(self, ex):
        if isinstance(ex, HeadersCutShort):
            return None  # the client is gone: nothing to answer, nothing worth a line
        log.warning(f"bad HTTP request ({type(ex).__name__}): %s", ex)
        return "400", _BAD_REQUEST


_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 12\r\n\r\nBad Request\n")


class _NothingToDiscard:
    @staticmethod
    def _discard():
        return None


# ------------------------------------------------------------------------------ server, worker


class _NoRegistry(dict):
    """gevent-websocket's `server.clients`, which keeps each WebSocket under its client address
    and nothing here reads: on a Unix socket every address is '' (the second WebSocket's end
    failed with KeyError), and over TCP it is one more object per connection. Keeps nothing."""

    def __setitem__(self, key, value) -> None:
        pass

    def __delitem__(self, key) -> None:
        pass


class GuardedServer(PyWSGIServer):
    """gunicorn's pywsgi server with a per-address connection cap and our logging.

    MAX_CONNS_PER_ADDR open connections per client address; one more is closed at once, before
    a byte is read. Behind nginx (TRUSTED_PROXIES > 0) every connection comes from nginx, which
    caps per client address itself, so the worker does not count.
    """

    def __init__(self, *args, **kwargs):
        kwargs["error_log"] = logging.getLogger("gevent.pywsgi")
        super().__init__(*args, **kwargs)
        self.clients = _NoRegistry()
        settings = settings_of(self.application)
        self.header_timeout = settings.header_timeout
        self.max_frame_bytes = settings.max_frame_bytes
        self.packet_rate, self.packet_burst = settings.packet_rate, settings.packet_burst
        self.max_per_addr = 0 if settings.trusted_proxies else settings.max_conns_per_addr
        self.open_per_addr: dict[str, int] = {}

    def handle(self, sock, address):
        host = address[0] if isinstance(address, tuple) else ""
        if not self.max_per_addr:
            return super().handle(sock, address)
        n = self.open_per_addr.get(host, 0)
        if n >= self.max_per_addr:
            log.warning("refused a connection: %d already open from one address", n)
            sock.close()
            return None
        self.open_per_addr[host] = n + 1
        try:
            return super().handle(sock, address)
        finally:
            left = self.open_per_addr.get(host, 1) - 1
            if left > 0:
                self.open_per_addr[host] = left
            else:
                self.open_per_addr.pop(host, None)


class GuardedWorker(GeventWebSocketWorker):
    """The gevent-websocket gunicorn worker with our server and handler, and a told drain.

    On SIGTERM (a rolling deploy; also what gunicorn sends an old worker on HUP) the listeners
    close at once (gunicorn itself only notices within a second), the heartbeat stops, and the
    app's drain runs in its own greenlet (it tells the clients to reconnect elsewhere and waits
    up to DRAIN_TIMEOUT); then gunicorn's own graceful stop takes what is left.
    """

    wsgi_handler = GuardedHandler

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.servers: list[GuardedServer] = []
        self.draining = False

        def make_server(*a, **kw):
            server = GuardedServer(*a, **kw)
            self.servers.append(server)
            return server

        self.server_class = make_server

    def handle_exit(self, sig, frame):
        if self.draining:
            return
        self.draining = True
        gevent.spawn(self._drain_then_stop)

    def _drain_then_stop(self):
        started = time.monotonic()
        for server in self.servers:
            server.close()  # new connections wait in the backlog for another worker
        chat = getattr(self.wsgi, "extensions", {}).get("chat") or {}
        try:
            if chat.get("stop"):
                chat["stop"]()
            drain = chat.get("drain")
            if drain is not None:
                info.info("SIGTERM: draining %s", "the clients")
                timeout = settings_of(self.wsgi).drain_timeout + GRACE_AFTER_DRAIN
                with gevent.Timeout(timeout, False):
                    drain()
        except Exception:
            info.exception("drain failed")
        finally:
            info.info("drain done in %.2f s; stopping", time.monotonic() - started)
            self.alive = False
