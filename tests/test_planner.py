"""The planner: skip what is already there, cut the rest into batches, in row order."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.ledger import PlanRow
from daemon.planner import ALREADY_UPLOADED, plan

rows_strategy = st.lists(
    st.tuples(st.sampled_from(["h1", "h2", "h3"]), st.sampled_from([None, "h1", "h2"])), max_size=450
).map(lambda specs: [PlanRow(line, f"K{line}", h, up) for line, (h, up) in enumerate(specs, start=2)])


@given(rows_strategy, st.integers(min_value=1, max_value=100))
def test_every_row_is_skipped_or_sent_exactly_once_in_order(rows: list[PlanRow], size: int) -> None:
    p = plan(rows, sync_batch_size=size)
    sent = [line for b in p.batches for line in b.lines]
    skipped = [line for line, _ in p.skipped]
    assert sorted(sent + skipped) == [r.line for r in rows]
    assert sent == sorted(sent)
    assert skipped == [r.line for r in rows if r.uploaded_hash == r.data_hash]
    assert all(detail == ALREADY_UPLOADED for _, detail in p.skipped)
    assert all(1 <= len(b.lines) <= size for b in p.batches)
    assert p.api_calls == -(-len(sent) // size)  # the lower bound: ceil(rows to send / batch size)
    assert all(b.kind == "sync" for b in p.batches)


@pytest.mark.parametrize("size", [0, 101])
def test_a_batch_size_outside_the_api_limit_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.100"):
        plan([], sync_batch_size=size)
