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

from .guard import FrameWriter

log = logging.getLogger("web.guard")  # refusals: throttled by common/logs.py

WAKE = eio_packet.Packet(eio_packet.NOOP)  # clients ignore it; it makes the writer flush


class DirectSocket(eio_socket.Socket):
    """An Engine.IO session that may write a packet in the sender's greenlet. Sessions become
    one at connect (`install`): the class of the object changes, nothing else."""

    ws = None  # engineio's WebSocket wrapper while _websocket_handler runs
    writer_idle = False  # the WebSocket's writer is waiting on the queue

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
        # Engine.IO gives the WebSocket's socket a timeout of ping interval + timeout, but looks
        # for `settimeout` on gevent-websocket's WebSocket, which has none: without it the
        # reader and the writer waited for as long as a client that stopped reading and sending
        # kept the TCP connection open, long after its session had ended (the writer blocked on
        # a full socket, the packets kept for it). A client that answers pings is never idle
        # that long; the direct writes (FrameWriter `now`) never wait on the socket anyway.
        handler = getattr(getattr(ws, "_sock", None), "handler", None)
        sock = getattr(handler, "socket", None)
        if sock is not None:
            sock.settimeout(self.server.ping_interval + self.server.ping_timeout)
        try:
            return super()._websocket_handler(ws)
        finally:
            if self.ws is ws:
                self.ws = None

    def poll(self):
        # Once upgraded, only the WebSocket's writer polls (engineio answers a polling GET of an
        # upgraded session with NOOP); a long-poll still waiting from before the upgrade was
        # entered while ws was None.
        writer = self.writer_idle = self.ws is not None and self.upgraded
        try:
            while True:
                try:
                    return super().poll()
                except QueueEmpty:
                    # The writer's wait ends after ping interval + timeout without a packet,
                    # and the writer then closes the WebSocket: with every packet written
                    # directly, that was every connection after 25 s. A WebSocket's liveness
                    # is the ping's business (check_ping_timeout); the writer waits on.
                    if not writer or self.closed:
                        raise
        finally:
            self.writer_idle = False

    def send(self, pkt):
        ws = self.ws
        if ws is not None and self.writer_idle and not self.queue.qsize():
            frames = getattr(getattr(ws, "_sock", None), "raw_write", None)
            if type(frames) is FrameWriter and frames.ready:
                if not self.check_ping_timeout():
                    return
                frames.now = True
                try:
                    ws.send(pkt.encode())
                except Exception:  # nothing was written: the writer meets the error and closes
                    pass
                else:
                    if frames.pending is not None:
                        self.queue.put(WAKE)
                    return
                finally:
                    frames.now = False
        super().send(pkt)


def install(eio) -> None:
    """Make every new Engine.IO session of server `eio` a DirectSocket."""
    original = eio.handlers["connect"]

    def connect(eio_sid, *args):
        session = eio.sockets.get(eio_sid)
        if type(session) is eio_socket.Socket:
            session.__class__ = DirectSocket
        return original(eio_sid, *args)

    eio.handlers["connect"] = connect
