"""`python -m matcher` / `chat-matcher`. SIGTERM or SIGINT: finish the current step, exit 0."""
import signal
import sys

from common import config
from common.logs import setup_logging


def main() -> None:
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"chat-matcher: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level)
    from matcher.daemon import Matcher

    m = Matcher(settings)
    signal.signal(signal.SIGTERM, m.stop)
    signal.signal(signal.SIGINT, m.stop)
    sys.exit(m.run())


if __name__ == "__main__":
    main()
