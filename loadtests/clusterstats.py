"""Where a load ran on a Redis Cluster: the chat's Lua scripts and the CPU of each master.

The issue's check is that the chats spread: each master serves a fair share of the message
scripts. `INFO commandstats` counts EVALSHA calls per node; the difference between two readings
is what the run did. Used by loadtests/run.py when the chat runs on REDIS_CLUSTER_URL.
"""
from __future__ import annotations

from redis.cluster import RedisCluster


def masters(url: str) -> dict[str, object]:
    """name (host:port) -> a client of each master of the cluster at `url`."""
    rc = RedisCluster.from_url(url, decode_responses=True)
    return {f"{n.host}:{n.port}": n.redis_connection for n in rc.get_primaries()}


def reading(nodes: dict[str, object]) -> dict[str, dict[str, float]]:
    """Per master: script calls (EVALSHA + EVAL), all commands, and CPU seconds used so far."""
    out = {}
    for name, client in nodes.items():
        stats = client.info("commandstats")
        cpu = client.info("cpu")
        scripts = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))
        out[name] = {"scripts": scripts,
                     "commands": sum(v.get("calls", 0) for v in stats.values()),
                     "cpu_s": float(cpu.get("used_cpu_sys", 0)) + float(cpu.get("used_cpu_user", 0))}
    return out


def spread(before: dict, after: dict, seconds: float) -> dict[str, dict[str, float]]:
    """Per master: scripts run, their share of all, and % of one core, between two readings."""
    runs = {n: after[n]["scripts"] - before.get(n, {}).get("scripts", 0) for n in after}
    total = sum(runs.values()) or 1
    return {n: {"scripts": runs[n], "share": runs[n] / total,
                "cpu_pct": 100 * (after[n]["cpu_s"] - before.get(n, {}).get("cpu_s", 0))
                / max(seconds, 1e-9)}
            for n in sorted(after)}


def table(figures: dict[str, dict[str, float]]) -> str:
    lines = ["| master | scripts | share | CPU, % of a core |", "|---|---|---|---|"]
    for name, f in figures.items():
        lines.append(f"| {name} | {f['scripts']:,} | {100 * f['share']:.1f} % | "
                     f"{f['cpu_pct']:.1f} |")
    return "\n".join(lines)
