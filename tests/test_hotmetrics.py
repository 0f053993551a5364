"""web/hotmetrics.py against prometheus_client's own Counter and Histogram: the same random
updates on both export the same text, `_created` samples aside (their times differ) and with
them switched off, and the same misuse fails the same way. Pure logic: no server."""
from __future__ import annotations

import math
import random
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import metrics as client

from web.hotmetrics import HotCounter, HotHistogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CODES = ("rate_limited", "filtered", "banned", "internal", 7)


def build(counter, histogram):
    registry = CollectorRegistry()
    made = {
        "plain": counter("demo_events", "Events, unlabelled", registry=registry),
        "labelled": counter("demo_refusals_total", "Refusals by code", ["code"],
                            registry=registry),
        "two": counter("demo_pairs", "Two labels", ["a", "b"], registry=registry),
        "hist": histogram("demo_seconds", "A latency", buckets=BUCKETS, registry=registry),
    }
    made["labelled"].labels("early")  # present from the start, as web/metrics.py does
    return registry, made


def apply(made, rnd: random.Random) -> None:
    for _ in range(2000):
        op = rnd.randrange(4)
        if op == 0:
            made["plain"].inc(rnd.choice((1, 1, 2, 0.5)))
        elif op == 1:
            made["labelled"].labels(rnd.choice(CODES)).inc()
        elif op == 2:
            made["two"].labels(rnd.choice("xy"), rnd.choice("pq")).inc()
        else:
            made["hist"].observe(rnd.choice((
                rnd.random() * 3, rnd.expovariate(200), 0.0, 0.001, 2.5, 7.0, math.inf)))


def text(registry) -> str:
    return re.sub(r"(?m)^(\w+_created(\{[^}]*\})?) \S+$", r"\1 <time>",
                  generate_latest(registry).decode())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("created", [True, False])
def test_the_same_updates_export_the_same_text(seed, created):
    was = client._use_created
    client._use_created = created
    try:
        ours, hot = build(HotCounter, HotHistogram)
        theirs, lib = build(Counter, Histogram)
        apply(hot, random.Random(seed))
        apply(lib, random.Random(seed))
        got, want = text(ours), text(theirs)
    finally:
        client._use_created = was
    assert got == want
    assert ("_created" in got) == created
    assert "demo_refusals_total{code=\"7\"}" in got


def test_created_is_when_the_series_was_made():
    registry, made = build(HotCounter, HotHistogram)
    made["labelled"].labels("late").inc()
    samples = {(s.name, tuple(s.labels.values())): s.value
               for family in registry.collect() for s in family.samples}
    assert samples[("demo_refusals_created", ("early",))] <= \
        samples[("demo_refusals_created", ("late",))]
    assert samples[("demo_seconds_created", ())] > 1.5e9


def test_a_nan_is_summed_but_counted_in_no_bucket_as_by_the_library():
    (_, hot), (_, lib) = build(HotCounter, HotHistogram), build(Counter, Histogram)
    for h in (hot["hist"], lib["hist"]):
        h.observe(0.003)
        h.observe(math.nan)

    def values(h) -> dict:
        return {s.name + str(s.labels): s.value for f in h.collect() for s in f.samples
                if not s.name.endswith("_created")}

    got, want = values(hot["hist"]), values(lib["hist"])
    assert math.isnan(got.pop("demo_seconds_sum{}")) and math.isnan(want.pop("demo_seconds_sum{}"))
    assert got == want
    assert got["demo_seconds_count{}"] == 1


@pytest.mark.parametrize("misuse", [
    lambda m: m["plain"].inc(-1),
    lambda m: m["labelled"].inc(),
    lambda m: m["labelled"].labels("a", "b"),
    lambda m: m["two"].labels("a"),
    lambda m: m["labelled"].labels("a").inc(-1),
])
def test_misuse_fails_as_with_the_library(misuse):
    for counter, histogram in ((HotCounter, HotHistogram), (Counter, Histogram)):
        _, made = build(counter, histogram)
        with pytest.raises(ValueError):
            misuse(made)


def test_a_name_already_registered_is_refused():
    registry, _ = build(HotCounter, HotHistogram)
    with pytest.raises(ValueError):
        Counter("demo_events", "again", registry=registry)
    with pytest.raises(ValueError):
        HotCounter("demo_seconds", "again", registry=registry)
