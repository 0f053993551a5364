"""gunicorn's own log lines (its error log: start, workers, signals; its access log when one is
configured) in the process's LOG_FORMAT: with LOG_FORMAT=json, web/__main__.py makes this
gunicorn's logger class, so every line a web process writes is a JSON object."""
from __future__ import annotations

from gunicorn import glogging

from common.logs import formatter


class Logger(glogging.Logger):
    """gunicorn's logger, its handlers given the formatter common/logs.py set up."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter())
