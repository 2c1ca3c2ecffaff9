"""The API client's async upload and task status calls, against the emulator and against raw servers."""

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from daemon.api import (
    ErrorKind,
    NotFound,
    ProtocolError,
    Rejected,
    ScantrustClient,
    TaskState,
    TaskStatus,
    Throttled,
    classify,
    task_state,
)
from daemon.sandbox import Emulator

TOKEN = "sandbox-token"
STEP = 0.05
FINAL = (TaskState.COMPLETE, TaskState.FAILED)


def code(n: int) -> str:
    return f"CODE{n:08d}"


def make_client(base_url: str, *, pool_size: int = 8) -> ScantrustClient:
    return ScantrustClient(base_url, SecretStr(TOKEN), connect_timeout=2.0, read_timeout=5.0, pool_size=pool_size)


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    emulator.configure(task_pending_seconds=STEP, task_running_seconds=STEP)
    return emulator


@pytest.fixture
def client(emu: Emulator) -> Iterator[ScantrustClient]:
    api = make_client(emu.base_url)
    yield api
    api.close()


def until_final(client: ScantrustClient, task_id: str) -> list[TaskStatus]:
    seen = [client.task(task_id)]
    deadline = time.monotonic() + 5
    while seen[-1].state not in FINAL:
        assert time.monotonic() < deadline, "the task never ended"
        time.sleep(0.01)
        seen.append(client.task(task_id))
    return seen


# -- against the emulator --------------------------------------------------------------------------------------


def test_an_async_upload_runs_to_complete(emu: Emulator, client: ScantrustClient) -> None:
    task_id = client.upload_async("extended_id", [code(1), code(2)], {"lot": "7"}, "drop.csv#3")
    assert isinstance(task_id, str)
    assert task_id
    seen = until_final(client, task_id)
    states = [status.state for status in seen]
    assert states[0] is TaskState.PENDING
    assert states[-1] is TaskState.COMPLETE
    assert set(states) <= {TaskState.PENDING, TaskState.RUNNING, TaskState.COMPLETE}
    done = seen[-1]
    assert (done.id, done.raw_state, done.codes_affected, done.reference) == (task_id, "complete", 2, "drop.csv#3")
    assert done.created_at is not None
    assert done.completed_at is not None
    assert emu.all_data() == {code(1): {"lot": "7"}, code(2): {"lot": "7"}}


def test_the_docs_vocabulary_maps_to_the_same_states(emu: Emulator, client: ScantrustClient) -> None:
    emu.configure(task_states="docs", task_pending_seconds=0, task_running_seconds=0.3, task_fail_rate=1.0)
    task_id = client.upload_async("extended_id", [code(1)], {"lot": "7"}, "r")
    running = client.task(task_id)
    assert (running.state, running.raw_state) == (TaskState.RUNNING, "running")
    failed = until_final(client, task_id)[-1]
    assert (failed.state, failed.raw_state, failed.codes_affected) == (TaskState.FAILED, "error", 0)
    assert emu.all_data() == {}


def test_an_unknown_state_is_not_final_and_the_client_does_not_log_it(emu: Emulator, client: ScantrustClient) -> None:
    # The uploader warns once per state name (task_state_unknown); the client would warn on every poll.
    emu.configure(task_unknown_state="Queued_For_Review", task_pending_seconds=0.3)
    task_id = client.upload_async("extended_id", [code(1)], {"lot": "7"}, "r")
    with capture_logs() as logs:
        status = client.task(task_id)
    assert (status.state, status.raw_state) == (TaskState.UNKNOWN, "Queued_For_Review")
    assert status.state not in FINAL
    assert [e["event"] for e in logs] == ["api_answer"]  # the debug log of the answer; no warning from the client
    assert until_final(client, task_id)[-1].state is TaskState.COMPLETE


def test_an_unknown_task_is_not_found(client: ScantrustClient) -> None:
    with pytest.raises(NotFound) as caught:
        client.task("no/such task")  # quoted into one path segment
    assert caught.value.status == 404
    assert isinstance(caught.value, Rejected)
    assert classify(caught.value) is ErrorKind.DEFECTIVE


def test_a_refused_job_is_rejected(emu: Emulator, client: ScantrustClient) -> None:
    with pytest.raises(Rejected) as caught:
        client.upload_async("extended_id", [code(n) for n in range(1001)], {"lot": "7"}, "r")
    assert "1000" in caught.value.detail
    assert emu.tasks() == ()


def test_async_uploads_count_against_the_throttle(emu: Emulator, client: ScantrustClient) -> None:
    emu.configure(rate_limit=1)
    client.upload_sync("extended_id", [{"extended_id": code(1)}])
    with pytest.raises(Throttled):
        client.upload_async("extended_id", [code(2)], {"lot": "7"}, "r")


def test_task_requests_are_bounded_by_the_pool(emu: Emulator) -> None:
    api = make_client(emu.base_url, pool_size=2)
    task_id = api.upload_async("extended_id", [code(1)], {"lot": "1"}, "r")
    emu.configure(latency=0.05)
    threads = [threading.Thread(target=api.task, args=(task_id,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    api.close()
    assert emu.stats().task_polls == 8
    assert emu.stats().max_concurrency == 2


# -- answer shapes from a raw server ---------------------------------------------------------------------------


@pytest.fixture
def serve() -> Iterator[Callable[[bytes], str]]:
    """Start a loopback server that answers every request 200 with the given JSON body; returns its URL."""
    stops: list[Callable[[], None]] = []

    def start(body: bytes) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)
        stopped = threading.Event()

        def run() -> None:
            while not stopped.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(5)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                    conn.sendall(head.encode() + body)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def stop() -> None:
            stopped.set()
            thread.join(5)
            listener.close()

        stops.append(stop)
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for stop in stops:
        stop()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"task_id": "abc-123"}, "abc-123"),
        ({"task_id": 4711}, "4711"),
        ({"task_id": " x "}, "x"),
        ({"id": "from-id"}, "from-id"),
        ({"task_id": 7, "extra": [1]}, "7"),
    ],
)
def test_task_ids_are_read_tolerantly(serve: Callable[[bytes], str], body: object, expected: str) -> None:
    api = make_client(serve(json.dumps(body).encode()))
    assert api.upload_async("extended_id", [code(1)], {"lot": "1"}, "r") == expected
    api.close()


@pytest.mark.parametrize("body", [{}, {"task_id": ""}, {"task_id": None}, {"task_id": True}, {"task_id": [1]}, [1]])
def test_an_answer_without_a_task_id_is_a_protocol_error(serve: Callable[[bytes], str], body: object) -> None:
    api = make_client(serve(json.dumps(body).encode()))
    with pytest.raises(ProtocolError) as caught:
        api.upload_async("extended_id", [code(1)], {"lot": "1"}, "r")
    api.close()
    assert caught.value.ambiguous is True  # the job may exist without the client knowing its id


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"id": 9, "state": "complete", "codesAffected": 3, "createdAt": "2025-01-01", "completedAt": 17},
            TaskStatus("9", TaskState.COMPLETE, "complete", 3, None, "2025-01-01", None, "17"),
        ),
        (
            {"state": "IN PROGRESS", "codes_affected": "5", "reference": "r", "started_at": None},
            TaskStatus("t-1", TaskState.RUNNING, "IN PROGRESS", None, "r", None, None, None),
        ),
        ({"status": "error"}, TaskStatus("t-1", TaskState.FAILED, "error", None, None, None, None, None)),
        ({}, TaskStatus("t-1", TaskState.UNKNOWN, "", None, None, None, None, None)),
        (
            {"id": True, "state": 3, "reference": {"x": 1}},
            TaskStatus("t-1", TaskState.UNKNOWN, "3", None, None, None, None, None),
        ),
    ],
)
def test_task_answers_are_read_tolerantly(serve: Callable[[bytes], str], body: object, expected: TaskStatus) -> None:
    api = make_client(serve(json.dumps(body).encode()))
    assert api.task("t-1") == expected
    api.close()


def test_a_task_answer_that_is_not_an_object_is_a_protocol_error(serve: Callable[[bytes], str]) -> None:
    api = make_client(serve(b'["complete"]'))
    with pytest.raises(ProtocolError):
        api.task("t-1")
    api.close()


# -- the state mapping -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("pending", TaskState.PENDING),
        ("in-progress", TaskState.RUNNING),
        ("in_progress", TaskState.RUNNING),
        (" In Progress ", TaskState.RUNNING),
        ("running", TaskState.RUNNING),
        ("complete", TaskState.COMPLETE),
        ("COMPLETE", TaskState.COMPLETE),
        ("failed", TaskState.FAILED),
        ("error", TaskState.FAILED),
        ("completed", TaskState.UNKNOWN),  # close, but not a documented word: not taken for success
        ("success", TaskState.UNKNOWN),
        ("", TaskState.UNKNOWN),
    ],
)
def test_task_state_mapping(raw: str, state: TaskState) -> None:
    assert task_state(raw) is state


@given(st.text())
def test_task_state_never_fails(raw: str) -> None:
    assert isinstance(task_state(raw), TaskState)
