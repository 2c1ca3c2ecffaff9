"""The planner: every row once, limits kept, and in auto mode the fewest calls, checked against brute force."""

from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.planner import plan


def groups_from(sizes: list[int]) -> dict[str, list[int]]:
    """Groups of rows with interleaved line numbers, as rows of different data come mixed in a file."""
    groups: dict[str, list[int]] = {f"h{g}": [] for g in range(len(sizes))}
    line = 2
    remaining = list(sizes)
    while any(remaining):
        for g, left in enumerate(remaining):
            if left:
                groups[f"h{g}"].append(line)
                line += 1
                remaining[g] -= 1
    return groups


def brute_force(sizes: list[int], sync_size: int, async_size: int) -> int:
    """The fewest calls over every split of every group between async jobs and the shared sync pool."""
    best = None
    for async_rows in product(*(range(n + 1) for n in sizes)):
        jobs = sum(-(-m // async_size) for m in async_rows)
        sync_rows = sum(sizes) - sum(async_rows)
        calls = jobs + -(-sync_rows // sync_size)
        best = calls if best is None else min(best, calls)
    return best or 0


small = st.lists(st.integers(min_value=1, max_value=7), max_size=3)


@given(small, st.integers(1, 4), st.integers(1, 5))
def test_auto_uses_the_fewest_calls_possible(sizes: list[int], sync_size: int, async_size: int) -> None:
    p = plan(groups_from(sizes), mode="auto", sync_batch_size=sync_size, async_batch_size=async_size)
    assert p.api_calls == brute_force(sizes, sync_size, async_size)


@given(
    st.lists(st.integers(min_value=1, max_value=2500), max_size=8),
    st.sampled_from(["sync", "async", "auto"]),
    st.integers(1, 100),
    st.integers(1, 1000),
)
def test_every_row_is_sent_once_within_the_limits(sizes: list[int], mode: str, sync_size: int, async_size: int) -> None:
    groups = groups_from(sizes)
    p = plan(groups, mode=mode, sync_batch_size=sync_size, async_batch_size=async_size)
    sent = sorted(line for b in p.batches for line in b.lines)
    assert sent == sorted(line for lines in groups.values() for line in lines)
    for b in p.batches:
        if b.kind == "async":
            assert b.data_hash is not None
            assert 1 <= len(b.lines) <= async_size
            assert set(b.lines) <= set(groups[b.data_hash])
            assert list(b.lines) == sorted(b.lines)
        else:
            assert b.data_hash is None
            assert 1 <= len(b.lines) <= sync_size
    sync_lines = [line for b in p.batches if b.kind == "sync" for line in b.lines]
    assert sync_lines == sorted(sync_lines)
    # Async jobs first, each kind in the order of its first line (the ledger queues them a stretch at a time).
    kinds = [b.kind for b in p.batches]
    assert kinds == sorted(kinds)  # "async" < "sync"
    for kind in ("async", "sync"):
        firsts = [b.lines[0] for b in p.batches if b.kind == kind]
        assert firsts == sorted(firsts)
    assert p.sync_only_calls == -(-sum(sizes) // sync_size)
    assert p.groups == len(sizes)
    if mode == "sync":
        assert p.async_jobs == 0
        assert p.api_calls == p.sync_only_calls
    if mode == "async":
        assert p.sync_calls == 0
        assert p.async_jobs == sum(-(-n // async_size) for n in sizes)
    if mode == "auto":
        forced = plan(groups, mode="async", sync_batch_size=sync_size, async_batch_size=async_size)
        assert p.api_calls <= min(p.sync_only_calls, forced.api_calls)


def test_a_production_batch_goes_async_and_odd_rows_sync() -> None:
    # 5,000 rows in 3 groups of identical data, plus 300 rows with data of their own.
    sizes = [2000, 2000, 1000] + [1] * 300
    p = plan(groups_from(sizes), mode="auto", sync_batch_size=100, async_batch_size=1000)
    assert (p.async_jobs, p.sync_calls) == (5, 3)
    assert p.sync_only_calls == 53


def test_auto_prefers_sync_on_a_tie() -> None:
    p = plan({"h": list(range(2, 102))}, mode="auto", sync_batch_size=100, async_batch_size=1000)
    assert (p.async_jobs, p.sync_calls) == (0, 1)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("sync_batch_size", 0, "sync_batch_size"),
        ("sync_batch_size", 101, "sync_batch_size"),
        ("async_batch_size", 1001, "async_batch_size"),
        ("mode", "fast", "mode"),
    ],
)
def test_options_outside_the_api_limits_are_refused(option: str, value: object, message: str) -> None:
    options: dict[str, object] = {"mode": "auto", "sync_batch_size": 100, "async_batch_size": 1000, option: value}
    with pytest.raises(ValueError, match=message):
        plan({}, **options)  # type: ignore[arg-type]
