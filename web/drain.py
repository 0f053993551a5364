"""A told drain: a stopping worker sends its clients elsewhere at once.

Without it a SIGTERMed worker kept its WebSocket clients until gunicorn's graceful timeout ran
out and then dropped them without a word (12 s before they resumed elsewhere). Here each client
is told `draining {}` (the page and the test clients close and resume at once, with their token
and `since`, on another worker), the worker waits until they left or DRAIN_TIMEOUT passed, and
closes what remains at the Engine.IO level. A Socket.IO DISCONNECT packet is never sent: a
Socket.IO client does not reconnect by itself after one, it does after a transport close.

`conns.draining` tells the presence code (web/sockets.py, disconnect.lua) that these
disconnects are not users going away: their partners see nothing.
"""
from __future__ import annotations

import logging
import time

import gevent

from common import events as ev

log = logging.getLogger("web.drain")

POLL = 0.05  # seconds between looks at how many clients are still here


def _local_sids(conns) -> list[str]:
    return [sid for sid, _ in conns.items()]


def close_session(eio, eio_sid: str, *, abort: bool = False, reason=None) -> bool:
    """End one Engine.IO session now, without waiting: python-engineio 4.15's own
    `disconnect(sid)` waits until the CLOSE packet is polled, which a client that is not polling
    (or the very request that asks for the close) never does. Forgotten at once: a POST to a
    session closed but still listed makes Engine.IO raise KeyError. False if it was gone."""
    session = eio.sockets.pop(eio_sid, None)
    if session is None:
        return False
    session.close(wait=False, abort=abort, reason=reason or eio.reason.SERVER_DISCONNECT)
    return True


def close_transport(server, sid: str) -> bool:
    """Close one connection's Engine.IO transport without a Socket.IO DISCONNECT packet.

    `abort=True` skips Engine.IO's CLOSE packet too (python-engineio's client treats that packet
    as a server disconnect and does not reconnect); the WebSocket or the long-poll just ends,
    which every client reads as a lost transport and reconnects.
    """
    eio_sid = server.manager.eio_sid_from_sid(sid, "/")
    return bool(eio_sid) and close_session(server.eio, eio_sid, abort=True)


def drain(socketio, conns, settings) -> dict:
    """Tell every local client to reconnect elsewhere, wait for them, close the rest.

    Returns figures for the log and the tests: told, left by themselves, closed, seconds.
    """
    server = socketio.server
    conns.draining = True
    start = time.monotonic()
    sids = _local_sids(conns)
    for sid in sids:
        try:
            server.emit(ev.DRAINING, {}, to=sid, namespace="/", ignore_queue=True)
        except Exception as exc:  # a socket closing under us: it goes anyway
            log.debug("draining to %s: %s", sid, exc)
    deadline = start + settings.drain_timeout
    while len(conns) and time.monotonic() < deadline:
        gevent.sleep(POLL)
    left = len(sids) - len(conns)
    closed = 0
    for sid in _local_sids(conns):
        try:
            closed += close_transport(server, sid)
        except Exception as exc:
            log.warning("closing %s at drain: %s", sid, exc)
    took = time.monotonic() - start
    log.info("drained: %d clients told, %d left by themselves, %d closed, %.2f s",
             len(sids), max(left, 0), closed, took)
    return {"told": len(sids), "left": max(left, 0), "closed": closed, "seconds": took}
