"""`make loadtest`: one bounded, headless locust run against a local chat, with a report.

    python loadtests/run.py --users 100 --spawn-rate 10 --duration 2m [--target URL[,URL...]]

Without --target it starts a local cluster on free loopback ports (`python -m stack cluster`:
nginx + WORKERS web workers + matcher + archiver + a private Redis, when nginx is installed;
else `python -m stack run`), with its data in a temporary folder, and stops it afterwards. Only
loopback targets are accepted (127.0.0.1, ::1, localhost), and the size and the length of a run
are bounded (MAX_USERS, MAX_SECONDS).

The baseline: without --target (unless --no-baseline), the same locust load (users, spawn rate,
duration, processes) first runs against loadtests/relay.py, the thinnest relay on the same stack
(one Flask-SocketIO process on gevent, chat state in memory), then against the product; both
are sampled alike and the report puts them side by side: delivery and match percentiles,
whole-cluster CPU (every process but locust and honcho; for the relay, the relay) and CPU-ms
per delivered message, and the two ratios product / baseline beside the issue's goals (p99
delivery <= 3x, CPU per message <= 1.5x, at 1000 users). --baseline-only runs only the relay;
with --target the baseline runs only when --baseline is given.

Writes into loadtests/results/<timestamp>-<users>u/ (or --results-dir):
    locust_stats.csv, locust_stats_history.csv (full history), locust_failures.csv,
    locust_exceptions.csv, report.html   locust's own CSV and HTML report
    summary.json      the locustfile's ledger check: lost, duplicates, errors by code, counts
    procs.csv         CPU and RSS of every process (web workers, matcher, Redis, nginx,
                      archiver, locust) sampled every second with psutil, and connections per
                      web worker (from its /readyz)
    run.json          parameters, `uptime` before the run, per-process figures, KiB/connection
    summary.md        the same as a table row for loadtests/RESULTS.md
    plot.png          users, messages/s, latency percentiles and CPU over time
    locust.log, stack.log
    baseline/         the same files for the relay's run (relay.log instead of stack.log);
                      run.json and summary.md above also carry the side-by-side comparison
Exit code: 0 when nothing was lost, duplicated, misdelivered and no error was counted (in the
product's run and the baseline's); 1 otherwise; 2 for a refused command line.

The parts: this file (the command line, the two phases, locust), stacks.py (the local stack,
the relay, stopping a process group), sampler.py (CPU/RSS per process, py-spy), report.py (one
side's run.json, summary.md, plot.png) and sidebyside.py (the comparison of the two sides).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import psutil

import clusterstats  # loadtests/clusterstats.py (this folder is on sys.path: run as a script)
import report
import sidebyside
from sampler import Sampler, profile
from stacks import RELAY_SCRIPT, LocalStack, RelayProcess, check_loopback, free_port, get_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
LOCUST = str(Path(PY).with_name("locust"))
MAX_USERS = 5000
MAX_SECONDS = 1800


def parse_duration(raw: str) -> int:
    """'90', '90s', '3m', '1h30m' -> seconds."""
    raw = str(raw).strip().lower()
    if raw.isdigit():
        return int(raw)
    total, num = 0, ""
    for ch in raw:
        if ch.isdigit():
            num += ch
        elif ch in "hms" and num:
            total += int(num) * {"h": 3600, "m": 60, "s": 1}[ch]
            num = ""
        else:
            raise ValueError(f"bad duration {raw!r} (e.g. 90, 90s, 3m)")
    if num:
        raise ValueError(f"bad duration {raw!r} (e.g. 90, 90s, 3m)")
    return total


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="loadtests/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=int(os.environ.get("USERS") or 50))
    ap.add_argument("--spawn-rate", type=float, default=float(os.environ.get("SPAWN_RATE") or 10))
    ap.add_argument("--duration", default=os.environ.get("DURATION") or "60s",
                    help="locust --run-time, spawning included (90, 90s, 3m)")
    ap.add_argument("--target", default=os.environ.get("TARGET") or "",
                    help="loopback base URL(s), comma-separated; none: start a local stack")
    ap.add_argument("--processes", default=os.environ.get("PROCESSES") or "auto",
                    help="locust processes: auto (1 up to 300 users, else 2), or a number")
    ap.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or 1),
                    help="web workers of the local cluster")
    ap.add_argument("--stack", choices=("auto", "cluster", "run"), default="auto")
    ap.add_argument("--mode", choices=("chat", "idle"), default="chat")
    ap.add_argument("--results-dir", default="")
    ap.add_argument("--label", default="", help="a note kept in run.json and the summary")
    ap.add_argument("--locust-nice", type=int, default=int(os.environ.get("LOCUST_NICE") or 0),
                    metavar="N", help="run locust under `nice -n N` (0-19): the stack gets the "
                    "cores first, as with a load generator on other machines")
    ap.add_argument("--py-spy", type=int, default=0, metavar="SECONDS",
                    help="once spawning is done, profile each web worker and the matcher "
                         "this long with py-spy (pip install py-spy): py-spy-<name>.txt "
                         "(folded stacks, for any flame graph tool) and py-spy-top.txt")
    base = ap.add_mutually_exclusive_group()
    base.add_argument("--no-baseline", action="store_true",
                      help="skip the baseline (the relay run before the product)")
    base.add_argument("--baseline-only", action="store_true",
                      help="run only the baseline relay (loadtests/relay.py)")
    base.add_argument("--baseline", action="store_true",
                      help="with --target: run the baseline too (without --target it is the "
                           "default)")
    ap.add_argument("--redis-cluster", type=int, default=0, metavar="MASTERS",
                    help="run the product on a local Redis Cluster of this many masters "
                         "(REDIS_CLUSTER_URL in the environment: on that one); the report gives "
                         "each master's share of the chat's scripts")
    ap.add_argument("locust_args", nargs="*", help="more locust options, after --")
    a = ap.parse_args(argv)

    try:
        seconds = parse_duration(a.duration)
        if not 1 <= a.users <= MAX_USERS:
            raise ValueError(f"--users must be 1..{MAX_USERS}")
        if not 5 <= seconds <= MAX_SECONDS:
            raise ValueError(f"--duration must be 5 s..{MAX_SECONDS} s")
        if not 0 < a.spawn_rate <= 1000:
            raise ValueError("--spawn-rate must be in (0, 1000]")
        if not 0 <= a.locust_nice <= 19:
            raise ValueError("--locust-nice must be 0..19")
        targets = [check_loopback(u) for u in a.target.split(",") if u.strip()]
        procs = (1 if a.users <= 300 else 2) if a.processes == "auto" else int(a.processes)
        if not 1 <= procs <= max(2, os.cpu_count() or 1):
            raise ValueError("--processes must be between 1 and the number of cores")
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    with_baseline = a.baseline_only or a.baseline or not (a.no_baseline or targets)
    with_product = not a.baseline_only

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(a.results_dir) if a.results_dir else HERE / "results" / f"{stamp}-{a.users}u"
    out.mkdir(parents=True, exist_ok=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    phases = " then ".join(k for k, on in (("baseline relay", with_baseline),
                                           ("product", with_product)) if on)
    print(f"loadtest: {a.users} users, {a.spawn_rate}/s, {seconds} s, {procs} locust "
          f"process(es); {phases}; uptime: {uptime}\nloadtest: results in {out}", flush=True)

    done: dict[str, dict] = {}
    if with_baseline:
        print(f"loadtest: baseline: the same load against {RELAY_SCRIPT}; its files in "
              f"{out / 'baseline'}", flush=True)
        done["baseline"] = run_phase(a, "baseline", out / "baseline", [], procs, seconds, stamp)
    if with_product:
        cluster = None
        if a.redis_cluster and not targets:
            sys.path.insert(0, str(ROOT / "tests"))
            from rediscluster import RedisClusterServer  # the tests' local cluster

            cluster = RedisClusterServer(masters=a.redis_cluster)
            os.environ["REDIS_CLUSTER_URL"] = cluster.url
            print(f"loadtest: the product on a local Redis Cluster of {a.redis_cluster} masters "
                  f"({cluster.url})", flush=True)
        cluster_url = os.environ.get("REDIS_CLUSTER_URL")
        try:
            nodes = clusterstats.masters(cluster_url) if cluster_url else None
            before, t0 = (clusterstats.reading(nodes), time.time()) if nodes else (None, 0)
            done["product"] = run_phase(a, "product", out, targets, procs, seconds, stamp)
            if nodes:
                spread = clusterstats.spread(before, clusterstats.reading(nodes),
                                             time.time() - t0)
                done["product"]["info"]["redis_cluster"] = spread
                done["product"]["cluster_table"] = clusterstats.table(spread)
        finally:
            if cluster is not None:
                cluster.stop()

    sidebyside.write(out, done, a, seconds, stamp)
    return 1 if any(d["bad"] for d in done.values()) else 0


def run_phase(a, kind: str, out: Path, targets: list[str], procs: int, seconds: int,
              stamp: str) -> dict:
    """One locust run (spawn, run, drain, ledger check) against the product (a local stack or
    --target) or the baseline relay, sampled and reported in `out`: {"info", "lines", "bad"}."""
    out.mkdir(parents=True, exist_ok=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    info = {"users": a.users, "spawn_rate": a.spawn_rate, "duration_s": seconds,
            "locust_processes": procs, "mode": a.mode, "label": a.label,
            "uptime_before": uptime, "cores": os.cpu_count(), "started": stamp, "kind": kind}

    stack = relay = None
    sampler = Sampler({}, out)
    try:
        if kind == "baseline":
            relay = RelayProcess(out)
            info["stack"] = f"baseline: {RELAY_SCRIPT} (one process, chat state in memory)"
            print(f"loadtest: starting the relay on {relay.url}", flush=True)
            relay.wait_ready()
            targets = [relay.url]
            sampler.add_root("relay", relay.p.pid)
            sampler.ports["relay"] = relay.port
        elif not targets:
            stack = LocalStack(out, a.workers, a.stack)
            info["stack"] = f"python -m stack {stack.kind}" + (
                f" (WORKERS={a.workers})" if stack.kind == "cluster" else "")
            print(f"loadtest: starting {info['stack']} on {stack.url}", flush=True)
            stack.wait_ready()
            targets = [stack.url]
            sampler.add_root("stack", stack.p.pid)
        else:
            info["stack"] = "external: " + ",".join(targets)
            # sample the processes that listen on the target ports, when they are ours to see
            for u in targets:
                port = urllib.parse.urlsplit(u).port
                for c in psutil.net_connections(kind="tcp"):
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
                        sampler.add_root(f"target {port}", c.pid)
        info["targets"] = targets
        sampler.refresh()
        time.sleep(2)
        baseline = {}
        for pid, (p, group) in sampler.procs.items():
            if (group.startswith("web") and not group.endswith("arbiter")) or group == "relay":
                try:
                    baseline[group] = p.memory_info().rss // 1024
                except psutil.Error:
                    pass
        # worker ports for an external target: the targets themselves when they are workers
        if not sampler.ports and targets:
            for u in targets:
                try:
                    wid = get_json(u + "/readyz").get("worker")
                except (OSError, ValueError):
                    wid = None
                if wid:
                    sampler.ports[wid] = urllib.parse.urlsplit(u).port
        sampler.start()

        cmd = [LOCUST, "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(a.users),
               "-r", str(a.spawn_rate), "-t", f"{seconds}s", "--host", targets[0],
               "--chat-urls", ",".join(targets), "--chat-mode", a.mode,
               "--chat-summary", str(out / "summary.json"),
               "--csv", str(out / "locust"), "--csv-full-history", "--html",
               str(out / "report.html"), "--stop-timeout", "10", "--only-summary"]
        if procs > 1:
            # A master port of this run's own, on loopback: with the default (5557 on every
            # interface) the workers of another locust run on the machine join this master and
            # get its users (seen: two foreign workers joined a baseline run, ~300 users more).
            port = free_port()
            cmd += ["--processes", str(procs), "--master-bind-host", "127.0.0.1",
                    "--master-bind-port", str(port), "--master-host", "127.0.0.1",
                    "--master-port", str(port)]
        cmd += a.locust_args
        if a.locust_nice:
            # The load generator yields the cores to what it measures, as if it ran elsewhere;
            # both sides of a run get the same, so the comparison stays fair.
            cmd = ["nice", "-n", str(a.locust_nice), *cmd]
        info["locust_command"] = " ".join(cmd)
        t_start = time.time()
        with open(out / "locust.log", "w") as log:
            lp = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
            sampler.add_root("locust", lp.pid)
            spy = None
            if a.py_spy:
                spy = threading.Thread(target=profile, args=(
                    sampler, out, a.users / a.spawn_rate + 5, a.py_spy), daemon=True)
                spy.start()
            try:
                locust_rc = lp.wait(seconds + 240)  # spawn + run + drain + checks, bounded
            except subprocess.TimeoutExpired:
                os.killpg(lp.pid, signal.SIGKILL)
                locust_rc = lp.wait()
                print("loadtest: locust overran its time and was killed", file=sys.stderr)
        t_end = time.time()
        info["locust_exit_code"] = locust_rc
    finally:
        sampler.stop()
        if stack is not None:
            stack.stop()
        if relay is not None:
            relay.stop()

    return report.write(out, info, sampler.rows, baseline, t_start, t_end)


if __name__ == "__main__":
    sys.exit(main())
