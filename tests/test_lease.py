"""The work lease between instances that share a ledger: the pure decision, the store on both backends (a storage
contract), Leadership's renewal and its `safe()` window, and FOR UPDATE SKIP LOCKED when a batch is taken."""

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from daemon.lease import WORK, Instance, Leadership, LeaseLostError, may_take, process_alive
from daemon.ledger import Ledger, StateConflict
from daemon.ledger.dialect import open_engine
from daemon.states import FileState

hosts = st.sampled_from(["a", "b", "host-1.example"])
instances = st.builds(Instance, hosts, st.integers(1, 2**22), st.floats(0, 2e9, allow_nan=False))


def dead(pid: int) -> bool:
    return False


def alive(pid: int) -> bool:
    return True


# --- the decision --------------------------------------------------------------------------------------------


@given(instances)
def test_an_instance_id_reads_back(me: Instance) -> None:
    assert Instance.parse(me.id) == Instance(me.host, me.pid, round(me.started, 3))


@given(instances, st.floats(0, 1e10), st.booleans())
def test_a_free_lease_or_ones_own_may_always_be_taken(me: Instance, now: float, others_alive: bool) -> None:
    check = alive if others_alive else dead
    assert may_take(None, None, now, me, check)
    assert may_take(me.id, now + 100.0, now, me, check)


@given(instances, instances, st.floats(0, 1e9), st.floats(0, 100), st.booleans())
def test_another_holders_lease_is_taken_only_when_it_expired_or_its_process_is_gone(
    me: Instance, other: Instance, now: float, left: float, other_alive: bool
) -> None:
    if other.id == me.id:
        return
    expires = now + left
    taken = may_take(other.id, expires, now, me, alive if other_alive else dead)
    gone_here = other.host == me.host and (other.pid == me.pid or not other_alive)
    assert taken == (expires <= now or gone_here)


def test_a_holder_on_another_host_is_never_presumed_dead() -> None:
    me, other = Instance("a", 10, 1.0), Instance("b", 11, 2.0)
    assert not may_take(other.id, 200.0, 100.0, me, dead)  # its pid means nothing here
    assert may_take(other.id, 200.0, 200.0, me, alive)  # expired: yes


def test_process_alive_knows_this_process_and_a_reaped_one() -> None:
    assert process_alive(os.getpid())
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert not process_alive(pid)


# --- the store, on both backends -----------------------------------------------------------------------------


@pytest.fixture
def ledger(ledger_location: Path | str) -> Iterator[Ledger]:
    led = Ledger(ledger_location)
    yield led
    led.close()


A = Instance("host-a", 100, 1.0)
B = Instance("host-b", 200, 2.0)


class TestLeaseStore:
    def test_the_first_taker_holds_it_and_the_other_is_told_who_and_for_how_long(self, ledger: Ledger) -> None:
        first = ledger.take_lease(WORK, A, 30.0, alive=alive)
        assert first.holder == A.id
        assert 29.0 < first.remaining <= 30.0
        second = ledger.take_lease(WORK, B, 30.0, alive=alive)
        assert second.holder == A.id
        assert 28.0 < second.remaining <= 30.0
        assert ledger.lease(WORK).holder == A.id

    def test_a_renewal_extends_it_and_keeps_when_it_was_acquired(self, ledger: Ledger) -> None:
        ledger.take_lease(WORK, A, 1.0, alive=alive)
        acquired = self._acquired(ledger)
        time.sleep(0.05)
        renewed = ledger.take_lease(WORK, A, 30.0, alive=alive)
        assert renewed.holder == A.id
        assert renewed.remaining > 29.0
        assert self._acquired(ledger) == acquired

    def test_an_expired_lease_goes_to_the_next_taker(self, ledger: Ledger) -> None:
        ledger.take_lease(WORK, A, 0.2, alive=alive)
        assert ledger.take_lease(WORK, B, 30.0, alive=alive).holder == A.id
        time.sleep(0.3)
        assert ledger.take_lease(WORK, B, 30.0, alive=alive).holder == B.id
        assert ledger.take_lease(WORK, A, 30.0, alive=alive).holder == B.id  # the old holder is refused now

    def test_a_released_lease_is_free_at_once_and_only_its_holder_releases_it(self, ledger: Ledger) -> None:
        ledger.take_lease(WORK, A, 30.0, alive=alive)
        ledger.release_lease(WORK, B)
        assert ledger.lease(WORK).holder == A.id
        ledger.release_lease(WORK, A)
        assert ledger.lease(WORK).holder is None
        assert ledger.take_lease(WORK, B, 30.0, alive=alive).holder == B.id

    def test_the_times_are_the_database_servers(self, ledger: Ledger) -> None:
        info = ledger.lease(WORK)
        assert abs(info.now - time.time()) < 5.0  # the server on this host: its clock is this one

    def test_a_new_leader_claims_the_open_files_and_new_files_are_its_own(self, ledger: Ledger) -> None:
        ledger.instance = A.id
        open_id = ledger.add_file(sha256="a" * 64, name="a.csv", path="/in/a.csv", size=1, data_key="k", mode="sync")
        done_id = ledger.add_file(sha256="b" * 64, name="b.csv", path="/in/b.csv", size=1, data_key="k", mode="sync")
        for state in (FileState.ACTIVE, FileState.REPORTING, FileState.DONE):
            ledger.transition_file(done_id, state)
        assert ledger.file(open_id).claimed_by == A.id
        assert ledger.claim_open_files(B) == 1
        assert ledger.file(open_id).claimed_by == B.id
        assert ledger.file(done_id).claimed_by == A.id  # a finished file keeps who did it
        assert ledger.claim_open_files(B) == 0

    @staticmethod
    def _acquired(ledger: Ledger) -> float:
        with ledger.connect() as conn:
            return float(conn.execute(text("SELECT acquired_at FROM leases")).scalar_one())


def test_of_two_instances_taking_an_expired_lease_at_once_exactly_one_gets_it(pg_ledger: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ledgers = [Ledger(pg_ledger) for _ in range(4)]
    try:
        ledgers[0].take_lease(WORK, A, 0.1, alive=alive)
        time.sleep(0.2)
        takers = [Instance(f"h{n}", n, 0.0) for n in range(1, 4)]
        with ThreadPoolExecutor(3) as pool:
            seen = list(pool.map(lambda n: ledgers[n].take_lease(WORK, takers[n - 1], 30.0, alive=alive), [1, 2, 3]))
        winner = ledgers[0].lease(WORK).holder
        assert winner in {t.id for t in takers}
        assert [s.holder for s in seen] == [winner] * 3  # each was told the same winner
    finally:
        for led in ledgers:
            led.close()


# --- Leadership ----------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_leadership_renews_when_due_and_is_safe_only_well_inside_its_lease(tmp_path: Path) -> None:
    ledger, clock = Ledger(tmp_path / "l.sqlite3"), Clock()
    try:
        lead = Leadership(ledger, lease_seconds=20.0, renew_seconds=5.0, monotonic=clock, me=A)
        assert not lead.safe()
        assert lead.try_take()
        assert lead.leading
        assert ledger.instance == A.id
        assert lead.safe()
        clock.now += 14.9
        assert lead.safe()
        clock.now += 0.2  # 15.1 s after the take: a renewal is overdue by two intervals
        assert not lead.safe()
        lead.tick()
        assert lead.safe()
        assert ledger.lease(WORK).remaining > 19.0
    finally:
        ledger.close()


def test_leadership_that_finds_another_holder_raises_and_stops_leading(tmp_path: Path) -> None:
    ledger, clock = Ledger(tmp_path / "l.sqlite3"), Clock()
    try:
        lead = Leadership(ledger, lease_seconds=0.3, renew_seconds=0.1, monotonic=clock, me=A)
        assert lead.try_take()
        time.sleep(0.4)  # by the database's clock the lease ran out: B takes it
        assert ledger.take_lease(WORK, B, 30.0, alive=alive).holder == B.id
        clock.now += 0.1
        with pytest.raises(LeaseLostError, match=B.id):
            lead.tick()
        assert not lead.leading
        assert not lead.safe()
        assert ledger.instance is None
    finally:
        ledger.close()


def test_leadership_whose_renewal_fails_leads_on_while_safe_and_tries_again_soon(tmp_path: Path) -> None:
    ledger, clock = Ledger(tmp_path / "l.sqlite3"), Clock()
    try:
        lead = Leadership(ledger, lease_seconds=20.0, renew_seconds=5.0, monotonic=clock, me=A)
        assert lead.try_take()
        with ledger.begin() as conn:
            conn.execute(text("ALTER TABLE leases RENAME TO leases_away"))  # the next renewal fails
        clock.now += 5.0
        lead.tick()  # logged, not raised
        assert lead.leading
        assert lead.safe()
        with ledger.begin() as conn:
            conn.execute(text("ALTER TABLE leases_away RENAME TO leases"))
        clock.now += 1.0  # retried after a second, not a whole interval
        lead.tick()
        assert lead.safe()
        clock.now += 14.9  # safe for lease - renew seconds after the last good renewal, and no longer
        assert lead.safe()
        clock.now += 0.2
        assert not lead.safe()
    finally:
        ledger.close()


def test_a_restarted_service_on_the_same_host_takes_its_dead_predecessors_lease_at_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3")
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        gone = Instance(Instance.this(0.0).host, pid, 5.0)
        ledger.take_lease(WORK, gone, 25.0, alive=process_alive)
        me = Instance.this(10.0)
        assert ledger.take_lease(WORK, me, 25.0, alive=process_alive).holder == me.id
    finally:
        ledger.close()


# --- SKIP LOCKED ---------------------------------------------------------------------------------------------


def test_a_batch_another_instance_is_taking_is_refused_not_waited_for(pg_ledger: str) -> None:
    ledger = Ledger(pg_ledger)
    try:
        file_id = ledger.add_file(sha256="c" * 64, name="c.csv", path="/in/c.csv", size=1, data_key="k", mode="sync")
        records = [(2, "K1", "h1", json.dumps(["K1", "v"]), "pending", "")]
        ledger.insert_rows(file_id, iter(records))
        ledger.transition_file(file_id, FileState.ACTIVE)
        ledger.add_batches(file_id, [("sync", [2], None)])
        batch_id = ledger.due_batches(now=0, limit=1)[0].id
        other = open_engine(ledger.target)
        try:
            with other.begin() as conn:
                conn.execute(text("SELECT id FROM batches WHERE id=:id FOR UPDATE"), {"id": batch_id})
                began = time.monotonic()
                with pytest.raises(StateConflict, match="another instance"):
                    ledger.start_sending(batch_id)
                assert time.monotonic() - began < 2.0  # refused at once, not after the lock is given up
            batch, rows = ledger.start_sending(batch_id)  # the lock is gone: it is taken
            assert batch.id == batch_id
            assert len(rows) == 1
        finally:
            other.dispose()
    finally:
        ledger.close()
