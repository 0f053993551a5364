"""`python -m matcher` / `chat-matcher`. SIGTERM or SIGINT: finish the current step, exit 0."""
import sys

from common.entry import start


def main() -> None:
    settings = start("chat-matcher")
    from matcher.daemon import Matcher

    sys.exit(Matcher(settings).run())


if __name__ == "__main__":
    main()
