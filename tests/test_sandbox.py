"""The API emulator, spoken to over real HTTP as the daemon would."""

import threading
import time
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from daemon.sandbox import Emulator, EmulatorConfig, serve_forever
from daemon.sandbox.store import Shards

TOKEN = "sandbox-token"
UPLOAD = "/api/v2/scm/upload/"


def upload(
    http: requests.Session, emulator: Emulator, items: list[Any], data_key: str = "extended_id", path: str = UPLOAD
) -> requests.Response:
    return http.post(emulator.base_url + path, json={"data_key": data_key, "items": items}, timeout=5)


def code(n: int) -> str:
    return f"CODE{n:08d}"


# -- connection behaviour ------------------------------------------------------------------------------------


def test_keep_alive_answers_do_not_stall(emulator: Emulator, http: requests.Session) -> None:
    # Without TCP_NODELAY each keep-alive answer waits ~40 ms for a delayed ACK: 100 requests would take ~4 s.
    started = time.perf_counter()
    for n in range(100):
        assert upload(http, emulator, [{"extended_id": code(n), "lot": "A"}]).status_code == 200
    assert time.perf_counter() - started < 2.0
    assert emulator.stats().requests == {("POST", "scm_upload"): 100}


def test_stop_closes_keep_alive_connections_and_the_port(http: requests.Session) -> None:
    emu = Emulator(EmulatorConfig(rate_limit=None))
    url = emu.start()
    assert http.get(url + "/api/v2/me/", timeout=5).status_code == 200
    emu.stop()
    with pytest.raises(requests.ConnectionError):
        http.get(url + "/api/v2/me/", timeout=5)
    emu.stop()  # a second stop is harmless


def test_context_manager_starts_and_stops() -> None:
    with Emulator() as emu:
        answer = requests.get(emu.base_url + "/api/v2/me/", headers={"Authorization": f"UAT {TOKEN}"}, timeout=5)
        assert answer.status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(emu.base_url + "/api/v2/me/", timeout=5)


def test_serve_forever_serves_until_stopped() -> None:
    stop = threading.Event()
    with capture_logs() as logs:
        thread = threading.Thread(target=serve_forever, args=(0, EmulatorConfig()), kwargs={"stop": stop})
        thread.start()
        deadline = time.monotonic() + 5
        while not logs and time.monotonic() < deadline:
            time.sleep(0.01)
        url = logs[0]["url"]
        answer = requests.get(url + "/api/v2/me/", headers={"Authorization": f"UAT {TOKEN}"}, timeout=5)
        stop.set()
        thread.join(5)
    assert answer.status_code == 200
    assert not thread.is_alive()
    assert [entry["event"] for entry in logs] == ["sandbox_listening", "sandbox_stopped"]


# -- authentication and routing ----------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "UAT wrong-token", f"Token {TOKEN}", TOKEN, "UAT "])
def test_a_missing_or_wrong_token_is_refused(emulator: Emulator, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = requests.post(emulator.base_url + UPLOAD, json={"items": []}, headers=headers, timeout=5)
    assert answer.status_code == 401
    assert answer.json() == {"detail": "Invalid token."}
    assert emulator.stats().auth_failures == 1


def test_revoked_and_forbidden_tokens(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(revoked=True)
    assert http.get(emulator.base_url + "/api/v2/me/", timeout=5).status_code == 401
    emulator.configure(revoked=False, forbidden=True)
    answer = upload(http, emulator, [{"extended_id": code(1), "lot": "A"}])
    assert answer.status_code == 403
    assert "permission" in answer.json()["detail"]
    assert emulator.data("extended_id", code(1)) is None
    assert emulator.stats().auth_failures == 2


def test_me_answers_the_user(emulator: Emulator, http: requests.Session) -> None:
    answer = http.get(emulator.base_url + "/api/v2/me/", timeout=5)
    assert answer.status_code == 200
    assert answer.json()["email"] == "sandbox@example.com"


def test_unknown_paths_and_methods(emulator: Emulator, http: requests.Session) -> None:
    answer = requests.get(emulator.base_url + "/api/v2/nothing/", timeout=5)
    assert (answer.status_code, answer.json()) == (404, {"detail": "Not found."})
    answer = http.get(emulator.base_url + UPLOAD, timeout=5)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"
    assert emulator.stats().requests == {("GET", "unknown"): 1, ("GET", "scm_upload"): 1}


def test_the_token_is_never_printed(emulator: Emulator, capfd: pytest.CaptureFixture[str]) -> None:
    emulator.configure(token="s3cret-token-value")
    with capture_logs() as logs:
        for auth in ("UAT s3cret-token-value", "UAT wrong"):
            requests.get(emulator.base_url + "/api/v2/me/", headers={"Authorization": auth}, timeout=5)
    out, err = capfd.readouterr()
    assert "s3cret" not in out + err + repr(logs)
    assert "s3cret" not in repr(emulator.config)


# -- sync upload -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v2/scm/upload/", "/api/v2/scm/upload"])
def test_upload_applies_values_and_lists_what_changed(emulator: Emulator, http: requests.Session, path: str) -> None:
    items = [{"extended_id": code(1), "market": "cn", "lot": "7"}, {"extended_id": code(2), "market": "de"}]
    answer = upload(http, emulator, items, path=path)
    assert answer.status_code == 200
    assert answer.json() == {
        "total_updates": 3,
        "codes_affected": 2,
        "items": {code(1): ["market", "lot"], code(2): ["market"]},
        "changes": [],
    }
    assert emulator.data("extended_id", code(1)) == {"market": "cn", "lot": "7"}
    assert emulator.all_data() == {code(1): {"market": "cn", "lot": "7"}, code(2): {"market": "de"}}


def test_a_repeated_upload_changes_nothing_but_still_counts_a_transaction(
    emulator: Emulator, http: requests.Session
) -> None:
    items = [{"extended_id": code(1), "market": "cn"}]
    upload(http, emulator, items)
    again = upload(http, emulator, [*items, {"extended_id": code(2), "market": "cn"}]).json()
    assert again["items"] == {code(2): ["market"]}
    assert emulator.transactions("extended_id", code(1)) == 2
    assert emulator.transactions("extended_id", code(2)) == 1
    assert emulator.stats().sync_calls == 2


def test_only_the_changed_fields_are_listed(emulator: Emulator, http: requests.Session) -> None:
    upload(http, emulator, [{"extended_id": code(1), "market": "cn", "lot": "7"}])
    answer = upload(http, emulator, [{"extended_id": code(1), "market": "cn", "lot": "8"}]).json()
    assert answer["items"] == {code(1): ["lot"]}


def test_an_empty_value_clears_a_field(emulator: Emulator, http: requests.Session) -> None:
    upload(http, emulator, [{"extended_id": code(1), "market": "cn", "lot": "7"}])
    answer = upload(http, emulator, [{"extended_id": code(1), "lot": ""}]).json()
    assert answer["items"] == {code(1): ["lot"]}
    assert emulator.data("extended_id", code(1)) == {"market": "cn"}
    assert upload(http, emulator, [{"extended_id": code(1), "lot": ""}]).json()["items"] == {}


def test_unknown_and_malformed_codes_are_absent(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(known_codes={code(1), "short"})
    items = [{"extended_id": c, "market": "cn"} for c in (code(1), code(2), "short", "bad code!")]
    answer = upload(http, emulator, items).json()
    assert answer["items"] == {code(1): ["market"]}
    assert emulator.data("extended_id", code(2)) is None
    assert emulator.transactions("extended_id", code(2)) == 0
    assert emulator.transactions("extended_id", "short") == 0  # listed as known, but too short to exist


def test_fields_outside_the_campaign_are_discarded(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(campaign_fields=["market"])
    answer = upload(http, emulator, [{"extended_id": code(1), "market": "cn", "colour": "red"}]).json()
    assert answer["items"] == {code(1): ["market"]}
    assert emulator.data("extended_id", code(1)) == {"market": "cn"}
    # A code whose every field is discarded was still included in an accepted update.
    assert upload(http, emulator, [{"extended_id": code(2), "colour": "red"}]).json()["items"] == {}
    assert emulator.data("extended_id", code(2)) == {}
    assert emulator.transactions("extended_id", code(2)) == 1


def test_serial_numbers_are_their_own_key(emulator: Emulator, http: requests.Session) -> None:
    answer = upload(http, emulator, [{"serial_number": "000123", "market": "cn"}], data_key="serial_number")
    assert answer.json()["items"] == {"000123": ["market"]}
    assert emulator.data("serial_number", "000123") == {"market": "cn"}
    assert emulator.data("extended_id", "000123") is None
    assert emulator.all_data("serial_number") == {"000123": {"market": "cn"}}


def test_a_missing_data_key_means_extended_id(emulator: Emulator, http: requests.Session) -> None:
    answer = http.post(emulator.base_url + UPLOAD, json={"items": [{"extended_id": code(1), "m": "x"}]}, timeout=5)
    assert answer.json()["items"] == {code(1): ["m"]}


BAD_BODIES: list[tuple[str, object, str]] = [
    ("not json", b"{nope", "detail"),
    ("not an object", [1, 2], "non_field_errors"),
    ("bad data_key", {"data_key": "sku", "items": []}, "data_key"),
    ("no items", {"data_key": "extended_id"}, "items"),
    ("items not a list", {"items": {"a": 1}}, "items"),
    ("too many items", {"items": [{"extended_id": code(n)} for n in range(101)]}, "items"),
    ("item without key", {"items": [{"extended_id": code(1)}, {"market": "cn"}]}, "items"),
    ("blank key", {"items": [{"extended_id": ""}]}, "items"),
    ("non-string value", {"items": [{"extended_id": code(1), "qty": 5}]}, "items"),
    ("null value", {"items": [{"extended_id": code(1), "qty": None}]}, "items"),
    ("item not an object", {"items": [code(1)]}, "items"),
]


@pytest.mark.parametrize(("why", "body", "error_key"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_a_defective_request_is_refused_whole(
    emulator: Emulator, http: requests.Session, why: str, body: object, error_key: str
) -> None:
    url = emulator.base_url + UPLOAD
    answer = http.post(url, data=body, timeout=5) if isinstance(body, bytes) else http.post(url, json=body, timeout=5)
    assert answer.status_code == 400, why
    assert error_key in answer.json()
    assert emulator.all_data() == {}
    assert emulator.stats().rejected == 1


def test_per_item_errors_line_up_with_the_items(emulator: Emulator, http: requests.Session) -> None:
    items = [{"extended_id": code(1)}, {"market": "cn"}, {"extended_id": code(3), "qty": 5}]
    answer = upload(http, emulator, items).json()
    assert answer == {"items": [{}, {"extended_id": ["This field is required."]}, {"qty": ["Not a valid string."]}]}


def test_exactly_one_hundred_items_are_accepted(emulator: Emulator, http: requests.Session) -> None:
    answer = upload(http, emulator, [{"extended_id": code(n), "lot": "1"} for n in range(100)])
    assert answer.json()["codes_affected"] == 100


# -- throttle, latency and faults --------------------------------------------------------------------------


def test_the_throttle_refuses_beyond_the_rate_and_applies_nothing(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(rate_limit=3)
    statuses = [upload(http, emulator, [{"extended_id": code(n), "lot": "1"}]).status_code for n in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    answer = upload(http, emulator, [{"extended_id": code(9), "lot": "1"}])
    assert answer.headers["Retry-After"] == "1"
    assert answer.json() == {"detail": "Request was throttled. Expected available in 1 seconds.", "code": "throttled"}
    assert emulator.data("extended_id", code(3)) is None
    assert http.get(emulator.base_url + "/api/v2/me/", timeout=5).status_code == 200  # not in the scm_update scope
    assert emulator.stats().throttled == 3


def test_the_throttle_window_slides(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(rate_limit=20)
    statuses = [upload(http, emulator, [{"extended_id": code(n)}]).status_code for n in range(21)]
    assert statuses.count(429) >= 1
    time.sleep(1.05)
    assert upload(http, emulator, [{"extended_id": code(99)}]).status_code == 200


def test_injected_failures_apply_nothing(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(fail_rate=1.0, seed=7)
    statuses = {upload(http, emulator, [{"extended_id": code(n), "lot": "1"}]).status_code for n in range(20)}
    assert statuses == {500, 502, 503}
    assert emulator.all_data() == {}
    assert emulator.stats().injected_failures == 20


def test_fault_injection_is_reproducible_with_a_seed(emulator: Emulator, http: requests.Session) -> None:
    def run() -> list[int]:
        emulator.configure(fail_rate=0.5, seed=3)
        return [http.get(emulator.base_url + "/api/v2/me/", timeout=5).status_code for _ in range(20)]

    first = run()
    assert first == run()
    assert 200 in first
    assert len(set(first)) > 1


def test_latency_delays_every_answer(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(latency=0.2)
    started = time.perf_counter()
    http.get(emulator.base_url + "/api/v2/nothing/", timeout=5)
    assert time.perf_counter() - started >= 0.2


def test_a_slow_answer_is_applied_before_it_is_sent(emulator: Emulator, http: requests.Session) -> None:
    emulator.configure(slow_rate=1.0, slow_seconds=5.0)
    body = {"items": [{"extended_id": code(1), "lot": "1"}]}
    with pytest.raises(requests.ReadTimeout):
        http.post(emulator.base_url + UPLOAD, json=body, timeout=(5, 0.3))
    # The client gave up, but the update went through: the ambiguous case.
    assert emulator.data("extended_id", code(1)) == {"lot": "1"}
    assert emulator.stats().slow_answers == 1


def test_concurrent_requests_are_served_in_parallel(emulator: Emulator) -> None:
    emulator.configure(latency=0.2)

    def call() -> int:
        answer = requests.get(emulator.base_url + "/api/v2/me/", headers={"Authorization": f"UAT {TOKEN}"}, timeout=5)
        return answer.status_code

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert emulator.stats().max_concurrency >= 2
    assert emulator.stats().total_requests == 4


def test_configure_refuses_unknown_knobs(emulator: Emulator) -> None:
    with pytest.raises(TypeError):
        emulator.configure(rate=5)
    emulator.configure(known_codes=[code(1)])
    assert emulator.config.known_codes == frozenset({code(1)})


@given(st.lists(st.tuples(st.sampled_from(["set", "default"]), st.text(max_size=3), st.integers()), max_size=60))
def test_the_stores_sharded_dict_holds_what_a_dict_would(operations: list[tuple[str, str, int]]) -> None:
    sharded: Shards[str, int] = Shards()
    plain: dict[str, int] = {}
    for op, key, value in operations:
        if op == "set":
            sharded[key] = value
            plain[key] = value
        else:
            assert sharded.setdefault(key, value) == plain.setdefault(key, value)
    assert dict(sharded.items()) == plain
    assert sorted(sharded) == sorted(plain)
    assert all(sharded.get(key, None) == value for key, value in plain.items())
    assert sharded.get("not there", None) is None or "not there" in plain
