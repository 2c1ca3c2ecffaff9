"""The sd_notify protocol over a real AF_UNIX datagram socket, and a real service process that speaks it."""

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support import csv_text, make_project

from daemon.notify import Notifier, socket_address
from daemon.sandbox import Emulator


class Manager:
    """The service manager's end: a datagram socket that collects what the service sends."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    def receive(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.receive():
                if key in message and (value is None or message[key] == value):
                    return message
        raise AssertionError(f"no {key}={value} among {self.messages}")


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(str(tmp_path / "notify.sock"))
    yield m
    m.sock.close()


def test_socket_address_accepts_paths_and_abstract_names_only() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify/123") == "\0/org/freedesktop/systemd1/notify/123"
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/path") is None


def test_messages_arrive_as_newline_separated_assignments(manager: Manager) -> None:
    notifier = Notifier(manager.address)
    notifier.ready("ready: watching /srv/in")
    notifier.status("working: 1 file(s) in progress", force=True)
    notifier.reloading()
    notifier.stopping("stopping: waiting for 2 request(s) in flight")
    notifier.close()
    got = manager.receive()
    assert got[0] == {"READY": "1", "STATUS": "ready: watching /srv/in"}
    assert got[1] == {"STATUS": "working: 1 file(s) in progress"}
    assert got[2]["RELOADING"] == "1"
    assert int(got[2]["MONOTONIC_USEC"]) > 0
    assert got[3] == {"STOPPING": "1", "STATUS": "stopping: waiting for 2 request(s) in flight"}


def test_a_manager_that_does_not_read_never_stalls_the_service(manager: Manager) -> None:
    # A datagram queue holds only a few messages (net.unix.max_dgram_qlen, 10 by default); a blocking send to a
    # manager that does not read would stop the service loop for good.
    now = [0.0]
    notifier = Notifier(manager.address, watchdog_seconds=1, clock=lambda: now[0])
    sent: list[bool] = []

    def chatter() -> None:
        for n in range(200):
            notifier.alive()
            notifier.status(f"working on row {n}", force=True)
            now[0] += 1.0
        sent.append(True)

    worker = threading.Thread(target=chatter, daemon=True)
    worker.start()
    worker.join(timeout=30)  # generous: a blocked send never returns at all
    assert sent == [True], "a send blocked on a full queue"
    queued = manager.receive()
    assert 0 < len(queued) < 400  # some went out, the rest were dropped rather than waited for
    notifier.status("idle: watching /srv/in")
    assert manager.receive()[-1] == {"STATUS": "idle: watching /srv/in"}  # sent once the queue has room
    notifier.close()


def test_abstract_socket_names_work() -> None:
    name = f"scm-daemon-test-{uuid.uuid4().hex}"
    manager = Manager("\0" + name)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.enabled
        notifier.ready("up")
        notifier.close()
        assert manager.wait_for("READY", "1", timeout=2)["STATUS"] == "up"
    finally:
        manager.sock.close()


def test_status_is_sent_once_per_text_and_not_more_than_once_a_second(manager: Manager) -> None:
    now = [100.0]
    notifier = Notifier(manager.address, clock=lambda: now[0])
    notifier.status("a")
    notifier.status("a")
    now[0] += 0.5
    notifier.status("b")  # too soon after "a"
    now[0] += 0.6
    notifier.status("b")
    notifier.status("b")
    notifier.close()
    assert [m["STATUS"] for m in manager.receive()] == ["a", "b"]


def test_watchdog_pings_at_half_the_interval_and_only_when_asked(manager: Manager) -> None:
    now = [0.0]
    notifier = Notifier(manager.address, watchdog_seconds=10, clock=lambda: now[0])
    for _ in range(40):  # 20 s of a loop that turns every half second
        notifier.alive()
        now[0] += 0.5
    notifier.close()
    pings = [m for m in manager.receive() if m == {"WATCHDOG": "1"}]
    assert len(pings) == 4  # at 0, 5, 10 and 15 s


def test_watchdog_settings_come_from_the_environment() -> None:
    mine = str(os.getpid())
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000"}).watchdog_seconds == 30
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": mine}).watchdog_seconds == 30
    # The variables were meant for another process (inherited from a parent): not ours to honour.
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier.from_env({"WATCHDOG_USEC": "0"}).watchdog_seconds is None
    assert Notifier.from_env({}).watchdog_seconds is None


def test_without_a_manager_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not Notifier.from_env({}).enabled
    assert Notifier.from_env({}).send("READY=1") is False
    gone = Notifier(str(tmp_path / "nobody-listens.sock"))
    with capture_logs() as logs:
        assert gone.send("READY=1") is False
    gone.close()
    assert logs[0]["event"] == "notify_failed"


@pytest.mark.slow
def test_a_real_service_reports_ready_status_watchdog_and_stopping(
    tmp_path: Path, emulator: Emulator, manager: Manager
) -> None:
    emulator.configure(latency=1.5)  # long enough for a "working" status between two idle ones
    project = make_project(tmp_path / "site", emulator.base_url)
    service = project.start(NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="400000")
    reading = threading.Event()
    reading.set()

    def read() -> None:  # as systemd does: the queue is read all the time
        while reading.is_set():
            manager.receive()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready = manager.wait_for("READY", "1")
        assert ready["STATUS"] == f"ready: watching {project.inbox}"
        project.drop("a.csv", csv_text(["extended_id", "batch"], [(f"NOTIFY{i:06d}", f"B{i}") for i in range(10)]))
        project.wait_for(project.outbox / "a.summary.json")
        manager.wait_for("STATUS", f"idle: watching {project.inbox}")
        service.send_signal(signal.SIGTERM)
        stopping = manager.wait_for("STOPPING", "1")
        assert stopping["STATUS"].startswith("stopping:")
        assert service.wait(timeout=30) == 0
    finally:
        reading.clear()
        reader.join(timeout=5)
        if service.poll() is None:
            service.kill()
            service.wait()
    messages = manager.receive()
    statuses = [m["STATUS"] for m in messages if "STATUS" in m]
    assert statuses[0] == "starting: checking the configuration, folders and ledger"
    assert any(s.startswith("working:") for s in statuses)
    assert sum(m == {"WATCHDOG": "1"} for m in messages) >= 3  # a ping every 0.2 s while the loop turns
