"""`python -m web` / `chat-web`: one gunicorn process with one gevent-websocket worker."""
from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import math  # noqa: E402
import logging  # noqa: E402

from gunicorn.app.base import BaseApplication  # noqa: E402

from common import config  # noqa: E402
from common.entry import start  # noqa: E402
from web import guard  # noqa: E402
from web.guard import GRACE_AFTER_DRAIN  # noqa: E402

log = logging.getLogger("web")


class WebServer(BaseApplication):
    """gunicorn, configured from Settings rather than a config file (one place for each fact)."""

    def __init__(self, settings: config.Settings):
        self.settings = settings
        super().__init__()

    def load_config(self):
        s = self.settings
        for key, value in {
            # TCP always (health checks, tools, nginx elsewhere); a Unix socket besides for an
            # nginx on this machine: a frame written to it costs the worker ~1 us of system time
            # against ~6 us over loopback TCP, and the worker writes several per message
            "bind": [f"{s.host}:{s.port}" if ":" not in s.host else f"[{s.host}]:{s.port}",
                     *([f"unix:{s.unix_socket}"] if s.unix_socket else [])],
            # Socket.IO needs one worker per process (long-polling cannot be made sticky inside
            # gunicorn); scale with more processes behind nginx.
            "workers": 1,
            # gevent-websocket's worker with our transport guards (web/guard.py): frame sizes
            # checked from the header, a header-read deadline, a per-address cap, a drain.
            "worker_class": "web.guard.GuardedWorker",
            "worker_connections": s.worker_connections,
            # SIGTERM: the drain (up to DRAIN_TIMEOUT), then the connections still open finish.
            "graceful_timeout": math.ceil(s.drain_timeout + GRACE_AFTER_DRAIN) + 1,
            "timeout": 60,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": s.log_level.lower(),
            "proc_name": f"chat-web-{s.worker_id}",
            # gunicorn's control socket has one default path per user: several web processes on
            # one machine would fight over it, and nothing here uses it.
            "control_socket_disable": True,
            "post_worker_init": _post_worker_init,
            "worker_int": _stop_worker,
            "worker_exit": lambda server, worker: _stop_worker(worker),
            # gunicorn's own lines in LOG_FORMAT too (its default is its own text format)
            **({"logger_class": "web.gunicorn_logs.Logger"} if s.log_format == "json" else {}),
        }.items():
            self.cfg.set(key, value)

    def load(self):
        from gunicorn.arbiter import Arbiter

        from web.app import create_app

        try:
            app = create_app(self.settings)
        except Exception:
            # gunicorn would log this and then print the exception's text to stderr as a bare
            # line (not LOG_FORMAT=json); logged here once, the worker then fails to boot as
            # it would have (the master stops: "Worker failed to boot").
            log.exception("the web app could not start")
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR) from None
        # Body limits in front of every route; the wrapper keeps `.extensions` reachable.
        return guard.wrap(app, self.settings)


# The collector's thresholds. With the defaults (700, 10, 10) a worker holding 1000 chatting
# connections (~130 000 tracked objects) ran a full collection every 6 - 12 s that stopped it for
# 110 - 160 ms and freed almost nothing (most garbage here is freed by reference counting), plus
# young collections several times a second. With these, a 3-minute 1000-user run had 4 young
# collections and no full one; p99 delivery 250 -> 180 ms (loadtests/RESULTS.md).
GC_THRESHOLDS = (50_000, 20, 100)


def _post_worker_init(worker):
    # Objects built at start-up live forever: keep them out of the collector's generations so its
    # pauses stay short with thousands of connections (measured above: GC_THRESHOLDS).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _stop_worker(worker):
    app = getattr(worker, "wsgi", None)
    stop = getattr(app, "extensions", {}).get("chat", {}).get("stop")
    if stop:
        stop()


def main() -> None:
    settings = start("chat-web")
    log.info("starting web worker %s on %s:%s", settings.worker_id, settings.host, settings.port)
    WebServer(settings).run()


if __name__ == "__main__":
    main()
