"""`python -m archiver [run|migrate|purge]`.

run      the daemon (default); in development it first brings the schema up to date
migrate  apply the schema migrations (`make migrate` in production)
purge    delete rooms, messages and reports older than RETENTION_DAYS (or --days)
SIGTERM or SIGINT: finish the current batch, exit 0.
"""
import argparse
import logging
import sys
import time

from common.entry import start

log = logging.getLogger("archiver")


def _migrate_when_reachable(upgrade, url: str, patience: float = 120) -> None:
    """The database may still be starting (containers start together): retry, then give up."""
    from sqlalchemy.exc import OperationalError

    deadline = time.monotonic() + patience
    delay = 0.5
    while True:
        try:
            return upgrade(url)
        except OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database not reachable yet (%s); retrying migration in %.1fs",
                        str(exc).splitlines()[0][:200], delay)
            time.sleep(delay)
            delay = min(5.0, delay * 2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m archiver", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "migrate", "purge"])
    parser.add_argument("--days", type=int, help="purge: override RETENTION_DAYS")
    args = parser.parse_args()
    settings = start("chat-archiver")

    from common.history.migrate import upgrade

    if args.command == "migrate" or (args.command == "run" and not settings.production):
        _migrate_when_reachable(upgrade, settings.database_url)
        if args.command == "migrate":
            return
    if args.command == "purge":
        from common.history.db import make_engine

        from .writer import purge

        days = args.days or settings.retention_days
        log.info("purged history older than %d days: %s", days,
                 purge(make_engine(settings.database_url), days))
        return

    from .daemon import Archiver

    sys.exit(Archiver(settings).run())


if __name__ == "__main__":
    main()
