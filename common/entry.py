"""What every entry point does first: load the settings (or exit 2 with one line) and set up
logs. The daemons' loop, signals and back-off are in common/daemon.py."""
from __future__ import annotations

import logging
import os
import sys

from . import config
from .logs import JsonFormatter, setup_logging


def start(prog: str) -> config.Settings:
    try:
        settings = config.load()
    except config.ConfigError as exc:
        line = f"{prog}: configuration error: {exc}"
        if os.environ.get("LOG_FORMAT") == "json":  # a log shipper still gets one JSON object
            line = JsonFormatter(prog, os.environ.get("WORKER_ID", "")).format(
                logging.makeLogRecord({"name": "config", "levelname": "CRITICAL",
                                       "levelno": logging.CRITICAL, "msg": line}))
        print(line, file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format, prog, settings.worker_id)
    return settings
