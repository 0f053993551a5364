"""`make soak`: the fault scenarios of tests/test_faults.py, again and again, with figures.

One AOF Redis, three web workers and the matcher on loopback ports; rounds of: Redis SHUTDOWN
and started again, every queue listener killed repeatedly, one worker SIGTERMed (it is started
again afterwards, on its port), the matcher killed -9 while 200 users pair. Runs for
`--seconds` (finishing the round under way), prints the ledger per fault and exits 1 if any
acknowledged message was not shown, a chat broke, or a pairing went wrong.

    make soak                      # 3 minutes
    make soak SOAK_SECONDS=600     # longer
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import Stack  # noqa: E402
from procs import RedisServer  # noqa: E402
from test_faults import (FAULT_ENV, listener_kill, matcher_kill, redis_restart,  # noqa: E402
                         worker_drain)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def soak(seconds: float, pairs: int) -> int:
    redis = RedisServer(aof=True)
    stack = Stack(workers=3, redis=redis, **FAULT_ENV)
    ledger = collections.defaultdict(collections.Counter)
    resume: list[float] = []
    resume_told: list[float] = []
    again: list[float] = []
    bad: list[str] = []
    start = time.monotonic()
    rnd = 0
    try:
        while time.monotonic() - start < seconds:
            rnd += 1
            stack.redis.client.flushall()
            for name, run in (("redis restart", lambda: redis_restart(stack, pairs)),
                              ("listener killed", lambda: listener_kill(stack, pairs, kills=10)),
                              ("worker SIGTERM", lambda: worker_drain(stack, pairs,
                                                                      victim=rnd % 3))):
                t0 = time.monotonic()
                f = await run()
                row = ledger[name]
                row["rounds"] += 1
                for k in ("acknowledged", "shown", "lost", "partner_left", "not_chatting"):
                    row[k] += f[k]
                if f["lost"] or f["partner_left"] or f["not_chatting"]:
                    bad.append(f"round {rnd} {name}: {f}")
                if "chat_again_s" in f:
                    again.append(f["chat_again_s"])
                if "resume_s" in f:
                    resume += f["resume_s"]
                    resume_told += f["resume_told_s"]
                    web = stack.webs[rnd % 3]  # the stopped worker comes back on its port
                    web.respawn()
                    web.wait_ready()
                print(f"round {rnd} {name}: lost {f['lost']} of {f['acknowledged']} "
                      f"({time.monotonic() - t0:.1f} s)", flush=True)
            f = await matcher_kill(stack)
            row = ledger["matcher kill -9"]
            row["rounds"] += 1
            for k in ("users", "matched", "stuck_waiting", "half_pairs", "inconsistent_partners"):
                row[k] += f[k]
            if f["stuck_waiting"] or f["half_pairs"] or f["inconsistent_partners"]:
                bad.append(f"round {rnd} matcher kill: {f}")
            print(f"round {rnd} matcher kill -9: {f['matched']} of {f['users']} matched",
                  flush=True)
    finally:
        stack.stop()
        redis.stop()

    took = time.monotonic() - start
    print(f"\nsoak: {rnd} rounds in {took:.0f} s, 3 web workers, {pairs} pairs per scenario")
    for name, row in ledger.items():
        print(f"  {name:16} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    print(f"  resume after a drain, clients that obey `draining` (s, {len(resume_told)}): "
          f"p50 {pct(resume_told, 50):.2f}  p99 {pct(resume_told, 99):.2f}  "
          f"max {max(resume_told, default=0):.2f}")
    print(f"  resume after a drain, all (s, {len(resume)}, half ignore `draining` and are closed "
          f"after DRAIN_TIMEOUT): p50 {pct(resume, 50):.2f}  p99 {pct(resume, 99):.2f}  "
          f"max {max(resume, default=0):.2f}")
    print(f"  chat again after Redis is back (s, {len(again)} restarts): "
          f"p50 {pct(again, 50):.2f}  max {max(again, default=0):.2f}")
    for line in bad:
        print("  FAILED", line)
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--pairs", type=int, default=12)
    args = ap.parse_args()
    sys.exit(asyncio.run(soak(args.seconds, args.pairs)))


if __name__ == "__main__":
    main()
