"""One log format for every process: one line per event, time, level, logger, message.

LOG_FORMAT=json makes each line one JSON object instead (JsonFormatter), for every process and
for gunicorn's own error and access logs (web/gunicorn_logs.py): what a log shipper can parse
without a pattern. What is logged is the same in both formats, and never a chat message's text
(tests/test_logs_json.py drives a chat and reads every line).

What the transport libraries log about a malformed request or packet is the client's doing, not
ours: a traceback per bad packet lets one client fill the disk and bury real errors. Their
records become one WARNING line without traceback, at most one per kind per THROTTLE_SECONDS,
and the next line of a kind says how many were suppressed meanwhile.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime

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


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has of its own: the rest of its attributes came as `extra=` fields.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (ISO 8601, UTC, ms), level, logger,
    process (the program, e.g. chat-web), worker (WORKER_ID), pid, message, the record's
    `extra=` fields, and `exc` (the formatted traceback) or `stack` when it has one."""

    def __init__(self, process: str = "", worker: str = ""):
        super().__init__()
        self.process, self.worker = process, worker

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a library's bad format string is still one line
            message = f"{record.msg!r} {record.args!r}"
        out = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": self.process,
            "worker": self.worker,
            "pid": record.process,
            "message": message,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # \u2028 and \u2029 are line breaks to some readers: escaped, so a record is one line
        return (json.dumps(out, ensure_ascii=False, default=str)
                .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


_formatter: logging.Formatter = logging.Formatter(TEXT_FORMAT)


def formatter() -> logging.Formatter:
    """The formatter setup_logging chose, for handlers made elsewhere (gunicorn's)."""
    return _formatter


def _hub_exceptions_as_records() -> None:
    """gevent's hub prints a greenlet's uncaught exception to stderr by itself, as bare lines:
    a record instead (the greenlet's class, never its arguments, which may be a client's)."""
    hub = sys.modules.get("gevent.hub")
    if hub is None:  # a process without gevent (the archiver)
        return
    hub_log = logging.getLogger("gevent.hub")

    def print_exception(self, context, t, v, tb):
        hub_log.error("%s failed with %s", type(context).__name__ if context is not None else
                      "the hub", getattr(t, "__name__", "exception"),
                      exc_info=(t, v, tb) if v is not None else None)

    hub.Hub.print_exception = print_exception


def _uncaught_exceptions_as_records() -> None:
    """An exception nothing caught (in the main thread: the process ends; in a thread) is
    printed by Python as bare traceback lines: one record instead, with the traceback in it."""
    uncaught = logging.getLogger("uncaught")

    def excepthook(t, v, tb):
        if issubclass(t, KeyboardInterrupt):
            return sys.__excepthook__(t, v, tb)
        uncaught.critical("uncaught %s: the process ends", t.__name__, exc_info=(t, v, tb))

    def thread_excepthook(args):
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        uncaught.error("uncaught %s in %s", args.exc_type.__name__, name,
                       exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def setup_logging(level: str = "INFO", fmt: str = "text", process: str = "",
                  worker: str = "") -> None:
    """The root logger on stderr, in LOG_FORMAT `fmt` (text or json), with the client noise
    filter; the chatty libraries at WARNING."""
    global _formatter
    logging.basicConfig(level=level, stream=sys.stderr, format=TEXT_FORMAT, force=True)
    _formatter = JsonFormatter(process, worker) if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    if fmt == "json":
        logging.captureWarnings(True)  # warnings.warn() as records, not bare stderr lines
        _hub_exceptions_as_records()
        _uncaught_exceptions_as_records()
    noise = ClientNoiseFilter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_formatter)
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
