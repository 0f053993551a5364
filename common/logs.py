"""One log format for every process: one line per event, time, level, logger, message."""
import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for noisy in ("engineio", "socketio", "geventwebsocket", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
