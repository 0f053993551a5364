"""The report of one side of a load test run (the product's or the baseline relay's), from
locust's CSV files, the ledger check (summary.json) and the sampler's rows: run.json, summary.md,
plot.png and the console lines; and the whole-cluster figures over the load window that the
side-by-side comparison (sidebyside.py) is made of.
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

import psutil

def read_stats(out: Path) -> dict[str, dict]:
    rows = {}
    path = out / "locust_stats.csv"
    if path.exists():
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                rows[f"{r['Type']} {r['Name']}"] = r
    return rows


def pct(rows, key, p):
    r = rows.get(key)
    if not r or r.get("Request Count") in (None, "0"):
        return None
    v = r.get(p)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def process_figures(rows: list[dict], t0: float, t1: float) -> dict[str, dict]:
    """Mean CPU % and max RSS per group (summed over its processes) between t0 and t1."""
    by_t: dict[str, dict[float, list]] = {}
    for r in rows:
        if r["cpu"] == "" or r["group"] == "machine":
            continue
        by_t.setdefault(r["group"], {}).setdefault(round(r["t"]), []).append(r)
    out = {}
    for group, samples in by_t.items():
        cpus, rss, waits = [], [], []
        for t, rs in samples.items():
            total_rss = sum(x["rss_kib"] for x in rs)
            rss.append(total_rss)
            if t0 <= t <= t1:
                cpus.append(sum(x["cpu"] for x in rs))
                waits += [x["runq_wait"] for x in rs if x.get("runq_wait") not in ("", None)]
        out[group] = {"cpu_mean_pct": round(sum(cpus) / len(cpus), 1) if cpus else None,
                      "cpu_max_pct": round(max(cpus), 1) if cpus else None,
                      "runq_wait_mean_pct": round(sum(waits) / len(waits), 1) if waits else None,
                      "rss_max_mib": round(max(rss) / 1024, 1) if rss else None,
                      "processes": len({x["pid"] for rs in samples.values() for x in rs})}
    machine = [r for r in rows if r["group"] == "machine" and t0 <= r["t"] <= t1]
    if machine:
        cores = psutil.cpu_count() or 1
        total = sum(r["cpu"] for r in machine) / len(machine)
        ours = sum(v["cpu_mean_pct"] or 0 for v in out.values())
        out["machine (all cores)"] = {
            "cpu_mean_pct": round(total, 1),
            "load_avg_1min_mean": round(sum(r["connections"] for r in machine) / len(machine), 2),
            # what the rest of the machine (other people's runs) took, in % of one core
            "others_cpu_mean_pct_of_one_core": round(max(0.0, total * cores - ours), 1)}
    return out


def kib_per_connection(rows: list[dict], baseline: dict[str, int]) -> dict[str, dict]:
    """(RSS at the sample with the most connections - RSS before the run) / connections."""
    conns: dict[str, dict[int, int]] = {}
    rss: dict[str, dict[int, int]] = {}
    for r in rows:
        g = r["group"]
        if g.endswith(" connections"):
            conns.setdefault(g[:-12], {})[round(r["t"])] = r["connections"]
        elif g in baseline and r["rss_kib"] != "":
            rss.setdefault(g, {})[round(r["t"])] = r["rss_kib"]
    out = {}
    for wid, series in conns.items():
        if not series or wid not in baseline:
            continue
        t, n = max(series.items(), key=lambda kv: (kv[1], -kv[0]))
        r = rss.get(wid, {}).get(t)
        if not n or r is None:
            continue
        out[wid] = {"connections": n, "rss_before_kib": baseline[wid], "rss_at_peak_kib": r,
                    "kib_per_connection": round((r - baseline[wid]) / n, 1)}
    return out


def plot(out: Path, proc_rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = out / "locust_stats_history.csv"
    series: dict[str, dict[str, list]] = {}
    users_t, users = [], []
    t_start = None
    with open(hist, newline="") as fh:
        for r in csv.DictReader(fh):
            t = float(r["Timestamp"])
            t_start = t if t_start is None else t_start
            key = f"{r['Type']} {r['Name']}".strip()
            if key == "Aggregated" or r["Name"] == "Aggregated":
                users_t.append(t - t_start)
                users.append(int(r["User Count"]))
                continue
            s = series.setdefault(key, {"t": [], "rps": [], "50%": [], "95%": [], "99%": []})
            s["t"].append(t - t_start)

            def num(v):
                try:
                    return float(v)
                except (TypeError, ValueError):
                    return float("nan")

            s["rps"].append(num(r["Requests/s"]))
            for p in ("50%", "95%", "99%"):
                v = num(r.get(p))
                s[p].append(v if v > 0 else float("nan"))
    fig, axes = plt.subplots(5, 1, figsize=(11, 16), sharex=True)
    ax = axes[0]
    ax.plot(users_t, users, color="k")
    ax.set_ylabel("users")
    ax.set_title(title, fontsize=10)
    ax = axes[1]
    for key, label in (("ACK message", "messages sent (acked) /s"),
                       ("DELIVERY send → partner", "messages received /s"),
                       ("ACK typing", "typing events /s")):
        if key in series:
            ax.plot(series[key]["t"], series[key]["rps"], label=label)
    ax.set_ylabel("per second")
    ax.legend(loc="upper left", fontsize=8)
    for ax, keys, ylabel in (
            (axes[2], ("DELIVERY send → partner", "ACK message"), "ms (last 10 s window)"),
            (axes[3], ("MATCH join → matched", "MATCH both waiting → matched"),
             "ms (last 10 s window)")):
        styles = {"50%": ":", "95%": "--", "99%": "-"}
        for i, key in enumerate(keys):
            if key not in series:
                continue
            for p, ls in styles.items():
                ax.plot(series[key]["t"], series[key][p], ls, color=f"C{i}",
                        label=f"{key} p{p[:-1]}")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", fontsize=7, ncol=2)
    ax = axes[4]
    if t_start is not None:
        groups: dict[str, dict[int, float]] = {}
        for r in proc_rows:
            if r["cpu"] == "" or r["group"] == "machine":
                continue
            groups.setdefault(r["group"], {}).setdefault(round(r["t"] - t_start), 0.0)
            groups[r["group"]][round(r["t"] - t_start)] += r["cpu"]
        for g in sorted(groups):
            pts = sorted(groups[g].items())
            if max(v for _, v in pts) < 2:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=g)
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.set_ylabel("CPU % of one core")
    ax.set_xlabel("seconds since the start")
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=90)
    plt.close(fig)


def fmt(v, nd=0):
    if v is None:
        return "–"
    return f"{v:.{nd}f}"


# --------------------------------------------------------------------------- the load window

# Not the product's cluster: the load generator, and the local process manager of `stack
# cluster` (honcho, which only relays log lines; a deployment has none).
NOT_CLUSTER = ("locust", "honcho", "machine (all cores)")
DELIVERED = "DELIVERY send → partner"


def load_window(out: Path, users: int, seconds: int) -> tuple[float, float, int] | None:
    """(t0, t1, messages delivered between them): from the moment every user is spawned to the
    end of locust's run time (before the drain), from locust_stats_history.csv."""
    hist = out / "locust_stats_history.csv"
    if not hist.exists():
        return None
    first = spawned = None
    delivered = []
    with open(hist, newline="") as fh:
        for r in csv.DictReader(fh):
            t = float(r["Timestamp"])
            if r["Name"] == "Aggregated":
                first = t if first is None else first
                if spawned is None and int(r["User Count"]) >= users:
                    spawned = t
            elif f"{r['Type']} {r['Name']}" == DELIVERED:
                delivered.append((t, int(r["Total Request Count"])))
    if first is None or spawned is None:
        return None
    pts = [(t, n) for t, n in delivered if spawned <= t <= first + seconds - 1]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return pts[0][0], pts[-1][0], pts[-1][1] - pts[0][1]


def window_p99s(out: Path, key: str, t0: float, t1: float) -> list[float]:
    """p99 of `key` in consecutive 10-s windows between t0 and t1 (locust's history rows carry
    the percentiles of the last 10 s): a few seconds in which another process took the cores
    move the whole run's p99 a lot, and these medians much less."""
    out_p, next_t = [], t0 + 10
    with open(out / "locust_stats_history.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            t = float(r["Timestamp"])
            if f"{r['Type']} {r['Name']}" != key or t < next_t or t > t1:
                continue
            next_t = t + 10
            try:
                out_p.append(float(r["99%"]))
            except ValueError:
                pass
    return out_p


def cluster_figures(rows: list[dict], out: Path, users: int, seconds: int) -> dict:
    """Whole-cluster CPU (every sampled process but NOT_CLUSTER) over the load window, and its
    CPU-ms per delivered message: the figure the product is compared with the relay by."""
    window = load_window(out, users, seconds)
    if window is None:
        return {"window_s": None, "delivered": None, "cpu_mean_pct": None,
                "cpu_ms_per_message": None, "msgs_per_s": None, "groups": []}
    t0, t1, delivered = window
    figures = process_figures(rows, t0, t1)
    groups = sorted(g for g, v in figures.items()
                    if g not in NOT_CLUSTER and v.get("cpu_mean_pct") is not None)
    cpu = sum(figures[g]["cpu_mean_pct"] for g in groups)
    span = t1 - t0
    p99s = window_p99s(out, DELIVERED, t0, t1)
    return {"delivery_p99_10s_windows": p99s,
            "delivery_p99_10s_median": statistics.median(p99s) if p99s else None,
            "window_s": span, "delivered": delivered, "cpu_mean_pct": round(cpu, 1),
            "cpu_ms_per_message": round(cpu / 100 * span * 1000 / delivered, 3)
            if delivered else None,
            "msgs_per_s": round(delivered / span, 1),
            "locust_cpu_mean_pct": (figures.get("locust") or {}).get("cpu_mean_pct"),
            "others_cpu_mean_pct_of_one_core": (figures.get("machine (all cores)") or {}).get(
                "others_cpu_mean_pct_of_one_core"),
            "groups": groups}


# --------------------------------------------------------------------------- one side's report

def write(out: Path, info: dict, rows: list[dict], rss_before: dict[str, int], t_start: float,
          t_end: float) -> dict:
    """One phase's report, from info (its parameters, as run.py's run_phase made them), the
    sampler's rows and the RSS of each web worker (or the relay) before the run: adds the
    figures to info, writes run.json, summary.md and plot.png into `out`, prints the summary;
    {"info", "lines", "bad"} (bad: something lost, duplicated, misdelivered, an error, no
    ledger check, or a run cut short)."""
    users, spawn_rate, mode = info["users"], info["spawn_rate"], info["mode"]
    seconds, procs, stamp = info["duration_s"], info["locust_processes"], info["started"]
    kind, uptime = info["kind"], info["uptime_before"]
    summary = {}
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
    stats = read_stats(out)
    spawn_end = t_start + users / spawn_rate
    steady = (min(spawn_end, t_end - 10), t_end)
    figures = process_figures(rows, *steady)
    info["processes"] = figures
    info["kib_per_connection"] = kib_per_connection(rows, rss_before)
    lat = {}
    for key in ("MATCH join → matched", "MATCH join → matched (interests)",
                "MATCH both waiting → matched", "ACK message", "DELIVERY send → partner",
                "DELIVERY server → partner", "ACK join", "ACK next", "RESUME reload → resumed",
                "WS connect"):
        lat[key] = {p: pct(stats, key, p) for p in ("50%", "95%", "99%", "100%")}
        lat[key]["count"] = int(stats[key]["Request Count"]) if key in stats else 0
    info["latency_ms"] = lat
    # messages/s in the steady phase: acked messages per second from the history file
    rates = {"ACK message": [], "DELIVERY send → partner": []}
    hist = out / "locust_stats_history.csv"
    if hist.exists():
        with open(hist, newline="") as fh:
            for r in csv.DictReader(fh):
                key = f"{r['Type']} {r['Name']}"
                if key in rates and steady[0] <= float(r["Timestamp"]) <= steady[1] - 6:
                    try:
                        rates[key].append(float(r["Requests/s"]))
                    except ValueError:
                        pass
    info["msgs_per_s"] = {k: round(sum(v) / len(v), 1) if v else None for k, v in rates.items()}
    m = summary.get("messages", {})
    errors = summary.get("errors", {})
    info["verdict"] = {k: m.get(k) for k in ("expected", "received", "lost", "duplicates",
                                             "misdelivered", "seq mismatch", "matched missing")}
    info["errors"] = errors
    info["stopped_early"] = bool(summary.get("stopped_early"))
    info["cluster"] = cluster_figures(rows, out, users, seconds)
    (out / "run.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))

    def trio(key):
        d = lat.get(key, {})
        return "/".join(fmt(d.get(p)) for p in ("50%", "95%", "99%"))

    kib = info["kib_per_connection"]
    kib_txt = ", ".join(f"{w}: {v['kib_per_connection']} ({v['connections']} conns)"
                        for w, v in sorted(kib.items())) or "–"
    proc_txt = "; ".join(f"{g} {fmt(v.get('cpu_mean_pct'))}% / {fmt(v.get('rss_max_mib'))} MiB"
                         f" (waited for a CPU {fmt(v.get('runq_wait_mean_pct'))}%)"
                         for g, v in sorted(figures.items())
                         if g != "machine (all cores)" and not g.endswith("arbiter"))
    lines = [
        f"# Load test {stamp}{' (baseline relay)' if kind == 'baseline' else ''}: "
        f"{users} users ({mode}), {spawn_rate}/s, {seconds} s",
        "",
        f"- target: {info['stack']}; locust processes: {procs}; exit code {info['locust_exit_code']}",
        f"- before the run: `{uptime}`",
        f"- machine CPU (all cores, steady phase): "
        f"{fmt(figures.get('machine (all cores)', {}).get('cpu_mean_pct'))}%; of which other "
        f"processes than this run's (% of one core): "
        f"{fmt(figures.get('machine (all cores)', {}).get('others_cpu_mean_pct_of_one_core'))}; "
        f"mean 1-min load average "
        f"{fmt(figures.get('machine (all cores)', {}).get('load_avg_1min_mean'), 2)}",
        "",
        "| users | match join→matched p50/p95/p99 ms | match both waiting→matched | "
        "ack p50/p95/p99 | delivery p50/p95/p99 | msgs/s sent/recv | expected | lost | dup | "
        "errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {users} | {trio('MATCH join → matched')} | {trio('MATCH both waiting → matched')}"
        f" | {trio('ACK message')} | {trio('DELIVERY send → partner')} | "
        f"{fmt(info['msgs_per_s']['ACK message'], 1)}/"
        f"{fmt(info['msgs_per_s']['DELIVERY send → partner'], 1)} | {m.get('expected', '–')} | "
        f"{m.get('lost', '–')} | {m.get('duplicates', '–')} | "
        f"{sum(errors.values()) if errors else 0} |",
        "",
        f"- errors by code: {json.dumps(errors, ensure_ascii=False) if errors else 'none'}",
        f"- run: {summary.get('elapsed_s')} s until the check"
        f"{' - STOPPED EARLY (see locust.log)' if summary.get('stopped_early') else ''}; "
        f"messages settled {summary.get('settled_s')} s after the {5} s drain",
        f"- ledger: {json.dumps(m, ensure_ascii=False)}",
        f"- CPU mean % of one core / max RSS, steady phase: {proc_txt}",
        f"- KiB per connection in a web worker (RSS delta / connections): {kib_txt}",
        f"- whole cluster ({', '.join(info['cluster']['groups']) or '–'}), load window "
        f"{fmt(info['cluster']['window_s'])} s: CPU {fmt(info['cluster']['cpu_mean_pct'], 1)}% "
        f"of one core, {fmt(info['cluster']['msgs_per_s'], 1)} messages delivered/s, "
        f"{fmt(info['cluster']['cpu_ms_per_message'], 2)} CPU-ms per delivered message",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    try:
        plot(out, rows, f"{users} users, {spawn_rate}/s, {seconds} s, "
                                f"{procs} locust process(es); {info['stack']}")
    except Exception as exc:  # a report without a plot is still a report
        print(f"loadtest: no plot: {exc!r}", file=sys.stderr)
    print("\n".join(lines), flush=True)
    bad = any(m.get(k) for k in ("lost", "duplicates", "misdelivered", "seq mismatch",
                                 "matched missing")) or bool(errors) or not summary \
        or bool(summary.get("stopped_early"))
    return {"info": info, "lines": lines, "bad": bad}
