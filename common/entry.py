"""What every entry point does first: load the settings (or exit 2 with one line), set up logs,
and for the daemons, run a loop that SIGTERM/SIGINT stop after the current step."""
from __future__ import annotations

import signal
import sys
import time

from . import config
from .logs import setup_logging


def start(prog: str) -> config.Settings:
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level)
    return settings


def run_daemon(daemon) -> None:
    """`daemon` has stop() and run() -> exit code."""
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    sys.exit(daemon.run())


def pause(seconds: float, stopping) -> None:
    """Sleep up to `seconds`, waking early when `stopping()` becomes true."""
    deadline = time.monotonic() + seconds
    while not stopping() and time.monotonic() < deadline:
        time.sleep(0.1)
