"""The load test itself, CI-sized: 20 users for 15 s, first against the baseline relay, then
against a real stack, in one run of `loadtests/run.py` (what `make loadtest` runs), started in
the background when a serial session starts, or by the test itself under `pytest -n N`
(tests/conftest.py, LoadtestRun).

Each side runs with two locust processes (the product against two web workers), and the test
asserts what must hold at any speed: nothing lost, nothing duplicated or misdelivered, no error
of any code, on both sides; and the side-by-side report. Never a timing: latencies are reported,
not asserted.
"""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest


def assert_clean_ledger(out, context: str) -> dict:
    """summary.json of one side: both locust processes sent their ledger, every expected message
    arrived once, to the right user, in order; no error of any code."""
    assert (out / "summary.json").exists(), context
    summary = json.loads((out / "summary.json").read_text())
    m = summary["messages"]
    assert summary["processes"] == 2, context  # both locust workers sent their ledger
    assert m["expected"] > 0 and m["received"] == m["expected"], context
    for key in ("lost", "duplicates", "misdelivered", "seq mismatch", "matched missing"):
        assert m[key] == 0, f"{key}: {m[key]}; examples: {summary['lost_examples']}\n{context}"
    assert summary["errors"] == {}, context
    return summary


@pytest.fixture
def loadtest_run(loadtest_in_background, tmp_path):
    """The session's run in the background, or else one of this test's own."""
    from conftest import LoadtestRun

    if loadtest_in_background is not None:
        yield LoadtestRun.started(loadtest_in_background)
        return
    run = LoadtestRun(tmp_path)
    yield run
    run.stop()


def test_loadtest_smoke_product_and_baseline_relay(loadtest_run):
    """The product (two web workers of a stack of the run's own, --target) and the baseline
    relay (loadtests/relay.py, --baseline) under the same locust users: clean ledgers on both
    sides, so a protocol change that the relay no longer follows is caught here, not in a
    1000-user run; locust's reports written; the side-by-side comparison in run.json and
    summary.md. The run started with the session (tests/conftest.py, LoadtestRun): here it is
    waited for and checked."""
    lt = loadtest_run
    stack, out = lt.stack, lt.out
    base = out / "baseline"
    run = lt.wait(timeout=240)

    def tail(path, n):
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    context = (f"run.py:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n"
               f"locust.log:\n{tail(out / 'locust.log', 6000)}\n"
               f"baseline locust.log:\n{tail(base / 'locust.log', 6000)}\n"
               f"relay.log:\n{tail(base / 'relay.log', 3000)}")

    assert_clean_ledger(base, "the baseline relay's run\n" + context)
    assert_clean_ledger(out, "the product's run\n" + context)
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

    # the side-by-side report: the relay as the whole "cluster" of the baseline, delivering, and
    # the product beside it (both measured, so both ratios are figures)
    report = json.loads((out / "run.json").read_text())
    assert report["baseline"]["cluster"]["groups"] == ["relay"], report["baseline"]["cluster"]
    assert report["baseline"]["cluster"]["delivered"] > 0, report["baseline"]["cluster"]
    assert report["kind"] == "product" and report["cluster"]["delivered"] > 0, report["cluster"]
    assert report["comparison"]["p99_delivery_ratio"] > 0, report["comparison"]
    assert report["comparison"]["cpu_per_generator_cpu_ratio"] > 0, report["comparison"]
    summary_md = (out / "summary.md").read_text()
    assert "baseline (relay.py)" in summary_md and "product / baseline" in summary_md, summary_md
