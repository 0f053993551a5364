"""The token buckets (web/ratelimit.py): pure logic, no processes."""
from __future__ import annotations

import pytest

from web import ratelimit
from web.ratelimit import KeyedBuckets, TokenBucket


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(ratelimit, "monotonic", lambda: now[0])
    return now


def test_a_bucket_refills_at_its_rate_up_to_its_burst(clock):
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock[0] += 0.25  # half a token: still none
    assert bucket.take() is False
    clock[0] += 0.25  # one whole token
    assert [bucket.take(), bucket.take()] == [True, False]
    clock[0] += 3600  # a long quiet: full again, never more than the burst
    assert bucket.refilled()
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert not bucket.refilled()


def test_a_key_keeps_its_spent_budget_and_others_have_their_own():
    budgets = KeyedBuckets(rate=0.001, burst=2)
    assert [budgets.take("u1") for _ in range(3)] == [True, True, False]
    assert budgets.take("u2") is True  # another user, another bucket
    assert budgets.take("u1") is False  # still spent: nothing refilled it


def test_the_table_stays_bounded_when_every_key_is_busy():
    budgets = KeyedBuckets(rate=0.001, burst=1)
    for i in range(3 * KeyedBuckets.PRUNE_AT):
        budgets.take(f"u{i}")  # each one spent: none can be pruned as quiet
    assert len(budgets.buckets) <= KeyedBuckets.PRUNE_AT
    assert budgets.take(f"u{3 * KeyedBuckets.PRUNE_AT - 1}") is False  # the newest kept
