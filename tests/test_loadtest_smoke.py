"""The load test itself, CI-sized: 20 users for 15 s against a real stack started here.

It runs `loadtests/run.py` (what `make loadtest` runs) with two locust processes against two
web workers, and asserts what must hold at any speed: nothing lost, nothing duplicated or
misdelivered, no error of any code. Never a timing: latencies are reported, not asserted.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

from procs import ROOT


def test_loadtest_smoke(make_stack, tmp_path):
    stack = make_stack(workers=2)
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "run.py"), "--users", "20", "--spawn-rate",
         "10", "--duration", "15", "--processes", "2", "--target", ",".join(stack.urls()),
         "--results-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    log = (out / "locust.log").read_text(errors="replace") if (out / "locust.log").exists() else ""
    context = f"run.py:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}\nlocust.log:\n{log[-6000:]}"

    assert (out / "summary.json").exists(), context
    summary = json.loads((out / "summary.json").read_text())
    m = summary["messages"]
    assert summary["processes"] == 2, context  # both locust workers sent their ledger
    assert m["expected"] > 0 and m["received"] == m["expected"], context
    for key in ("lost", "duplicates", "misdelivered", "seq mismatch", "matched missing"):
        assert m[key] == 0, f"{key}: {m[key]}; examples: {summary['lost_examples']}\n{context}"
    assert summary["errors"] == {}, context
    assert run.returncode == 0, context

    # locust's own statistics carry the figures, and its reports were written
    with open(out / "locust_stats.csv", newline="") as fh:
        rows = {f"{r['Type']} {r['Name']}": r for r in csv.DictReader(fh)}
    for key in ("MATCH join → matched", "ACK message", "DELIVERY send → partner"):
        assert int(rows[key]["Request Count"]) > 0, key
        assert int(rows[key]["Failure Count"]) == 0, key
    assert not [k for k, r in rows.items() if k.startswith(("CHECK", "ERROR", "EVENT"))
                and int(r["Failure Count"])], rows.keys()
    assert (out / "report.html").stat().st_size > 0
    assert (out / "locust_stats_history.csv").exists()
    if importlib.util.find_spec("matplotlib"):
        assert (out / "plot.png").stat().st_size > 0
    for p in stack.procs():
        assert p.alive(), f"{p.name} died during the load test:\n{p.output()[-4000:]}"


def test_loadtest_baseline_smoke(tmp_path):
    """The baseline relay (loadtests/relay.py) under the same locust users: clean ledgers, so a
    protocol change that the relay no longer follows is caught here, not in a 1000-user run."""
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "run.py"), "--users", "20", "--spawn-rate",
         "10", "--duration", "15", "--processes", "2", "--baseline-only",
         "--results-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    base = out / "baseline"
    log = (base / "locust.log").read_text(errors="replace") if (base / "locust.log").exists() \
        else ""
    relay_log = (base / "relay.log").read_text(errors="replace") \
        if (base / "relay.log").exists() else ""
    context = (f"run.py:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}\nlocust.log:\n{log[-6000:]}"
               f"\nrelay.log:\n{relay_log[-3000:]}")

    assert (base / "summary.json").exists(), context
    summary = json.loads((base / "summary.json").read_text())
    m = summary["messages"]
    assert summary["processes"] == 2, context
    assert m["expected"] > 0 and m["received"] == m["expected"], context
    for key in ("lost", "duplicates", "misdelivered", "seq mismatch", "matched missing"):
        assert m[key] == 0, f"{key}: {m[key]}; examples: {summary['lost_examples']}\n{context}"
    assert summary["errors"] == {}, context
    assert run.returncode == 0, context

    # the side-by-side report exists, with the relay as the whole "cluster" and no product run
    report = json.loads((out / "run.json").read_text())
    assert report["baseline"]["cluster"]["groups"] == ["relay"], report["baseline"]["cluster"]
    assert report["baseline"]["cluster"]["delivered"] > 0, report["baseline"]["cluster"]
    assert report["comparison"]["p99_delivery_ratio"] is None  # no product in this run
    assert "baseline (relay.py)" in (out / "summary.md").read_text()
