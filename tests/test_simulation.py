"""The deterministic simulation of the whole service (tests/simulation.py): seeded fault schedules through the real
loop, the invariants checked after each. A failure names its seed and the one-line command that replays it.

SIM_SCHEDULES sets how many schedules the full run takes (default 2,000), e.g. `SIM_SCHEDULES=100000 ./check -k
simulation`; the fast tier runs a few hundred other seeds.
"""

import os
import time

import pytest
from simulation import run_parallel, run_seed

JOBS = max(1, min(2, os.cpu_count() or 1))


def report(first: int, count: int) -> None:
    started = time.monotonic()
    passed, failed = run_parallel(first, count, JOBS)
    elapsed = time.monotonic() - started
    print(f"\nsimulation: {passed} schedules passed, {len(failed)} failed in {elapsed:.1f} s (seeds {first}..)")
    assert not failed, "\n\n".join(failed[:5])
    assert passed == count


def test_a_few_hundred_schedules_hold_every_invariant() -> None:
    report(1_000_000, 300)


@pytest.mark.slow
def test_thousands_of_schedules_hold_every_invariant() -> None:
    report(0, int(os.environ.get("SIM_SCHEDULES", "2000")))


def test_a_seed_replays_exactly() -> None:
    first, second = run_seed(4242), run_seed(4242)
    assert first == second  # the same rows' fates, the same requests, the same simulated time
    assert run_seed(4243)["fingerprint"] != first["fingerprint"]
