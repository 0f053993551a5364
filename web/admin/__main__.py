"""`python -m web.admin unlock [ADDRESS ...]` (`make admin-unlock`): lift the admin console's
sign-in lockout.

Five wrong passwords from one address lock it out for 15 minutes (web/admin/auth.py); the count
is a Redis string per address, `{<REDIS_PREFIX>}:admin:fail:<address hash>` (common/keys.py: the
keyed hash with SECRET_KEY, so this needs the workers' SECRET_KEY). This deletes those strings, of
the ADDRESSes given or of every address (named then by the start of their hash, the address
itself being kept nowhere), and says what it deleted.

Whom it is for: a developer who mistyped the password five times (development), and an operator
with shell access to a machine or pod that has the deployment's environment (production: it
reads the same REDIS_URL / REDIS_CLUSTER_URL and REDIS_PREFIX as the web workers). Reaching Redis
is the authorisation: whoever can run this could delete the keys with redis-cli anyway.

Under `make run` the private Redis listens on a port chosen at start; with neither REDIS_URL nor
REDIS_CLUSTER_URL set, the URL it wrote to instance/redis/url (while it runs) is used.
"""
from __future__ import annotations

import argparse
import os
import sys

from common import config


def embedded_redis_url() -> str | None:
    """The URL of `make run`'s private Redis, while it runs (stack/__main__.py writes it)."""
    path = config.INSTANCE_DIR / "redis" / "url"
    try:
        return path.read_text("utf-8").strip() or None
    except OSError:
        return None


def unlock(addresses: list[str]) -> int:
    env = dict(os.environ)
    if not env.get("REDIS_URL") and not env.get("REDIS_CLUSTER_URL"):
        url = embedded_redis_url()
        if url:
            env["REDIS_URL"] = url
    try:
        settings = config.load(env)
    except config.ConfigError as exc:
        print(f"python -m web.admin: configuration error: {exc}", file=sys.stderr)
        return 2

    import redis

    from common.redisconn import connect, keys_of

    from .auth import FAIL_LIMIT, Guard

    guard = Guard(connect(settings), keys_of(settings), settings.secret_key)
    where = settings.redis_cluster_url or settings.redis_url
    try:
        counted = guard.failures()
        # addresses are counted by their keyed hash only: one given is named as given, the
        # others by the start of their hash
        targets = ([(a, guard.tag(a)) for a in addresses] if addresses
                   else [(f"address {t[:12]}", t) for t in sorted(counted)])
        if not targets:
            print(f"no address has failed sign-ins (Redis {where}): nothing to unlock")
            return 0
        for who, tag in targets:
            count, ttl = counted.get(tag, (0, 0))
            if not guard.unlock(tag):
                print(f"{who}: no failed sign-ins, not locked out")
            elif count >= FAIL_LIMIT:
                print(f"{who}: unlocked ({count} failed sign-ins; the lockout had "
                      f"{-(-ttl // 60)} more minute{'s' if ttl > 60 else ''} to go)")
            else:
                print(f"{who}: forgot {count} failed sign-in{'s' if count != 1 else ''} "
                      f"(not locked out yet)")
    except redis.RedisError as exc:
        print(f"python -m web.admin: Redis {where} cannot be reached ({exc}). Under make run, "
              f"run this while it runs, with the same INSTANCE_DIR; elsewhere set REDIS_URL "
              f"(or REDIS_CLUSTER_URL) as the web workers have it.", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m web.admin",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("unlock", help="lift the sign-in lockout of ADDRESSes (default: all)")
    p.add_argument("addresses", nargs="*", metavar="ADDRESS",
                   help="client addresses as the web worker's log names them "
                        "('wrong password from ADDRESS'); none: every address")
    args = parser.parse_args()
    sys.exit(unlock(args.addresses))


if __name__ == "__main__":
    main()
