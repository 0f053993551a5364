"""`python -m matcher` / `chat-matcher`. SIGTERM or SIGINT: finish the current step, exit 0."""
from common.entry import run_daemon, start


def main() -> None:
    settings = start("chat-matcher")
    from matcher.daemon import Matcher

    run_daemon(Matcher(settings))


if __name__ == "__main__":
    main()
