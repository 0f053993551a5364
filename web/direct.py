"""Engine.IO packets written by the emitting greenlet itself when nothing waits to be sent.

python-engineio 4 gives each WebSocket a writer greenlet: `Socket.send` puts the packet on a
queue, and the writer wakes, takes it, frames it and writes it. For the chat's small packets
that hand-over (a queue put, a hub callback, two greenlet switches, a timer for the writer's
next wait, an exception to learn that the queue is empty) cost a worker about as much as the
write itself. When the queue is empty and the writer is waiting on it, nothing can be ahead of
a packet, so `send` frames and writes it at once, without ever waiting for the socket: what the
socket does not take is kept by the frame writer (web/guard.py FrameWriter), and a NOOP packet
wakes the writer, which sends that rest before anything else. Otherwise the queue, as before:
either way the packets go out in the order of the `send` calls.
"""
from __future__ import annotations

import logging

from engineio import packet as eio_packet
from engineio import socket as eio_socket
from engineio.exceptions import QueueEmpty

from . import metrics
from .drain import close_session
from .guard import FrameWriter

log = logging.getLogger("web.guard")  # refusals: throttled by common/logs.py

WAKE = eio_packet.Packet(eio_packet.NOOP)  # clients ignore it; it makes the writer flush


class DirectSocket(eio_socket.Socket):
    """An Engine.IO session that may write a packet in the sender's greenlet, with a cap on
    what waits for it. Sessions become one at connect (`install`): the class of the object
    changes, nothing else.

    The cap (MAX_QUEUED_BYTES). Engine.IO's queue had no bound: a client that stops reading
    (its writer blocked on a full socket) but keeps answering pings, which a hostile one does
    blindly, or a long-polling client that sends its pongs but never polls, made the worker
    keep every packet sent to it (its partner's messages, `stats`, typing) for as long as it
    liked. `send` counts the bytes it puts on the queue and the taker (the writer's or a
    long-poll's `poll`) sets the count back to zero when it takes them, all of them at once:
    one `len` of a string and an addition per queued packet, no lock. A packet that comes while
    the count is at the cap and no taker waits on the queue closes the session instead
    (`overflow`); one that comes while a taker waits never does, so a single large packet (a
    `resumed` snapshot) is never a reason. What the worker holds per session is then at most
    the cap and one packet in the queue, as much again in the writer's hands, and one frame's
    rest in FrameWriter.pending (a direct write is only made when none is pending). The client
    reconnects and resumes with its token: what it missed is in the chat's `sent:` list.

    A long-polling client that does not poll is closed by Engine.IO at the ping timeout, as it
    never gets the ping to answer, unless it sends pongs blindly: then only the cap ends it.
    """

    ws = None  # engineio's WebSocket wrapper while _websocket_handler runs
    frames = None  # and its FrameWriter (web/guard.py), found once, for the direct writes
    write = None  # and its WebSocket's `send`, below engineio's wrapper
    transport = None  # and its HTTP handler (web/guard.py GuardedHandler), for `close`
    writer_idle = False  # the WebSocket's writer is waiting on the queue
    taking = False  # a writer or a long-poll is waiting on the queue (in `poll`)
    queued = 0  # bytes put on the queue since a taker last emptied it
    max_queued = 0  # MAX_QUEUED_BYTES (install); 0: no cap
    overflowed = False  # closed by the cap (or being closed)

    def _websocket_handler(self, ws):
        # One WebSocket per session. Engine.IO refuses an upgrade of a session already upgraded,
        # but not one that comes while another is still in its probe: both handlers ran, the
        # later one's `ws` replaced the earlier one's, and this session's direct writes (acks,
        # the partner's messages) went to the socket the client had not upgraded, or stopped
        # when that one ended. The first handler owns the session until it ends; a second is
        # closed before it touches anything (no switch between the check and the claim).
        if self.ws is not None or self.upgraded:
            log.warning("refused a second WebSocket upgrade of one session")
            return []
        self.ws = ws
        sock = getattr(ws, "_sock", None)
        frames = getattr(sock, "raw_write", None)
        if type(frames) is FrameWriter:
            self.frames, self.write = frames, sock.send
        # No timeout on the socket. Engine.IO means one of ping interval + timeout, but looks for
        # `settimeout` on gevent-websocket's WebSocket, which has none; set on the socket below
        # it, it cost a gevent Timeout made, started and cancelled around every read (~5 % of a
        # loaded worker's Python time, py-spy --gil). What it was for: a client that stops
        # reading and sending kept the reader, and a writer blocked on its full socket, waiting
        # long after its session had ended. `close` lets such a connection go instead.
        transport = self.transport = getattr(sock, "handler", None)
        if self.connected and transport is not None:
            # An upgrade: its probe and UPGRADE packet must come within a ping interval and
            # timeout, as the socket's timeout made them. Else a client that keeps its polling
            # session alive with blind pongs held this connection and greenlet for good.
            self.server.start_background_task(self._upgrade_deadline, transport)
        try:
            return super()._websocket_handler(ws)
        finally:
            if self.ws is ws:
                self.ws = self.transport = self.frames = self.write = None
                if not self.upgraded:
                    # Engine.IO sets it back only on the paths that return: should the probe's
                    # wait raise (an aborted connection), the session's polls would get NOOPs.
                    self.upgrading = False

    def _upgrade_deadline(self, transport) -> None:
        self.server.sleep(self.server.ping_interval + self.server.ping_timeout)
        if self.transport is transport and not self.upgraded:
            log.warning("closed a WebSocket upgrade that did not finish in time")
            transport.abort_connection()

    def close(self, wait=True, abort=False, reason=None):
        """Engine.IO's close, and then, unless the WebSocket's reader is what ended (its client
        closed the connection), the connection itself after a ping timeout's grace: a session
        ended by a ping timeout or by the server may have a client that neither reads nor
        sends, and only closing its socket ends the reader's wait and a writer's on a full
        socket, and frees what was kept for it. An honest client has read the CLOSE packet and
        closed its end long before.

        Only the call that ends the session lets go: Engine.IO calls `close` again for every
        CLOSE packet its reader still finds (the reader goes on until the writer closes the
        WebSocket, which needs a switch), and a greenlet per call, each kept for a ping
        timeout, grew a worker by 420 MB for 350 KB of CLOSE frames on one WebSocket."""
        transport = self.transport
        ending = not (self.closed or self.closing)
        super().close(wait=wait, abort=abort, reason=reason)
        if ending and transport is not None and reason != self.server.reason.TRANSPORT_CLOSE:
            self.server.start_background_task(self._let_go, transport)

    def _let_go(self, transport) -> None:
        self.server.sleep(self.server.ping_timeout)
        if self.transport is transport:
            transport.abort_connection()

    def poll(self):
        # Once upgraded, only the WebSocket's writer polls (engineio answers a polling GET of an
        # upgraded session with NOOP); a long-poll still waiting from before the upgrade was
        # entered while ws was None.
        writer = self.writer_idle = self.ws is not None and self.upgraded
        self.taking = True
        try:
            while True:
                try:
                    packets = super().poll()
                except QueueEmpty:
                    # The writer's wait ends after ping interval + timeout without a packet,
                    # and the writer then closes the WebSocket: with every packet written
                    # directly, that was every connection after 25 s. A WebSocket's liveness
                    # is the ping's business (check_ping_timeout); the writer waits on.
                    if not writer or self.closed:
                        raise
                else:
                    # Engine.IO's poll takes all that is queued, with no switch after its
                    # first wait: nothing is left, and nothing came meanwhile.
                    self.queued = 0
                    return packets
        finally:
            self.writer_idle = self.taking = False

    def send(self, pkt):
        frames = self.frames
        if frames is not None and self.writer_idle and frames.ready and not self.queue.qsize():
            if not self.check_ping_timeout():
                return
            frames.now = True
            try:
                self.write(pkt.encode())
            except Exception:  # nothing was written: the writer meets the error and closes
                pass
            else:
                if frames.pending is not None:
                    self.queue.put(WAKE)
                return
            finally:
                frames.now = False
        cap = self.max_queued
        if cap:
            # The cap: see the class's docstring. A packet waits only for a taker that is not
            # waiting on the queue (a writer blocked on a full socket, a long-poll not made).
            if self.queued >= cap and not self.taking:
                return self.overflow()
            data = pkt.data
            self.queued += len(data) if data.__class__ is str else 1
        super().send(pkt)

    def overflow(self) -> None:
        """More than MAX_QUEUED_BYTES wait for a client that takes none of it: close it, count
        it, say so once. In a greenlet of its own: the sender may be anyone's (a partner's
        handler, the queue's listener), and the disconnect handler goes to Redis."""
        if self.overflowed or self.closing or self.closed:
            return
        self.overflowed = True
        metrics.QUEUE_OVERFLOWS.inc()
        log.warning("closed a %s connection: over %d bytes of packets waited for it "
                    "(MAX_QUEUED_BYTES); its client resumes when it reconnects",
                    "WebSocket" if self.ws is not None else "long-polling", self.max_queued)
        self.server.start_background_task(self._close_overflowed, self.transport)

    def _close_overflowed(self, handler) -> None:
        close_session(self.server, self.sid, abort=True,
                      reason=self.server.reason.TRANSPORT_ERROR)
        if handler is not None:
            # The writer may be blocked on the full socket with what it took: closing the
            # socket under it ends its wait (and the reader's) at once, and frees all of it.
            handler.abort_connection()


def install(eio, max_queued: int = 0) -> None:
    """Make every new Engine.IO session of server `eio` a DirectSocket, its queue capped at
    `max_queued` bytes (MAX_QUEUED_BYTES; 0: no cap)."""
    original = eio.handlers["connect"]

    def connect(eio_sid, *args):
        session = eio.sockets.get(eio_sid)
        if type(session) is eio_socket.Socket:
            session.__class__ = DirectSocket
            session.max_queued = max_queued
        return original(eio_sid, *args)

    eio.handlers["connect"] = connect
