"""What every entry point does first: load the settings (or exit 2 with one line) and set up
logs. The daemons' loop, signals and back-off are in common/daemon.py."""
from __future__ import annotations

import sys

from . import config
from .logs import setup_logging


def start(prog: str) -> config.Settings:
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format, prog, settings.worker_id)
    return settings
