"""Counters and histograms for the per-message path: a plain `+=`, read when /metrics is scraped.

prometheus_client's Counter.inc and Histogram.observe take a lock per update (MutexValue: a
gevent lock once the worker is monkey-patched; a histogram takes two) and, for a labelled
counter, build and check the label tuple on every call: py-spy --gil put Counter.inc at 2.2 %
and Histogram.observe at 0.6 % of a loaded web worker's Python time (1000 users, 450 msgs/s),
for the three updates of each message. Timed under gevent monkey-patching (one call, with
timeit's own ~25 ns), inc() went from ~630 ns to ~85 ns, labels(code).inc() from ~1800 ns to
~150 ns, observe() from ~1350 ns to ~185 ns.

No lock is needed: a web worker runs its handlers on one OS thread, in greenlets (gunicorn's
gevent worker), and a greenlet switches only where it waits for I/O, never inside `+=`. A scrape
reads every value between two switches too, so a histogram's buckets, count and sum agree.

Each metric is a custom collector (prometheus_client's documented `collect()` API, yielding
CounterMetricFamily / HistogramMetricFamily) registered on the registry when it is made, as
prometheus_client's own metrics are: /metrics keeps the same families in the same order, with
the same names, HELP, TYPE, labels and `_created` samples (tests/test_hotmetrics.py compares the
two). Everything that is not updated per message stays on prometheus_client (web/metrics.py).
"""
from __future__ import annotations

import time
from bisect import bisect_left

from prometheus_client import REGISTRY
from prometheus_client import metrics as _client
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import INF, floatToGoString


def _created() -> bool:
    """Whether `_created` samples are exported: prometheus_client's own switch
    (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics())."""
    return getattr(_client, "_use_created", True)


class _Count:
    """One counter series: `value` is what the hot path adds to."""

    __slots__ = ("value", "created")

    def __init__(self):
        self.value = 0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HotCounter(_Count):
    """prometheus_client.Counter's `inc()` and `labels(*values).inc()`, without a lock."""

    __slots__ = ("name", "documentation", "labelnames", "_children", "_by_text")

    def __init__(self, name: str, documentation: str, labelnames=(), registry=REGISTRY):
        super().__init__()
        self.name = name[:-6] if name.endswith("_total") else name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple, _Count] = {}  # label values as given -> series
        self._by_text: dict[tuple, _Count] = {}  # label values as exported -> series, in order
        if registry is not None:
            registry.register(self)

    def labels(self, *values) -> _Count:
        try:
            return self._children[values]
        except KeyError:
            return self._add(values)

    def _add(self, values: tuple) -> _Count:
        if len(values) != len(self.labelnames):
            raise ValueError("Incorrect label count")
        text = tuple(str(v) for v in values)
        child = self._by_text.get(text)
        if child is None:
            child = self._by_text[text] = _Count()
        self._children[values] = child
        return child

    def inc(self, amount: float = 1) -> None:
        if amount < 0 or self.labelnames:
            raise ValueError("counter metric is missing label values" if self.labelnames else
                             "Counters can only be incremented by non-negative amounts.")
        self.value += amount

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = _created()
        series = self._by_text.items() if self.labelnames else (((), self),)
        for labels, count in series:
            family.add_metric(labels, count.value, count.created if created else None)
        yield family


class HotHistogram:
    """prometheus_client.Histogram (no labels) and its `observe()`, without a lock."""

    __slots__ = ("name", "documentation", "bounds", "counts", "sum", "created")

    def __init__(self, name: str, documentation: str, buckets, registry=REGISTRY):
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds and bounds[-1] != INF:
            bounds.append(INF)
        if len(bounds) < 2:
            raise ValueError("Must have at least two buckets")
        if bounds[0] < 0:  # the library then exports no _sum; not needed here
            raise ValueError("Negative buckets are not supported")
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(bounds)
        self.counts = [0] * len(bounds)  # per bucket, not cumulative (summed when scraped)
        self.sum = 0.0
        self.created = time.time()
        if registry is not None:
            registry.register(self)

    def observe(self, amount: float) -> None:
        self.sum += amount
        i = bisect_left(self.bounds, amount)  # the first bound >= amount: the last is +Inf
        if i < len(self.bounds) and amount <= self.bounds[i]:  # not for NaN, as the library
            self.counts[i] += 1

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self):
        buckets, acc = [], 0
        for bound, count in zip(self.bounds, self.counts):
            acc += count
            buckets.append((floatToGoString(bound), acc))
        family = HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                       sum_value=self.sum)
        if _created():
            family.add_sample(self.name + "_created", {}, self.created)
        yield family
