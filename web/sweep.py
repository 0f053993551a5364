"""Engine.IO's sweep for sessions whose client stopped answering pings, in batches.

python-engineio's service task checks the sessions one at a time and waits ping_timeout / N
between two of them: with 1000 connections a worker woke 100 times a second (an Event wait, a
timer, two greenlet switches each) to check one session, ~1.7 % of its Python time at 1000
users (py-spy --gil). This sweep checks the same sessions in the same cycle of about
ping_timeout, a batch every STEP seconds, with Engine.IO's own per-session check.
"""
from __future__ import annotations

import logging
import math

STEP = 0.5  # seconds between two batches

log = logging.getLogger("web.sweep")


def sweep(eio) -> None:
    """The body of Engine.IO's `_service_task` (started by its first request), batched."""
    stop = eio.service_task_event = eio.create_event()
    while not stop.is_set():
        sockets = list(eio.sockets.values())
        if not sockets:
            if stop.wait(timeout=eio.ping_timeout):
                return
            continue
        batch = max(1, math.ceil(len(sockets) * STEP / eio.ping_timeout))
        pause = eio.ping_timeout * batch / len(sockets)
        for start in range(0, len(sockets), batch):
            try:
                for s in sockets[start:start + batch]:
                    if s.closed:
                        eio.sockets.pop(s.sid, None)
                    elif not s.closing:
                        s.check_ping_timeout()
            except Exception:  # noqa: BLE001 - as Engine.IO: logged, the sweep goes on
                log.exception("ping sweep failed")
            if stop.wait(timeout=pause):
                return


def install(eio) -> None:
    eio._service_task = lambda: sweep(eio)
