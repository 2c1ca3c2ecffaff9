"""The emulator's knobs for the daemon's self-healing tests, over real HTTP: outages per request kind, an absurd
Retry-After, tasks the load balancer loses or that never finish; and which older faults strike task polls."""

from collections.abc import Iterator

import pytest
import requests
from pydantic import SecretStr

from daemon.api import NotFound, ScantrustClient, Throttled, Transient
from daemon.sandbox import Emulator, EmulatorConfig
from daemon.sandbox.clock import ManualClock

TOKEN = "sandbox-token"
ME = "/api/v2/me/"
SYNC = "/api/v2/scm/upload/"
ASYNC = "/api/v2/scm/upload/async/"
HOUR = 3600.0


@pytest.fixture
def emu(clock: ManualClock) -> Iterator[Emulator]:
    """An emulator on a simulated clock: tasks end only when a test moves the clock, so nothing races."""
    config = EmulatorConfig(rate_limit=None, task_pending_seconds=1, task_running_seconds=1)
    with Emulator(config, clock=clock, wall=clock.wall) as emulator:
        yield emulator


def code(n: int) -> str:
    return f"CODE{n:08d}"


def me(http: requests.Session, emu: Emulator) -> requests.Response:
    return http.get(emu.base_url + ME, timeout=5)


def sync(http: requests.Session, emu: Emulator, n: int) -> requests.Response:
    return http.post(emu.base_url + SYNC, json={"items": [{"extended_id": code(n), "lot": "1"}]}, timeout=5)


def job(http: requests.Session, emu: Emulator, n: int) -> requests.Response:
    body = {"constraints": {"extended_id": [code(n)]}, "scm_data": {"lot": "2"}, "reference": f"job {n}"}
    return http.post(emu.base_url + ASYNC, json=body, timeout=5)


def new_task(http: requests.Session, emu: Emulator, n: int) -> str:
    answer = job(http, emu, n)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["task_id"])


def poll(http: requests.Session, emu: Emulator, task_id: str) -> requests.Response:
    return http.get(f"{emu.base_url}/api/v2/scm/tasks/{task_id}/", timeout=5)


# -- outage ----------------------------------------------------------------------------------------------------


def test_an_outage_of_task_polls_leaves_uploads_working(
    emu: Emulator, clock: ManualClock, http: requests.Session
) -> None:
    task_id = new_task(http, emu, 1)
    emu.configure(outage={"scm_task"})
    down = poll(http, emu, task_id)
    assert (down.status_code, down.headers["Content-Type"]) == (503, "text/html")
    assert "Retry-After" not in down.headers
    assert sync(http, emu, 2).status_code == 200
    assert job(http, emu, 3).status_code == 200
    assert me(http, emu).status_code == 200
    clock.advance(2)
    assert poll(http, emu, task_id).status_code == 503  # the task completed meanwhile; nobody can ask
    emu.configure(outage=())
    assert poll(http, emu, task_id).json()["state"] == "complete"
    stats = emu.stats()
    assert (stats.outages, stats.task_polls, stats.sync_calls, stats.async_jobs) == (2, 1, 1, 2)


def test_an_outage_of_uploads_applies_nothing_and_leaves_polls_working(
    emu: Emulator, clock: ManualClock, http: requests.Session
) -> None:
    task_id = new_task(http, emu, 1)
    emu.configure(outage=["scm_upload", "scm_upload_async"])
    assert sync(http, emu, 2).status_code == 503
    assert job(http, emu, 3).status_code == 503
    assert http.post(emu.base_url + "/api/v2/scm/upload", json={}, timeout=5).status_code == 503  # either path
    clock.advance(2)
    assert poll(http, emu, task_id).json()["state"] == "complete"
    assert me(http, emu).status_code == 200
    assert set(emu.all_data()) == {code(1)}
    assert len(emu.tasks()) == 1
    assert emu.stats().outages == 3


def test_an_outage_answers_before_authentication_and_routing_still_comes_first(
    emu: Emulator, http: requests.Session
) -> None:
    emu.configure(outage={"me", "scm_upload", "scm_upload_async", "scm_task"}, revoked=True)
    assert requests.get(emu.base_url + ME, timeout=5).status_code == 503  # no token at all
    assert http.put(emu.base_url + SYNC, timeout=5).status_code == 503  # a wrong method too
    assert http.get(emu.base_url + "/api/v2/nothing/", timeout=5).status_code == 404
    stats = emu.stats()
    assert (stats.outages, stats.auth_failures) == (2, 0)


@pytest.mark.parametrize("bad", ["scm_task", {"scm_tasks"}, {"unknown"}])
def test_outage_refuses_what_is_not_a_set_of_request_kinds(emu: Emulator, bad: object) -> None:
    with pytest.raises(ValueError, match="outage"):
        emu.configure(outage=bad)
    assert emu.config.outage == frozenset()


# -- retry_after_header ----------------------------------------------------------------------------------------


def test_every_429_and_503_carries_the_configured_retry_after(emu: Emulator, http: requests.Session) -> None:
    emu.configure(retry_after_header=100000000)
    emu.throttle_burst(1, retry_after=2)
    burst = sync(http, emu, 1)
    assert (burst.status_code, burst.headers["Retry-After"]) == (429, "100000000")
    assert burst.json()["detail"] == "Request was throttled. Expected available in 2 seconds."  # the detail stays
    emu.configure(rate_limit=1.0)
    assert sync(http, emu, 2).status_code == 200
    over_rate = sync(http, emu, 3)
    assert (over_rate.status_code, over_rate.headers["Retry-After"]) == (429, "100000000")
    emu.configure(rate_limit=None, throttle_rate=1.0)
    injected = job(http, emu, 4)
    assert (injected.status_code, injected.headers["Retry-After"]) == (429, "100000000")
    emu.configure(throttle_rate=0.0, fail_rate=1.0, seed=0)  # seed 0 draws a 503 first, then a 500
    unavailable = me(http, emu)
    assert (unavailable.status_code, unavailable.headers["Retry-After"]) == (503, "100000000")
    server_error = me(http, emu)
    assert server_error.status_code == 500
    assert "Retry-After" not in server_error.headers
    emu.configure(fail_rate=0.0, outage={"scm_task"}, retry_after_header=0.5)
    assert poll(http, emu, "any").headers["Retry-After"] == "0.5"
    emu.configure(retry_after_header=None)
    assert "Retry-After" not in poll(http, emu, "any").headers
    emu.throttle_burst(1, retry_after=2)
    assert sync(http, emu, 5).headers["Retry-After"] == "2"  # the throttle's own figure again


def test_the_client_sees_an_absurd_retry_after_as_it_is(emu: Emulator, http: requests.Session) -> None:
    emu.configure(retry_after_header=100000000, outage={"scm_upload"})
    client = ScantrustClient(emu.base_url, SecretStr(TOKEN), connect_timeout=5, read_timeout=5)
    try:
        with pytest.raises(Transient) as down:
            client.upload_sync("extended_id", [{"extended_id": code(1), "lot": "1"}])
        assert (down.value.status, down.value.retry_after, down.value.ambiguous) == (503, 100000000.0, False)
        emu.configure(outage=(), throttle_rate=1.0)
        with pytest.raises(Throttled) as throttled:
            client.upload_sync("extended_id", [{"extended_id": code(1), "lot": "1"}])
        assert throttled.value.retry_after == 100000000.0
    finally:
        client.close()


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_retry_after_header_must_be_finite_seconds(emu: Emulator, bad: float) -> None:
    with pytest.raises(ValueError, match="retry_after_header"):
        emu.configure(retry_after_header=bad)


# -- task_missing_rate -----------------------------------------------------------------------------------------


def test_a_lost_task_answers_404_though_it_exists(emu: Emulator, clock: ManualClock, http: requests.Session) -> None:
    task_id = new_task(http, emu, 1)
    emu.configure(task_missing_rate=1.0)
    lost = poll(http, emu, task_id)
    assert (lost.status_code, lost.json()) == (404, {"detail": "Not found."})
    assert poll(http, emu, "no-such-task").status_code == 404  # not a lost task: it never existed
    clock.advance(2)
    assert emu.task(task_id).state == "complete"  # the task went on regardless
    emu.configure(task_missing_rate=0.0)
    assert poll(http, emu, task_id).json()["state"] == "complete"
    stats = emu.stats()
    assert (stats.tasks_missing, stats.task_polls) == (1, 3)


def test_lost_tasks_strike_at_the_configured_rate_reproducibly(emu: Emulator, http: requests.Session) -> None:
    task_id = new_task(http, emu, 1)

    def run() -> list[int]:
        emu.configure(seed=4, task_missing_rate=0.5)
        return [poll(http, emu, task_id).status_code for _ in range(40)]

    first = run()
    assert first == run()
    assert 5 < first.count(404) < 35
    assert set(first) == {200, 404}


def test_the_client_sees_a_lost_task_as_not_found(emu: Emulator, http: requests.Session) -> None:
    task_id = new_task(http, emu, 1)
    emu.configure(task_missing_rate=1.0)
    client = ScantrustClient(emu.base_url, SecretStr(TOKEN), connect_timeout=5, read_timeout=5)
    try:
        with pytest.raises(NotFound) as lost:
            client.task(task_id)
    finally:
        client.close()
    assert (lost.value.status, lost.value.ambiguous, lost.value.detail) == (404, False, "Not found.")


# -- task_never_finishes ---------------------------------------------------------------------------------------


def test_a_task_created_while_never_finishes_is_on_stays_pending(
    emu: Emulator, clock: ManualClock, http: requests.Session
) -> None:
    emu.configure(task_never_finishes=True)
    stuck = new_task(http, emu, 1)
    emu.configure(task_never_finishes=False)
    normal = new_task(http, emu, 2)
    emu.configure(task_never_finishes=True)  # switching it on again does not stop a task already under way
    clock.advance(1000 * HOUR)
    body = poll(http, emu, stuck).json()
    assert (body["state"], body["codes_affected"], body["started_at"], body["completed_at"]) == (
        "pending",
        None,
        None,
        None,
    )
    assert poll(http, emu, normal).json()["state"] == "complete"
    assert set(emu.all_data()) == {code(2)}
    assert (emu.stats().tasks_completed, emu.stats().tasks_failed) == (1, 0)


# -- the older faults on task polls ----------------------------------------------------------------------------


def test_resets_injected_errors_and_hangs_strike_task_polls(emu: Emulator, http: requests.Session) -> None:
    task_id = new_task(http, emu, 1)
    emu.configure(reset_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        poll(http, emu, task_id)
    emu.configure(reset_rate=0.0, fail_rate=1.0)
    assert poll(http, emu, task_id).status_code in (500, 502, 503)
    emu.configure(fail_rate=0.0, hang_rate=1.0, hang_seconds=0.05)
    assert poll(http, emu, task_id).status_code == 504
    emu.configure(hang_rate=0.0, slow_rate=1.0, slow_seconds=0.05)
    assert poll(http, emu, task_id).status_code == 200
    stats = emu.stats()
    assert (stats.resets, stats.injected_failures, stats.hangs, stats.slow_answers) == (1, 1, 1, 1)
    assert stats.task_polls == 1  # only the slow one reached the view


def test_throttle_rate_strikes_task_polls_but_not_me_and_the_burst_spares_polls(
    emu: Emulator, http: requests.Session
) -> None:
    task_id = new_task(http, emu, 1)
    emu.configure(throttle_rate=1.0, throttle_retry_after=3)
    throttled = poll(http, emu, task_id)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "3")
    assert me(http, emu).status_code == 200
    emu.configure(throttle_rate=0.0, rate_limit=1.0)
    emu.throttle_burst(5)
    assert poll(http, emu, task_id).status_code == 200  # the burst and the rate limit are the uploads' scope
    assert poll(http, emu, task_id).status_code == 200
    assert emu.stats().throttled == 1


def test_a_revoked_token_refuses_task_polls(emu: Emulator, http: requests.Session) -> None:
    task_id = new_task(http, emu, 1)
    emu.configure(revoked=True)
    assert poll(http, emu, task_id).status_code == 401
    emu.configure(revoked=False, forbidden=True)
    assert poll(http, emu, task_id).status_code == 403
    assert emu.stats().task_polls == 0


def test_applied_then_500_spares_task_polls_and_me(emu: Emulator, http: requests.Session) -> None:
    task_id = new_task(http, emu, 1)
    emu.configure(applied_then_500_rate=1.0)
    assert poll(http, emu, task_id).status_code == 200
    assert me(http, emu).status_code == 200
    assert emu.stats().applied_then_500 == 0


def test_a_failed_task_fate_is_drawn_at_creation_not_at_the_poll(
    emu: Emulator, clock: ManualClock, http: requests.Session
) -> None:
    doomed = new_task(http, emu, 1)  # created with task_fail_rate 0
    emu.configure(task_fail_rate=1.0)
    failing = new_task(http, emu, 2)
    clock.advance(2)
    assert poll(http, emu, doomed).json()["state"] == "complete"
    assert poll(http, emu, failing).json()["state"] == "failed"


# -- seed stability ----------------------------------------------------------------------------------------------


def test_the_draws_per_request_do_not_depend_on_the_knobs_or_on_what_the_request_was(
    emu: Emulator, http: requests.Session
) -> None:
    emu.configure(seed=3)
    ids = [new_task(http, emu, n) for n in range(3)]
    emu.configure(seed=3)
    assert new_task(http, emu, 0) == ids[0]
    emu.configure(outage={"scm_upload_async"})
    assert job(http, emu, 1).status_code == 503  # no task, but the same draws as one that creates a task
    emu.configure(outage=(), task_missing_rate=0.3, fail_rate=0.0001)
    assert new_task(http, emu, 2) == ids[2]
    emu.configure(seed=3)
    assert me(http, emu).status_code == 200
    assert sync(http, emu, 9).status_code == 200
    emu.configure(task_missing_rate=0.0, fail_rate=0.0)
    assert new_task(http, emu, 2) == ids[2]
