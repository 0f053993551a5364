"""One log format for every process: one line per event, time, level, logger, message.

What the transport libraries log about a malformed request or packet is the client's doing, not
ours: a traceback per bad packet lets one client fill the disk and bury real errors. Their
records become one WARNING line without traceback, at most one per kind per THROTTLE_SECONDS,
and the next line of a kind says how many were suppressed meanwhile.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

# Loggers whose warnings and errors describe what a client sent (gevent.pywsgi is the name
# web/guard.py gives gevent's error log; web.guard is our own refusals).
LIBRARY_LOGGERS = ("engineio", "socketio", "geventwebsocket", "gevent.pywsgi", "web.guard")
THROTTLE_SECONDS = 10.0
MAX_LINE = 300


def _family(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in LIBRARY_LOGGERS)


class ClientNoiseFilter(logging.Filter):
    """One WARNING line without traceback per kind of library complaint, rate-limited.

    A kind is the logger plus the message template (or the exception's class when there is
    one), so a flood of one malformed thing is one line per THROTTLE_SECONDS while a different
    problem still shows at once. Attached both to the library loggers (for the records they log
    themselves) and to the root handlers (for their children); a record is judged once.
    """

    def __init__(self, interval: float = THROTTLE_SECONDS, clock=time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple, float] = {}
        self._suppressed: dict[tuple, int] = {}

    def _kind(self, record: logging.LogRecord) -> tuple:
        if record.exc_info and record.exc_info[0] is not None:
            what = record.exc_info[0].__name__
        else:
            what = str(record.msg)[:60]
        return record.name, what

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_client_noise", None) is not None:
            return record._client_noise
        if record.levelno < logging.WARNING or not _family(record.name):
            return True
        kind = self._kind(record)
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                record._client_noise = False
                return False
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
            if len(self._last) > 1000:  # kinds carry client text: never grow without bound
                self._last = {k: v for k, v in self._last.items() if now - v < self.interval}
        try:
            text = record.getMessage()
        except Exception:  # a library's bad format string must not become a traceback either
            text = f"{record.msg!r} {record.args!r}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = f"{text}: {type(exc).__name__}: {exc}"
        text = " ".join(text.split())  # one line, whatever the client put in it
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + "…"
        if suppressed:
            text += f" ({suppressed} more like this in the last {self.interval:g} s)"
        record.msg, record.args = text, None
        record.exc_info = record.exc_text = record.stack_info = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record._client_noise = True
        return True


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    noise = ClientNoiseFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(noise)
    for noisy in ("engineio", "socketio", "geventwebsocket", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("engineio.server", "socketio.server", "geventwebsocket.handler",
                 "gevent.pywsgi", "web.guard"):
        lg = logging.getLogger(name)
        lg.addFilter(noise)
        # engineio and socketio give their server logger a bare StreamHandler of its own when
        # its level is unset (a second, unformatted copy of every line): a level avoids that.
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
