"""The emulator's async uploads and task lifecycle, over real HTTP."""

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from daemon.sandbox import Emulator, TaskState

TOKEN = "sandbox-token"
ASYNC = "/api/v2/scm/upload/async/"
SYNC = "/api/v2/scm/upload/"
STEP = 0.05  # task_pending_seconds and task_running_seconds in these tests


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    emulator.configure(task_pending_seconds=STEP, task_running_seconds=STEP)
    return emulator


def code(n: int) -> str:
    return f"CODE{n:08d}"


def submit(
    http: requests.Session,
    emu: Emulator,
    constraints: object,
    scm_data: object = None,
    *,
    reference: object = "ref",
    path: str = ASYNC,
) -> requests.Response:
    body: dict[str, object] = {"constraints": constraints, "reference": reference}
    body["scm_data"] = {"market": "cn"} if scm_data is None else scm_data
    return http.post(emu.base_url + path, json=body, timeout=5)


def task_id(answer: requests.Response) -> str:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"task_id"}
    assert isinstance(body["task_id"], str)
    return str(body["task_id"])


def get_task(http: requests.Session, emu: Emulator, tid: str, slash: bool = True) -> dict[str, Any]:
    answer = http.get(f"{emu.base_url}/api/v2/scm/tasks/{tid}{'/' if slash else ''}", timeout=5)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def final_state(http: requests.Session, emu: Emulator, tid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while (body := get_task(http, emu, tid))["completed_at"] is None:
        assert time.monotonic() < deadline, "the task never ended"
        time.sleep(0.01)
    return body


# -- lifecycle -----------------------------------------------------------------------------------------------


def test_a_task_goes_pending_in_progress_complete_and_applies_only_then(emu: Emulator, http: requests.Session) -> None:
    emu.configure(task_pending_seconds=0.3, task_running_seconds=0.3)
    tid = task_id(
        submit(http, emu, {"extended_id": [code(1), code(2)]}, {"market": "cn", "lot": "7"}, reference="file.csv#1")
    )
    first = get_task(http, emu, tid)
    assert first == {
        "id": tid,
        "reference": "file.csv#1",
        "state": "pending",
        "codes_affected": None,
        "created_at": first["created_at"],
        "started_at": None,
        "completed_at": None,
    }
    assert first["created_at"].endswith("Z")
    assert emu.data("extended_id", code(1)) is None
    wait_for(lambda: get_task(http, emu, tid)["state"] == "in-progress")
    running = get_task(http, emu, tid)
    assert running["started_at"] is not None
    assert running["completed_at"] is None
    assert emu.data("extended_id", code(1)) is None  # not applied while running
    done = final_state(http, emu, tid)
    assert (done["state"], done["codes_affected"]) == ("complete", 2)
    assert done["created_at"] < done["started_at"] < done["completed_at"]
    assert emu.all_data() == {code(1): {"market": "cn", "lot": "7"}, code(2): {"market": "cn", "lot": "7"}}
    assert emu.transactions("extended_id", code(1)) == 1
    stats = emu.stats()
    assert (stats.async_jobs, stats.tasks_completed, stats.tasks_failed) == (1, 1, 0)
    assert stats.task_polls >= 3
    assert stats.requests[("GET", "scm_task")] == stats.task_polls


def test_the_data_is_applied_when_due_even_if_nobody_asks(emu: Emulator, http: requests.Session) -> None:
    tid = task_id(submit(http, emu, {"serial_number": ["000123"]}, {"lot": "1"}))
    time.sleep(2 * STEP + 0.02)
    assert emu.data("serial_number", "000123") == {"lot": "1"}
    snapshot = emu.task(tid)
    assert (snapshot.state, snapshot.codes_affected) == (TaskState.COMPLETE, 1)
    assert snapshot.constraints == {"serial_number": ("000123",)}
    assert emu.stats().task_polls == 0


@pytest.mark.parametrize("path", ["/api/v2/scm/upload/async/", "/api/v2/scm/upload/async"])
@pytest.mark.parametrize("slash", [True, False])
def test_both_spellings_of_the_paths(emu: Emulator, http: requests.Session, path: str, slash: bool) -> None:
    tid = task_id(submit(http, emu, {"extended_id": [code(1)]}, path=path))
    assert get_task(http, emu, tid, slash=slash)["id"] == tid


def test_an_unknown_task_is_404(emu: Emulator, http: requests.Session) -> None:
    answer = http.get(emu.base_url + "/api/v2/scm/tasks/nope/", timeout=5)
    assert (answer.status_code, answer.json()) == (404, {"detail": "Not found."})
    with pytest.raises(KeyError):
        emu.task("nope")
    assert emu.stats().task_polls == 1


def test_task_requests_need_the_token(emu: Emulator) -> None:
    answer = requests.get(emu.base_url + "/api/v2/scm/tasks/x/", timeout=5)
    assert answer.status_code == 401
    answer = requests.post(emu.base_url + ASYNC, json={}, headers={"Authorization": "UAT nope"}, timeout=5)
    assert answer.status_code == 401
    assert emu.stats().auth_failures == 2


def test_wrong_methods_are_405(emu: Emulator, http: requests.Session) -> None:
    assert http.get(emu.base_url + ASYNC, timeout=5).status_code == 405
    assert http.post(emu.base_url + "/api/v2/scm/tasks/x/", json={}, timeout=5).status_code == 405


def test_tasks_lists_every_task_in_creation_order(emu: Emulator, http: requests.Session) -> None:
    ids = [task_id(submit(http, emu, {"extended_id": [code(n)]}, reference=f"r{n}")) for n in range(3)]
    assert [t.id for t in emu.tasks()] == ids
    assert [t.reference for t in emu.tasks()] == ["r0", "r1", "r2"]
    assert len(set(ids)) == 3


def test_a_failed_task_applies_nothing(emu: Emulator, http: requests.Session) -> None:
    emu.configure(task_fail_rate=1.0)
    tid = task_id(submit(http, emu, {"extended_id": [code(1)]}))
    done = final_state(http, emu, tid)
    assert (done["state"], done["codes_affected"]) == ("failed", 0)
    assert emu.all_data() == {}
    assert emu.transactions("extended_id", code(1)) == 0
    assert emu.stats().tasks_failed == 1


def test_the_docs_vocabulary(emu: Emulator, http: requests.Session) -> None:
    emu.configure(task_states="docs", task_pending_seconds=0.0, task_running_seconds=0.3)
    ok = task_id(submit(http, emu, {"extended_id": [code(1)]}))
    assert get_task(http, emu, ok)["state"] == "running"
    assert final_state(http, emu, ok)["state"] == "complete"
    emu.configure(task_fail_rate=1.0, task_running_seconds=STEP)
    bad = task_id(submit(http, emu, {"extended_id": [code(2)]}))
    assert final_state(http, emu, bad)["state"] == "error"
    assert emu.task(bad).state is TaskState.FAILED  # the snapshot speaks the portal's words


def test_an_unknown_state_is_reported_until_the_task_is_final(emu: Emulator, http: requests.Session) -> None:
    emu.configure(task_unknown_state="queued-for-review", task_pending_seconds=0.2)
    tid = task_id(submit(http, emu, {"extended_id": [code(1)]}))
    assert get_task(http, emu, tid)["state"] == "queued-for-review"
    assert final_state(http, emu, tid)["state"] == "complete"


def test_task_fates_and_ids_are_reproducible_with_a_seed(emu: Emulator, http: requests.Session) -> None:
    def run() -> list[tuple[str, TaskState]]:
        emu.configure(seed=11, task_fail_rate=0.5)
        ids = [task_id(submit(http, emu, {"extended_id": [code(n)]})) for n in range(12)]
        time.sleep(2 * STEP + 0.02)
        return [(t, emu.task(t).state) for t in ids]

    first = run()
    assert {state for _, state in first} == {TaskState.COMPLETE, TaskState.FAILED}
    second = run()
    assert [state for _, state in first] == [state for _, state in second]
    # A re-seeded generator repeats its ids; the store keeps the latest task under a repeated id.
    assert [t for t, _ in first] == [t for t, _ in second]


# -- what a job matches ----------------------------------------------------------------------------------------


def test_only_known_codes_are_affected(emu: Emulator, http: requests.Session) -> None:
    emu.configure(known_codes={code(1), code(2)})
    tid = task_id(submit(http, emu, {"extended_id": [code(1), code(2), code(3), "bad code!", code(1)]}))
    assert final_state(http, emu, tid)["codes_affected"] == 2
    assert set(emu.all_data()) == {code(1), code(2)}
    assert emu.transactions("extended_id", code(1)) == 1  # a value repeated in the job is one code


def test_a_field_constraint_matches_the_held_data(emu: Emulator, http: requests.Session) -> None:
    items = [{"extended_id": code(n), "lot": "7"} for n in (1, 2, 3)] + [{"extended_id": code(4), "lot": "8"}]
    assert http.post(emu.base_url + SYNC, json={"items": items}, timeout=5).status_code == 200
    tid = task_id(submit(http, emu, {"lot": ["7"]}, {"market": "de"}))
    assert final_state(http, emu, tid)["codes_affected"] == 3
    assert emu.data("extended_id", code(2)) == {"lot": "7", "market": "de"}
    assert emu.data("extended_id", code(4)) == {"lot": "8"}
    assert emu.transactions("extended_id", code(4)) == 1


def test_constraints_combine_with_and(emu: Emulator, http: requests.Session) -> None:
    items = [{"extended_id": code(1), "lot": "7"}, {"extended_id": code(2), "lot": "8"}]
    http.post(emu.base_url + SYNC, json={"items": items}, timeout=5)
    tid = task_id(submit(http, emu, {"extended_id": [code(1), code(2), code(3)], "lot": ["7", "9"]}))
    assert final_state(http, emu, tid)["codes_affected"] == 1
    assert emu.data("extended_id", code(1)) == {"lot": "7", "market": "cn"}
    both = task_id(submit(http, emu, {"extended_id": [code(1)], "serial_number": ["1"]}))
    assert final_state(http, emu, both)["codes_affected"] == 0


def test_campaign_fields_and_clearing_apply_to_jobs_too(emu: Emulator, http: requests.Session) -> None:
    http.post(emu.base_url + SYNC, json={"items": [{"extended_id": code(1), "lot": "7"}]}, timeout=5)
    emu.configure(campaign_fields={"lot", "market"})
    tid = task_id(submit(http, emu, {"extended_id": [code(1)]}, {"market": "cn", "colour": "red", "lot": ""}))
    final_state(http, emu, tid)
    assert emu.data("extended_id", code(1)) == {"market": "cn"}


# -- validation --------------------------------------------------------------------------------------------------

MANY = [code(n) for n in range(1001)]
ONE = {"extended_id": [code(1)]}
SPLIT = {"extended_id": MANY[:600], "lot": MANY[600:]}
DATA = {"a": "1"}
BAD_JOBS: list[tuple[str, object, str]] = [
    ("not json", b"{nope", "detail"),
    ("not an object", [1], "non_field_errors"),
    ("no constraints", {"scm_data": DATA}, "constraints"),
    ("constraints not an object", {"constraints": [code(1)], "scm_data": DATA}, "constraints"),
    ("no constraint keys", {"constraints": {}, "scm_data": DATA}, "constraints"),
    ("six keys", {"constraints": {f"k{n}": ["v"] for n in range(6)}, "scm_data": DATA}, "constraints"),
    ("1001 values", {"constraints": {"extended_id": MANY}, "scm_data": DATA}, "constraints"),
    ("1001 over two keys", {"constraints": SPLIT, "scm_data": DATA}, "constraints"),
    ("values not a list", {"constraints": {"extended_id": code(1)}, "scm_data": DATA}, "constraints"),
    ("empty value list", {"constraints": {"extended_id": []}, "scm_data": DATA}, "constraints"),
    ("blank value", {"constraints": {"extended_id": [code(1), ""]}, "scm_data": DATA}, "constraints"),
    ("number value", {"constraints": {"extended_id": [5]}, "scm_data": DATA}, "constraints"),
    ("null value", {"constraints": {"extended_id": [None]}, "scm_data": DATA}, "constraints"),
    ("blank key", {"constraints": {"": ["x"]}, "scm_data": DATA}, "constraints"),
    ("no scm_data", {"constraints": ONE}, "scm_data"),
    ("empty scm_data", {"constraints": ONE, "scm_data": {}}, "scm_data"),
    ("scm_data not an object", {"constraints": ONE, "scm_data": ["a"]}, "scm_data"),
    ("scm_data number", {"constraints": ONE, "scm_data": {"qty": 5}}, "scm_data"),
    ("reference not text", {"constraints": ONE, "scm_data": DATA, "reference": 5}, "reference"),
]  # fmt: skip


@pytest.mark.parametrize(("why", "body", "error_key"), BAD_JOBS, ids=[b[0] for b in BAD_JOBS])
def test_a_defective_job_is_refused(
    emu: Emulator, http: requests.Session, why: str, body: object, error_key: str
) -> None:
    url = emu.base_url + ASYNC
    answer = http.post(url, data=body, timeout=5) if isinstance(body, bytes) else http.post(url, json=body, timeout=5)
    assert answer.status_code == 400, why
    assert error_key in answer.json()
    assert emu.tasks() == ()
    assert (emu.stats().async_rejected, emu.stats().async_jobs) == (1, 0)


def test_per_value_errors_follow_drf(emu: Emulator, http: requests.Session) -> None:
    answer = submit(http, emu, {"extended_id": [code(1), "", 7]})
    assert answer.json() == {
        "constraints": {"extended_id": {"1": ["This field may not be blank."], "2": ["Not a valid string."]}}
    }


def test_five_keys_and_a_thousand_values_are_accepted(emu: Emulator, http: requests.Session) -> None:
    five = {"extended_id": MANY[:996], "a": ["1"], "b": ["1"], "c": ["1"], "d": ["1"]}
    task_id(submit(http, emu, five))
    task_id(submit(http, emu, {"extended_id": MANY[:1000]}))


def test_a_job_without_a_reference_is_accepted(emu: Emulator, http: requests.Session) -> None:
    answer = http.post(emu.base_url + ASYNC, json={"constraints": {"lot": ["1"]}, "scm_data": {"a": "1"}}, timeout=5)
    assert emu.task(task_id(answer)).reference == ""


# -- throttle scope --------------------------------------------------------------------------------------------


def test_async_uploads_share_the_scm_update_throttle_but_task_requests_do_not(
    emu: Emulator, http: requests.Session
) -> None:
    emu.configure(rate_limit=2)
    tid = task_id(submit(http, emu, {"extended_id": [code(1)]}))
    assert http.post(emu.base_url + SYNC, json={"items": [{"extended_id": code(2)}]}, timeout=5).status_code == 200
    assert submit(http, emu, {"extended_id": [code(3)]}).status_code == 429
    assert http.post(emu.base_url + SYNC, json={"items": [{"extended_id": code(4)}]}, timeout=5).status_code == 429
    assert all(get_task(http, emu, tid)["id"] == tid for _ in range(10))
    assert emu.stats().throttled == 2
