"""The side-by-side report of a load test run: the baseline relay and the product under the same
load in the same run (README.md, "Baseline"): the two ratios product / baseline beside the
issue's goals, the table in summary.md and on the console, `baseline` and `comparison` in the
top run.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from report import DELIVERED, fmt

# The goals at 1000 users, product / baseline in the same run.
GOALS = {"p99_delivery": 3.0, "cpu_per_message": 1.5}


def compare(base: dict | None, prod: dict | None) -> dict:
    """The two ratios product / baseline beside the issue's goals (None when a side is missing)."""
    def ratio(get):
        try:
            x, y = get(prod), get(base)
        except (TypeError, KeyError, AttributeError):
            return None
        return round(x / y, 2) if x is not None and y else None

    p99 = ratio(lambda i: i["latency_ms"][DELIVERED]["99%"])
    quiet = ratio(lambda i: i["cluster"]["delivery_p99_10s_median"])
    cpu = ratio(lambda i: i["cluster"]["cpu_ms_per_message"])
    # The load generator does the same work on both sides: the cluster's CPU over the
    # generator's is the CPU ratio with the shared machine's speed changes between the two
    # halves divided out (they moved the raw ratio by +-15 % from run to run).
    per_gen = ratio(lambda i: i["cluster"]["cpu_mean_pct"] / i["cluster"]["locust_cpu_mean_pct"])
    return {"p99_delivery_ratio": p99, "p99_delivery_goal": GOALS["p99_delivery"],
            "p99_delivery_met": None if p99 is None else p99 <= GOALS["p99_delivery"],
            "p99_delivery_10s_median_ratio": quiet,
            "cpu_per_message_ratio": cpu, "cpu_per_message_goal": GOALS["cpu_per_message"],
            "cpu_per_message_met": None if cpu is None else cpu <= GOALS["cpu_per_message"],
            "cpu_per_generator_cpu_ratio": per_gen}


def comparison_lines(base: dict | None, prod: dict | None, comp: dict) -> list[str]:
    """summary.md's side-by-side table: the relay (baseline) and the product, one run."""
    def side(info, get, nd=0):
        if not info:
            return "not run"
        try:
            return get(info)
        except (KeyError, TypeError):
            return "–"

    def trio(key):
        return lambda i: "/".join(fmt(i["latency_ms"][key].get(p)) for p in ("50%", "95%", "99%"))

    def cl(key, nd=1):
        return lambda i: fmt(i["cluster"].get(key), nd)

    def verdict(i):
        v = i["verdict"]
        return f"{v.get('lost')} / {v.get('duplicates')} / {sum(i['errors'].values())}"

    def goal(r, g, met):
        return "–" if r is None else f"{r:.2f}x (goal ≤ {g:g}x: {'met' if met else 'missed'})"

    rows = [
        ("delivery send → partner p50/p95/p99 ms", trio(DELIVERED),
         goal(comp["p99_delivery_ratio"], comp["p99_delivery_goal"], comp["p99_delivery_met"])),
        ("delivery p99, median of the 10-s windows of the load window (noise check)",
         cl("delivery_p99_10s_median", 0),
         "–" if comp["p99_delivery_10s_median_ratio"] is None
         else f"{comp['p99_delivery_10s_median_ratio']:.2f}x"),
        ("match both waiting → matched p50/p95/p99 ms", trio("MATCH both waiting → matched"),
         ""),
        ("match join → matched p50/p95/p99 ms", trio("MATCH join → matched"), ""),
        ("ack message p50/p95/p99 ms", trio("ACK message"), ""),
        ("messages delivered /s (load window)", cl("msgs_per_s"), ""),
        ("whole-cluster CPU, % of one core (load window)", cl("cpu_mean_pct"), ""),
        ("CPU-ms per delivered message", cl("cpu_ms_per_message", 2),
         goal(comp["cpu_per_message_ratio"], comp["cpu_per_message_goal"],
              comp["cpu_per_message_met"])),
        ("cluster CPU / load generator CPU (noise check: the generator's work is the same)",
         lambda i: fmt(i["cluster"]["cpu_mean_pct"] / i["cluster"]["locust_cpu_mean_pct"], 2),
         "–" if comp["cpu_per_generator_cpu_ratio"] is None
         else f"{comp['cpu_per_generator_cpu_ratio']:.2f}x"),
        ("processes counted as the cluster", lambda i: ", ".join(i["cluster"]["groups"]) or "–",
         ""),
        ("load generator (locust) CPU, % of one core", cl("locust_cpu_mean_pct"), ""),
        ("others' CPU on the machine, % of one core", cl("others_cpu_mean_pct_of_one_core"), ""),
        ("lost / duplicates / errors", verdict, ""),
    ]
    lines = ["## Baseline: the thinnest relay beside the product, same load, same run", "",
             "| | baseline (relay.py) | product | product / baseline |", "|---|---|---|---|"]
    for name, get, r in rows:
        lines.append(f"| {name} | {side(base, get)} | {side(prod, get)} | {r} |")
    window = " / ".join(f"{k} {fmt(i['cluster'].get('window_s'))} s"
                        for k, i in (("baseline", base), ("product", prod)) if i)
    lines += ["", f"- load window (every user spawned → end of the run time): {window}; "
              "CPU-ms per message = cluster CPU over the window / messages delivered in it"]
    return lines


def write(out: Path, done: dict[str, dict], a, seconds: int, stamp: str) -> list[str]:
    """The end of a run: run.json (the product's, with `baseline` and `comparison`; only those
    two in a baseline-only run), the side-by-side table and the Redis Cluster's spread added to
    summary.md and printed; `done` holds run_phase()'s result of each side that ran."""
    base_info = done.get("baseline", {}).get("info")
    prod_info = done.get("product", {}).get("info")
    comp = compare(base_info, prod_info)
    lines = comparison_lines(base_info, prod_info, comp) if base_info is not None else []
    if done.get("product", {}).get("cluster_table"):
        lines += ["", "## Redis Cluster: the chat's scripts (EVALSHA) and CPU per master, whole run",
                  "", done["product"]["cluster_table"]]
    if prod_info is not None:
        prod_info["baseline"] = base_info
        prod_info["comparison"] = comp
        (out / "run.json").write_text(json.dumps(prod_info, indent=1, ensure_ascii=False))
        if lines:
            with open(out / "summary.md", "a") as fh:
                fh.write("\n" + "\n".join(lines) + "\n")
    else:
        (out / "run.json").write_text(json.dumps({"baseline": base_info, "comparison": comp},
                                                 indent=1, ensure_ascii=False))
        (out / "summary.md").write_text(
            f"# Load test {stamp}: {a.users} users ({a.mode}), {a.spawn_rate}/s, {seconds} s, "
            "baseline only (the relay's own report: baseline/summary.md)\n\n"
            + "\n".join(lines) + "\n")
    if base_info is not None or done.get("product", {}).get("cluster_table"):
        print("\n" + "\n".join(lines), flush=True)
    return lines
