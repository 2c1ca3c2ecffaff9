"""The in-process transport's contract: the real client sees the same over InProcessAdapter as over real HTTP.

One scenario, written once, runs over both transports; each run checks the expected outcomes, and a third test
checks that the two transcripts (return values, exception classes and messages, emulator stats and data) are
equal. A property test does the same for raw requests, and the transport faults that no emulator can produce
(a refused, an unanswered connection) are compared with real sockets.
"""

import functools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from daemon.api import (
    ApiError,
    HTTPStatusError,
    Rejected,
    ScantrustClient,
    SyncResult,
    TaskState,
    Throttled,
    Timeout,
    TokenRefused,
    Transient,
    TransportError,
)
from daemon.sandbox import Emulator, EmulatorConfig, InProcessAdapter, ManualClock
from daemon.sandbox.server import ME_BODY

TOKEN = "sandbox-token"
IN_PROCESS_URL = "http://sandbox.invalid:8000"  # never resolved: nothing leaves the process
TRANSPORTS = ("http", "inprocess")
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 1.0  # the HTTP run really waits this long for the hang; long enough for a loaded machine


def code(n: int) -> str:
    return f"CODE{n:08d}"


POISON = "POISON00001"
UNKNOWN = code(99)
SCENARIO_CONFIG = EmulatorConfig(
    rate_limit=None,
    seed=7,
    known_codes=frozenset({*(code(n) for n in range(1, 10)), "000123"}),
    poison_codes=frozenset({POISON}),
    task_pending_seconds=30,
    task_running_seconds=60,
)


@dataclass
class Transport:
    """One way for the client to reach an emulator on a simulated clock."""

    name: str
    emulator: Emulator
    clock: ManualClock
    client: ScantrustClient
    adapter: InProcessAdapter | None

    def check_delay(self, seconds: float) -> None:
        """In-process, the exchange reports its simulated duration; over HTTP it just took (real) time."""
        if self.adapter is not None:
            assert self.adapter.last_delay == seconds


@contextmanager
def transport(name: str, config: EmulatorConfig = SCENARIO_CONFIG) -> Iterator[Transport]:
    clock = ManualClock()
    emulator = Emulator(config, clock=clock, wall=clock.wall)
    adapter = None
    if name == "http":
        base_url = emulator.start()
    else:
        adapter = InProcessAdapter(emulator)
        base_url = IN_PROCESS_URL
    client = ScantrustClient(
        base_url, SecretStr(TOKEN), connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT, adapter=adapter
    )
    try:
        yield Transport(name, emulator, clock, client, adapter)
    finally:
        client.close()
        emulator.stop()


_ENDPOINT = re.compile(
    r"host='[^']*', port=\d+|https?://[^/\s'\"]+| at 0x[0-9a-f]+|\b(?:127\.0\.0\.1|sandbox\.invalid)(?::\d+)?"
)


def normalized(text: str) -> str:
    """A message with the transport's host, port and object addresses taken out."""
    return _ENDPOINT.sub("<endpoint>", text)


@dataclass(frozen=True)
class Failure:
    """Everything the daemon can see of a failed call."""

    type: str
    message: str
    ambiguous: bool
    status: int | None = None
    detail: str | None = None
    retry_after: float | None = None
    body: object = None
    item_errors: dict[int, str] | None = None


def outcome(call: Callable[[], object]) -> object:
    """A call's return value, or its ApiError as a Failure."""
    try:
        return call()
    except ApiError as exc:
        failure = Failure(type(exc).__name__, normalized(str(exc)), exc.ambiguous)
        if isinstance(exc, HTTPStatusError):
            failure = Failure(
                type(exc).__name__,
                normalized(str(exc)),
                exc.ambiguous,
                exc.status,
                exc.detail,
                exc.retry_after,
                exc.body,
                exc.item_errors if isinstance(exc, Rejected) else None,
            )
        return failure


@dataclass
class Transcript:
    steps: list[tuple[str, object]] = field(default_factory=list)
    final: dict[str, object] = field(default_factory=dict)

    def step(self, label: str, call: Callable[[], object]) -> Any:
        result = outcome(call)
        self.steps.append((label, result))
        return result


def scenario(t: Transport) -> Transcript:
    """The daemon's whole vocabulary with the API, each answer checked; the hang comes last (see below)."""
    client, emu, log = t.client, t.emulator, Transcript()

    assert log.step("me", client.me) == dict(ME_BODY)
    t.check_delay(0.0)

    items = [{"extended_id": code(1), "lot": "A"}, {"extended_id": code(2), "lot": "A"}]
    items.append({"extended_id": UNKNOWN, "lot": "A"})
    assert log.step("sync", lambda: client.upload_sync("extended_id", items)) == SyncResult(
        changed={code(1): ("lot",), code(2): ("lot",)}, total_updates=2, codes_affected=2
    )
    serial = [{"serial_number": "000123", "lot": "S"}, {"serial_number": "000999", "lot": "S"}]
    assert log.step("sync serial", lambda: client.upload_sync("serial_number", serial)).changed == {"000123": ("lot",)}

    poisoned = [{"extended_id": code(3), "lot": "A"}, {"extended_id": POISON, "lot": "A"}]
    refused = log.step("poisoned", lambda: client.upload_sync("extended_id", poisoned))
    assert isinstance(refused, Failure)
    assert (refused.type, refused.status, refused.ambiguous) == ("Rejected", 400, False)
    assert refused.item_errors == {1: "extended_id: Invalid code."}

    task_id = log.step("async", lambda: client.upload_async("extended_id", [code(5), code(6)], {"lot": "B"}, "r#1"))
    assert isinstance(task_id, str)
    pending = log.step("poll pending", lambda: client.task(task_id))
    assert (pending.state, pending.created_at, pending.started_at) == (TaskState.PENDING, "2030-01-01T00:00:00Z", None)
    t.clock.advance(30)
    assert log.step("poll running", lambda: client.task(task_id)).state == TaskState.RUNNING
    t.clock.advance(60)
    done = log.step("poll complete", lambda: client.task(task_id))
    assert (done.state, done.codes_affected, done.completed_at) == (TaskState.COMPLETE, 2, "2030-01-01T00:01:30Z")

    emu.configure(revoked=True)
    revoked = log.step("revoked", client.me)
    assert isinstance(revoked, Failure)
    assert (revoked.type, revoked.status, revoked.ambiguous) == (TokenRefused.__name__, 401, False)
    emu.configure(revoked=False)

    emu.throttle_burst(1, retry_after=2.5)
    throttled = log.step("429", lambda: client.upload_sync("extended_id", [{"extended_id": code(7), "lot": "T"}]))
    assert isinstance(throttled, Failure)
    assert (throttled.type, throttled.status, throttled.retry_after) == (Throttled.__name__, 429, 3.0)

    emu.configure(fail_rate=1.0, seed=0)  # seed 0's first draw is a 503
    unavailable = log.step("503", lambda: client.upload_sync("extended_id", [{"extended_id": code(7), "lot": "U"}]))
    assert isinstance(unavailable, Failure)
    assert (unavailable.type, unavailable.status, unavailable.ambiguous) == (Transient.__name__, 503, False)
    assert unavailable.detail == "503 Service Unavailable"  # the proxy's HTML page, read as words
    emu.configure(fail_rate=0.0)

    emu.configure(applied_then_500_rate=1.0)
    applied = log.step("applied then 500", lambda: client.upload_sync("extended_id", [{"extended_id": code(8)}]))
    assert isinstance(applied, Failure)
    assert (applied.status, applied.ambiguous) == (500, True)
    emu.configure(applied_then_500_rate=0.0)

    emu.configure(reset_rate=1.0)
    reset = log.step("reset", lambda: client.upload_sync("extended_id", [{"extended_id": code(9), "lot": "R"}]))
    assert isinstance(reset, Failure)
    assert (reset.type, reset.ambiguous) == (TransportError.__name__, True)
    assert "was reset" in reset.message
    emu.configure(reset_rate=0.0)

    emu.configure(slow_rate=1.0, slow_seconds=0.2)  # slow, but within the read timeout
    assert log.step("slow", lambda: client.upload_sync("extended_id", [{"extended_id": code(9), "lot": "S"}])).changed
    t.check_delay(0.2)
    emu.configure(slow_rate=0.0)

    # Last, because over HTTP the hung handler stays in flight until the emulator stops: a request after it
    # would raise max_concurrency there and not in-process, where nothing is ever in flight between calls.
    emu.configure(hang_rate=1.0, hang_seconds=600)
    hang = log.step("hang", lambda: client.upload_sync("extended_id", [{"extended_id": code(4), "lot": "H"}]))
    assert isinstance(hang, Failure)
    assert (hang.type, hang.ambiguous) == (Timeout.__name__, True)
    assert "within 1 s" in hang.message
    t.check_delay(READ_TIMEOUT)

    stats = emu.stats()
    log.final = {
        "stats": stats,
        "extended_id": emu.all_data("extended_id"),
        "serial_number": emu.all_data("serial_number"),
        "tasks": emu.tasks(),
        "transactions": {n: emu.transactions("extended_id", code(n)) for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 99)},
    }
    assert log.final["extended_id"] == {
        code(1): {"lot": "A"},
        code(2): {"lot": "A"},
        code(5): {"lot": "B"},
        code(6): {"lot": "B"},
        code(8): {},
        code(9): {"lot": "S"},
    }
    assert log.final["serial_number"] == {"000123": {"lot": "S"}}
    counts = (stats.sync_calls, stats.rejected, stats.throttled, stats.injected_failures, stats.auth_failures)
    assert counts == (3, 1, 1, 1, 1)
    assert (stats.resets, stats.hangs, stats.slow_answers, stats.applied_then_500, stats.task_polls) == (1, 1, 1, 1, 3)
    assert (stats.async_jobs, stats.tasks_completed, stats.max_concurrency, stats.total_requests) == (1, 1, 1, 15)
    return log


@functools.cache
def transcript(name: str) -> Transcript:
    """The scenario over one transport, run once per test session (the HTTP run waits out a read timeout)."""
    with transport(name) as t:
        return scenario(t)


@pytest.mark.parametrize("name", TRANSPORTS)
def test_the_scenario_gives_the_expected_answers(name: str) -> None:
    transcript(name)


def test_both_transports_give_the_same_transcript() -> None:
    over_http, in_process = transcript("http"), transcript("inprocess")
    for (label, left), (_, right) in zip(over_http.steps, in_process.steps, strict=True):
        assert left == right, label
    assert over_http.final == in_process.final


def test_in_process_a_hang_costs_no_real_time() -> None:
    started = time.monotonic()
    with transport("inprocess", EmulatorConfig(rate_limit=None, hang_rate=1.0, hang_seconds=3600)) as t:
        for _ in range(50):
            assert isinstance(outcome(t.client.me), Failure)
    assert time.monotonic() - started < 2


# -- raw exchanges, property-tested ----------------------------------------------------------------------------

FUZZ_CONFIG = EmulatorConfig(
    rate_limit=3.0,
    seed=5,
    known_codes=frozenset(code(n) for n in range(4)),
    poison_codes=frozenset({code(3)}),
    task_pending_seconds=1,
    task_running_seconds=1,
    fail_rate=0.1,
    reset_rate=0.05,
    throttle_rate=0.1,
    applied_then_500_rate=0.1,
    task_missing_rate=0.2,
    task_fail_rate=0.3,
)
_codes = st.sampled_from([code(n) for n in range(5)] + ["short", ""])
_sync_body = st.builds(
    lambda key, codes: {"data_key": key, "items": [{key: c, "lot": "x"} for c in codes]},
    st.sampled_from(["extended_id", "serial_number"]),
    st.lists(_codes, max_size=3),
)
_async_body = st.builds(
    lambda codes: {"constraints": {"extended_id": codes}, "scm_data": {"lot": "y"}, "reference": "f"},
    st.lists(_codes, max_size=3),
)
_body = st.one_of(
    st.none(),
    _sync_body.map(lambda b: {"json": b}),
    _async_body.map(lambda b: {"json": b}),
    st.sampled_from([{"data": b"{not json"}, {"data": b"[1]"}, {"data": b"{}"}]),
    st.just({"data": b"x", "headers": {"Content-Length": "nope"}}),
)
_path = st.sampled_from(
    [
        "/api/v2/me/",
        "/api/v2/scm/upload/",
        "/api/v2/scm/upload",
        "/api/v2/scm/upload/async/",
        "/api/v2/scm/tasks/{task}/",
        "/api/v2/scm/tasks/{task}",
        "/api/v2/scm/tasks/unknown/",
        "/api/v2/other/",
        "/api/v2/me/?page=2",
    ]
)
_odd = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
        "path": _path,
        "body": _body,
        "auth": st.sampled_from([f"UAT {TOKEN}", "UAT wrong", "Token x", None]),
    }
)
_good = st.one_of(
    st.just({"method": "GET", "path": "/api/v2/me/", "body": None}),
    _sync_body.map(lambda b: {"method": "POST", "path": "/api/v2/scm/upload/", "body": {"json": b}}),
    _async_body.map(lambda b: {"method": "POST", "path": "/api/v2/scm/upload/async/", "body": {"json": b}}),
    st.just({"method": "GET", "path": "/api/v2/scm/tasks/{task}/", "body": None}),
).map(lambda r: {**r, "auth": f"UAT {TOKEN}"})
_request = st.builds(
    lambda request, close, advance: {**request, "close": close, "advance": advance},
    st.one_of(_good, _good, _good, _odd),  # mostly what a client sends, so the faults get their turn
    st.booleans(),
    st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.5]),
)


def exchange(session: requests.Session, base_url: str, request: dict[str, Any], task: str) -> object:
    """Everything a client can observe of one raw exchange."""
    headers = {} if request["auth"] is None else {"Authorization": request["auth"]}
    if request["close"]:
        headers["Connection"] = "close"
    body = dict(request["body"] or {})
    headers.update(body.pop("headers", {}))
    url = base_url + request["path"].format(task=task)
    try:
        answer = session.request(request["method"], url, headers=headers, timeout=(5, 5), allow_redirects=False, **body)
    except requests.RequestException as exc:
        reason = exc.args[0] if exc.args else None
        return type(exc).__name__, type(reason).__name__, normalized(str(exc))
    content = answer.content
    if answer.headers.get("Content-Type") == "application/json" and content:
        task = answer.json().get("task_id", task) if isinstance(answer.json(), dict) else task
    return (
        answer.status_code,
        answer.reason,
        list(answer.headers.items()),
        content,
        answer.encoding,
        answer.url.removeprefix(base_url),
        answer.raw.version,
        task,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_request, min_size=1, max_size=12))
def test_raw_exchanges_are_the_same_over_both_transports(requests_: list[dict[str, Any]]) -> None:
    with transport("http", FUZZ_CONFIG) as real, transport("inprocess", FUZZ_CONFIG) as fake:
        assert fake.adapter is not None
        session, local = requests.Session(), requests.Session()
        local.mount("http://", fake.adapter)
        base_url = real.client.base_url
        task = "none-yet"
        try:
            for request in requests_:
                over_http = exchange(session, base_url, request, task)
                in_process = exchange(local, IN_PROCESS_URL, request, task)
                assert over_http == in_process, request
                if isinstance(over_http, tuple) and len(over_http) == 8:
                    task = over_http[-1]
                real.clock.advance(request["advance"])
                fake.clock.advance(request["advance"])
            # Over HTTP a handler counts its request finished only after writing the answer, so a client that
            # reconnects at once (after Connection: close, or a reset) may overlap it: concurrency is no contract.
            real_stats, fake_stats = real.emulator.stats(), fake.emulator.stats()
            assert replace(real_stats, max_concurrency=0) == replace(fake_stats, max_concurrency=0)
            assert real.emulator.tasks() == fake.emulator.tasks()
            assert real.emulator.all_data() == fake.emulator.all_data()
        finally:
            session.close()
            local.close()


# -- transport faults no emulator produces: compared with real sockets ------------------------------------------


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, then closed), so a connection to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    yield port


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full, so a new connection's SYN goes unanswered until it times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    filling: list[socket.socket] = []
    try:
        for _ in range(8):
            conn = socket.socket()
            conn.settimeout(0.2)
            try:
                conn.connect(("127.0.0.1", port))
            except TimeoutError:
                conn.close()
                break
            filling.append(conn)
        else:
            pytest.skip("this kernel accepts every connection; no way to make one go unanswered")
        yield port
    finally:
        for conn in filling:
            conn.close()
        listener.close()


def client_for(base_url: str, adapter: InProcessAdapter | None = None) -> ScantrustClient:
    return ScantrustClient(base_url, SecretStr(TOKEN), connect_timeout=0.3, read_timeout=1.0, adapter=adapter)


def raw_failure(session: requests.Session, url: str) -> tuple[str, str, str, str]:
    with pytest.raises(requests.RequestException) as caught:
        session.get(url, timeout=(0.3, 1.0))
    exc = caught.value
    reason = exc.args[0]
    inner = getattr(reason, "reason", None)
    return type(exc).__name__, type(reason).__name__, type(inner).__name__, normalized(str(exc))


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_a_refused_or_unanswered_connection_is_what_a_real_socket_gives(fault: str) -> None:
    emulator = Emulator(EmulatorConfig(rate_limit=None))
    adapter = InProcessAdapter(emulator)
    setattr(adapter, fault, True)
    local = requests.Session()
    local.mount("http://", adapter)
    with refusing_port() if fault == "refuse" else unanswered_port() as port:
        real_url = f"http://127.0.0.1:{port}"
        assert raw_failure(requests.Session(), real_url + "/api/v2/me/") == raw_failure(local, real_url + "/api/v2/me/")
        real_client, fake_client = client_for(real_url), client_for(real_url, adapter)
        try:
            real, fake = outcome(real_client.me), outcome(fake_client.me)
        finally:
            real_client.close()
            fake_client.close()
    assert real == fake
    assert isinstance(real, Failure)
    assert (real.type, real.ambiguous) == (TransportError.__name__, False)
    assert adapter.last_delay == (0.0 if fault == "refuse" else 0.3)
    assert emulator.stats().total_requests == 0  # it never reached the server


def test_the_knobs_can_be_flipped_between_requests() -> None:
    with transport("inprocess", EmulatorConfig(rate_limit=None)) as t:
        assert t.adapter is not None
        t.adapter.refuse = True
        assert isinstance(outcome(t.client.me), Failure)
        t.adapter.refuse = False
        t.adapter.blackhole = True
        blackholed = outcome(t.client.me)
        assert isinstance(blackholed, Failure)
        assert "no answer to the connection attempt" in blackholed.message
        assert t.adapter.last_delay == CONNECT_TIMEOUT
        t.adapter.blackhole = False
        assert t.client.me() == dict(ME_BODY)
        assert t.adapter.last_delay == 0.0
        assert t.emulator.stats().total_requests == 1


# -- last_delay ----------------------------------------------------------------------------------------------------


def test_last_delay_is_the_answers_delay_or_the_timeout_that_ended_it() -> None:
    config = EmulatorConfig(rate_limit=None, latency=0.25, hang_seconds=60)
    emulator = Emulator(config, clock=ManualClock())
    adapter = InProcessAdapter(emulator)
    session = requests.Session()
    session.mount("http://", adapter)
    url = IN_PROCESS_URL + "/api/v2/me/"
    auth = {"Authorization": f"UAT {TOKEN}"}
    assert adapter.last_delay == 0.0
    assert session.get(url, headers=auth, timeout=(1, 5)).status_code == 200
    assert adapter.last_delay == 0.25
    emulator.configure(hang_rate=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(url, headers=auth, timeout=(1, 5))
    assert adapter.last_delay == 5
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(url, headers=auth, timeout=2.5)  # one number is both timeouts, as in requests
    assert adapter.last_delay == 2.5
    answer = session.get(url, headers=auth, timeout=None)  # no read timeout: the gateway gives up first
    assert (answer.status_code, adapter.last_delay) == (504, 60.25)
    emulator.configure(hang_rate=0.0, latency=3.0, reset_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        session.get(url, headers=auth, timeout=(1, 5))
    assert adapter.last_delay == 3.0  # the reset comes after the latency
    with pytest.raises(ValueError, match="less than or equal to 0"):
        session.get(url, headers=auth, timeout=(1, 0))  # checked by urllib3.Timeout, as over a socket
    with pytest.raises(ValueError, match="Invalid timeout"):
        session.get(url, headers=auth, timeout=(1, 2, 3))  # type: ignore[arg-type]


def test_last_delay_belongs_to_the_thread_that_sent() -> None:
    emulator = Emulator(EmulatorConfig(rate_limit=None, latency=0.5), clock=ManualClock())
    adapter = InProcessAdapter(emulator)
    client = client_for(IN_PROCESS_URL, adapter)
    try:
        worker = threading.Thread(target=client.me)
        worker.start()
        worker.join()
        assert adapter.last_delay == 0.0  # this thread has sent nothing yet
        emulator.configure(latency=0.75)
        client.me()
        assert adapter.last_delay == 0.75
    finally:
        client.close()


def test_an_invalid_url_is_refused_as_requests_refuses_it() -> None:
    adapter = InProcessAdapter(Emulator())
    session = requests.Session()
    session.mount("http://", adapter)
    with pytest.raises(requests.exceptions.InvalidURL):
        session.get("http://:80/api/v2/me/", timeout=1)
    real = requests.Session()
    with pytest.raises(requests.exceptions.InvalidURL):
        real.get("http://:80/api/v2/me/", timeout=1)
