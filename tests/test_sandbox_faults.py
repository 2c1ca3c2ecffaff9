"""The emulator's fault knobs (issue 6): poison codes, partial application, 429 bursts, resets, hangs,
applied-then-500 and a token revoked at run time, each over real HTTP."""

import threading
import time

import pytest
import requests

from daemon.sandbox import Emulator

TOKEN = "sandbox-token"
SYNC = "/api/v2/scm/upload/"
ASYNC = "/api/v2/scm/upload/async/"


def code(n: int) -> str:
    return f"CODE{n:08d}"


def sync(http: requests.Session, emulator: Emulator, *ns: int, timeout: float = 5) -> requests.Response:
    items = [{"extended_id": code(n), "lot": "1"} for n in ns]
    return http.post(emulator.base_url + SYNC, json={"items": items}, timeout=timeout)


def job(http: requests.Session, emulator: Emulator, *ns: int) -> requests.Response:
    body = {"constraints": {"extended_id": [code(n) for n in ns]}, "scm_data": {"lot": "1"}, "reference": "r"}
    return http.post(emulator.base_url + ASYNC, json=body, timeout=5)


def me(http: requests.Session, emulator: Emulator) -> int:
    return http.get(emulator.base_url + "/api/v2/me/", timeout=5).status_code


# -- poison codes ----------------------------------------------------------------------------------------------


def test_a_poison_code_refuses_the_batch_with_aligned_item_errors(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(poison_codes={code(2), code(4)})
    answer = sync(http, emulator, 1, 2, 3, 4)
    assert answer.status_code == 400
    invalid = {"extended_id": ["Invalid code."]}
    assert answer.json() == {"items": [{}, invalid, {}, invalid]}
    assert emulator.all_data() == {}
    stats = emulator.stats()
    assert (stats.poisoned, stats.rejected, stats.sync_calls, stats.partial_applications) == (1, 1, 0, 0)
    assert sync(http, emulator, 1, 3).status_code == 200  # without the poison codes it goes through


def test_the_detail_style_gives_no_hint(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(poison_codes=[code(2)], poison_style="detail")
    answer = sync(http, emulator, 1, 2, 3)
    assert (answer.status_code, answer.json()) == (400, {"detail": "Invalid code in batch."})


def test_partial_application_applies_the_items_before_the_first_poisoned_one(
    emulator: Emulator, http: requests.Session
) -> None:
    emulator.configure(poison_codes={code(3), code(5)}, partial_apply=True)
    assert sync(http, emulator, 1, 2, 3, 4, 5).status_code == 400
    assert set(emulator.all_data()) == {code(1), code(2)}
    assert [emulator.transactions("extended_id", code(n)) for n in range(1, 6)] == [1, 1, 0, 0, 0]
    assert sync(http, emulator, 3, 1).status_code == 400  # poisoned first: nothing applied, not partial
    assert emulator.transactions("extended_id", code(1)) == 1
    stats = emulator.stats()
    assert (stats.poisoned, stats.partial_applications) == (2, 1)


@pytest.mark.parametrize(
    ("style", "body"),
    [
        ("items", {"constraints": {"extended_id": {"1": ["Invalid code."]}}}),
        ("detail", {"detail": "Invalid code in batch."}),
    ],
)
def test_a_poison_code_refuses_an_async_job(
    emulator: Emulator, http: requests.Session, style: str, body: object
) -> None:
    emulator.configure(poison_codes={code(2)}, poison_style=style)
    answer = job(http, emulator, 1, 2)
    assert (answer.status_code, answer.json()) == (400, body)
    assert emulator.tasks() == ()
    assert (emulator.stats().poisoned, emulator.stats().async_rejected) == (1, 1)


# -- throttling ------------------------------------------------------------------------------------------------


def test_a_throttle_burst_refuses_the_next_n_updates(emulator: Emulator, http: requests.Session) -> None:
    emulator.throttle_burst(3, retry_after=2.5)
    assert me(http, emulator) == 200  # outside the scm_update scope: does not use up the burst
    answers = [sync(http, emulator, 1), job(http, emulator, 2), sync(http, emulator, 3), sync(http, emulator, 4)]
    assert [a.status_code for a in answers] == [429, 429, 429, 200]
    assert answers[0].headers["Retry-After"] == "3"
    assert answers[0].json() == {
        "detail": "Request was throttled. Expected available in 3 seconds.",
        "code": "throttled",
    }
    assert set(emulator.all_data()) == {code(4)}
    assert emulator.stats().throttled == 3


def test_a_throttle_burst_can_be_cancelled_and_is_checked(emulator: Emulator, http: requests.Session) -> None:
    emulator.throttle_burst(5)
    emulator.throttle_burst(0)
    assert sync(http, emulator, 1).status_code == 200
    with pytest.raises(ValueError, match="throttle_burst"):
        emulator.throttle_burst(-1)


def test_injected_throttling(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(throttle_rate=1.0, throttle_retry_after=4)
    answer = sync(http, emulator, 1)
    assert (answer.status_code, answer.headers["Retry-After"]) == (429, "4")
    assert me(http, emulator) == 200
    assert emulator.all_data() == {}


# -- resets, hangs, applied-then-500 --------------------------------------------------------------------------


def test_a_reset_drops_the_connection_and_applies_nothing(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(reset_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        sync(http, emulator, 1)
    with pytest.raises(requests.ConnectionError):
        job(http, emulator, 2)
    assert emulator.all_data() == {}
    assert emulator.tasks() == ()
    assert emulator.stats().resets == 2
    emulator.configure(reset_rate=0.0)
    assert sync(http, emulator, 1).status_code == 200  # the server itself is fine


def test_a_hang_outlasts_the_read_timeout_and_applies_nothing(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(hang_rate=1.0, hang_seconds=5.0)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        sync(http, emulator, 1, timeout=0.2)
    assert time.monotonic() - started < 2
    assert emulator.all_data() == {}
    assert emulator.stats().hangs == 1


def test_a_hang_ends_in_a_gateway_timeout(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(hang_rate=1.0, hang_seconds=0.1)
    started = time.monotonic()
    answer = sync(http, emulator, 1)
    assert time.monotonic() - started >= 0.1
    assert answer.status_code == 504
    assert "Gateway" in answer.text
    assert emulator.all_data() == {}


def test_stop_does_not_wait_for_a_hang(http: requests.Session) -> None:
    emu = Emulator()
    emu.start()
    emu.configure(hang_rate=1.0, hang_seconds=30.0)

    def call() -> None:
        with pytest.raises(requests.RequestException):
            sync(http, emu, 1)

    caller = threading.Thread(target=call)
    caller.start()
    while emu.stats().hangs == 0:
        time.sleep(0.01)
    started = time.monotonic()
    emu.stop()
    caller.join(5)
    assert time.monotonic() - started < 2
    assert not caller.is_alive()


def test_applied_then_500(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(applied_then_500_rate=1.0, task_pending_seconds=0, task_running_seconds=0)
    answer = sync(http, emulator, 1)
    assert (answer.status_code, answer.json()) == (500, {"detail": "A server error occurred."})
    assert emulator.data("extended_id", code(1)) == {"lot": "1"}
    assert job(http, emulator, 2).status_code == 500
    assert len(emulator.tasks()) == 1  # the job exists, though its id never reached the client
    assert emulator.data("extended_id", code(2)) == {"lot": "1"}
    assert me(http, emulator) == 200  # nothing to apply, nothing injected
    stats = emulator.stats()
    assert (stats.applied_then_500, stats.sync_calls, stats.async_jobs) == (2, 0, 1)


def test_faults_are_reproducible_with_a_seed(emulator: Emulator, http: requests.Session) -> None:
    def run() -> list[str]:
        emulator.configure(seed=5, fail_rate=0.2, reset_rate=0.2, applied_then_500_rate=0.2, throttle_rate=0.2)
        outcomes = []
        for n in range(30):
            try:
                outcomes.append(str(sync(http, emulator, n).status_code))
            except requests.ConnectionError:
                outcomes.append("reset")
        return outcomes

    first = run()
    assert first == run()
    assert {"200", "429", "500", "reset"} <= set(first)


# -- the token at run time -------------------------------------------------------------------------------------


def test_revoking_and_forbidding_at_run_time(emulator: Emulator, http: requests.Session) -> None:
    assert sync(http, emulator, 1).status_code == 200
    emulator.configure(revoked=True)
    assert sync(http, emulator, 2).status_code == 401  # the same keep-alive connection
    assert http.get(emulator.base_url + "/api/v2/scm/tasks/x/", timeout=5).status_code == 401
    emulator.configure(revoked=False, forbidden=True)
    assert job(http, emulator, 3).status_code == 403
    emulator.configure(forbidden=False)
    assert sync(http, emulator, 4).status_code == 200
    assert set(emulator.all_data()) == {code(1), code(4)}
    assert emulator.stats().auth_failures == 3


@pytest.mark.parametrize(
    "change",
    [
        {"reset_rate": 1.5},
        {"hang_rate": -0.1},
        {"hang_seconds": -1},
        {"task_pending_seconds": float("inf")},
        {"poison_style": "loud"},
        {"task_states": "klingon"},
    ],
)
def test_configure_refuses_bad_values(emulator: Emulator, change: dict[str, object]) -> None:
    before = emulator.config
    with pytest.raises(ValueError, match=next(iter(change))):
        emulator.configure(**change)
    assert emulator.config == before
