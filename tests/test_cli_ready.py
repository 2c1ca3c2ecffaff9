"""The CLI before a first real run: `check` creates nothing, `check --sandbox`, token file modes, usage exits, and
the start-up check (GET /api/v2/me/ before any file is taken)."""

import http.server
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import Project, csv_text, make_project, stop

from daemon.sandbox import Emulator, EmulatorConfig

MESSAGE = "api.base_url must be the host only, e.g. https://api.scantrust.com; drop '/api/v2/'"


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Project:
    return make_project(tmp_path / "site", emulator.base_url)


def test_check_creates_neither_the_ledger_nor_any_folder(project: Project) -> None:
    out = project.cli("check")
    assert out.returncode == 0, out.stderr
    assert "no ledger yet (it is created on first run)" in out.stdout
    assert "token: accepted" in out.stdout
    assert not project.ledger.parent.exists()
    assert not project.outbox.exists()
    assert not project.archive.exists()
    assert not project.failed.exists()


def test_check_refuses_a_ledger_folder_that_cannot_be_created(project: Project) -> None:
    (project.root / "state").write_text("a file where the ledger's folder should be")
    out = project.cli("check")
    assert out.returncode == 2
    assert "fix paths.ledger" in out.stderr


def test_check_sandbox_checks_against_the_emulator_without_a_token(tmp_path: Path) -> None:
    project = make_project(tmp_path / "site", "https://api.scantrust.com")  # never contacted
    out = project.cli("check", "--sandbox", SCM_API__TOKEN="")
    assert out.returncode == 0, out.stderr
    assert "token: accepted by http://127.0.0.1:" in out.stdout
    assert "ledger.sandbox.sqlite3" in out.stdout
    assert not project.ledger.parent.exists()


@pytest.mark.slow
def test_check_warns_about_a_token_file_others_may_read(project: Project) -> None:
    token_file = project.root / "token.txt"
    token_file.write_text("sandbox-token\n")
    token_file.chmod(0o644)
    project.config.write_text(project.config.read_text().replace("[api]", '[api]\ntoken_file = "token.txt"', 1))
    out = project.cli("check", SCM_API__TOKEN="")
    assert out.returncode == 0, out.stderr
    assert f"WARNING: token file {token_file} is readable by group or others (mode 644)" in out.stdout
    assert f"chmod 600 {token_file}" in out.stdout
    token_file.chmod(0o600)
    out = project.cli("check", SCM_API__TOKEN="")
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stdout


def test_status_on_a_missing_ledger_says_so_and_exits_0(project: Project) -> None:
    out = project.cli("status")
    assert out.returncode == 0, out.stderr
    assert f"no ledger yet at {project.ledger} (it is created on first run)" in out.stdout
    assert not project.ledger.parent.exists()


def test_validate_on_a_missing_file_exits_2_naming_it(project: Project) -> None:
    out = project.cli("validate", "nothing-here.csv")
    assert out.returncode == 2
    assert "file nothing-here.csv does not exist; check the path" in out.stderr


@pytest.mark.slow
def test_a_base_url_with_the_api_path_is_refused_before_anything_runs(project: Project) -> None:
    project.config.write_text(
        project.config.read_text().replace(project.base_url, "https://api.staging.scantrust.io/api/v2/")
    )
    for command in ("check", "run"):
        out = project.cli(command, "--once") if command == "run" else project.cli(command)
        assert out.returncode == 2
        assert MESSAGE in out.stderr
        assert str(project.config) in out.stderr


class _NotTheApi(http.server.BaseHTTPRequestHandler):
    """A web server on the configured host that is not the API: 404 for every path."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"detail": "Not found."}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, format: str, *args: object) -> None:
        pass


class _OnlyMe(_NotTheApi):
    """A server that knows the token check but not the upload endpoints (an API of another version)."""

    def do_GET(self) -> None:
        if self.path != "/api/v2/me/":
            return self.do_POST()
        body = b'{"email": "ops@example.test"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A loopback port nobody listens on (a connection to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROWS = [("CODE00000001", "x"), ("CODE00000002", "y")]


@pytest.mark.slow
def test_a_404_on_the_upload_endpoint_pauses_and_rejects_no_row(tmp_path: Path) -> None:
    with serving(_OnlyMe) as base_url:
        project = make_project(tmp_path / "site", base_url)
        project.drop("a.csv", csv_text(["extended_id", "batch"], ROWS))
        out = project.cli("run", "--once")
        rows = json.loads(project.cli("status", "--json").stdout)["rows"]
    assert out.returncode == 2, out.stderr
    assert "check api.base_url" in out.stderr
    assert not list(project.archive.glob("*"))  # not filed as done
    assert not list(project.outbox.glob("*.report.csv"))  # no report: the rows are pending, none rejected
    assert rows == {"queued": 2}  # both rows wait for the fix; none rejected or failed


# --- the start-up check: GET /api/v2/me/ before any file is taken ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("once", [True, False])
def test_a_refused_token_ends_run_at_start_with_exit_3_taking_nothing(
    project: Project, emulator: Emulator, once: bool
) -> None:
    emulator.configure(revoked=True)
    dropped = project.drop("a.csv", csv_text(["extended_id", "batch"], ROWS))
    out = project.cli("run", *(["--once"] if once else []), timeout=60)
    assert out.returncode == 3, out.stderr
    assert "refused the token" in out.stderr
    assert "Renew the token and run again" in out.stderr
    assert dropped.exists()  # left in the inbox, not claimed
    assert emulator.stats().data_requests == 0
    assert "sandbox-token" not in out.stderr + out.stdout
    status = project.cli("status").stdout
    assert "the service ended at start-up (exit 3): renew the token, then start it again" in status
    assert "checked every few minutes" not in status  # no process keeps that promise


@pytest.mark.slow
def test_an_unreachable_api_ends_run_once_with_exit_1_taking_nothing(tmp_path: Path) -> None:
    port = free_port()
    project = make_project(tmp_path / "site", f"http://127.0.0.1:{port}")
    dropped = project.drop("a.csv", csv_text(["extended_id", "batch"], ROWS))
    out = project.cli("run", "--once", timeout=60)
    assert out.returncode == 1, out.stderr
    reason = f"GET /api/v2/me/: cannot connect to 127.0.0.1:{port} (connection refused)"
    assert f"not started: the API cannot be reached ({reason})" in out.stderr
    assert "No file was taken from the inbox" in out.stderr
    assert "Max retries" not in out.stderr  # the HTTP library's words stay in the debug log
    assert "asked again" not in out.stderr  # this run asks no more
    assert dropped.exists()
    status = project.cli("status").stdout
    assert "UPLOADS PAUSED: the last `run --once` ended at " in status
    assert f"{reason}); no file was taken" in status


@pytest.mark.slow
def test_a_host_that_is_not_the_api_ends_run_once_with_exit_2(tmp_path: Path) -> None:
    with serving(_NotTheApi) as base_url:
        project = make_project(tmp_path / "site", base_url)
        dropped = project.drop("a.csv", csv_text(["extended_id", "batch"], ROWS))
        out = project.cli("run", "--once", timeout=60)
        with project.running() as service:  # the service waits for a fixed configuration, taking nothing
            deadline = time.monotonic() + 30
            while '"configuration_problem"' not in (project.root / "service.log").read_text():
                assert time.monotonic() < deadline, "no configuration problem logged"
                time.sleep(0.1)
            time.sleep(1.5)  # several turns of the loop
            assert dropped.exists()
            assert stop(service, signal.SIGTERM) == 0
    assert out.returncode == 2, out.stderr
    assert "GET /api/v2/me/" in out.stderr
    assert "this is not the Scantrust API; check api.base_url" in out.stderr
    assert dropped.exists()


@pytest.mark.slow
def test_the_service_waits_for_an_unreachable_api_and_starts_once_it_answers(tmp_path: Path) -> None:
    port = free_port()
    project = make_project(tmp_path / "site", f"http://127.0.0.1:{port}")
    dropped = project.drop("a.csv", csv_text(["extended_id", "batch"], ROWS))
    emulator = Emulator(EmulatorConfig(rate_limit=None))
    with project.running() as service:
        deadline = time.monotonic() + 30
        status = ""
        while "the API cannot be reached" not in status and time.monotonic() < deadline:
            time.sleep(0.3)
            status = project.cli("status").stdout
        reason = f"GET /api/v2/me/: cannot connect to 127.0.0.1:{port} (connection refused)"
        assert f"UPLOADS PAUSED: not started yet: the API cannot be reached ({reason})" in status
        assert "asked again at " in status
        assert dropped.exists()  # nothing is taken while the API cannot be asked
        emulator.start(port=port)
        try:
            project.wait_for(project.outbox / "a.summary.json", timeout=90)
        finally:
            emulator.stop()
        assert stop(service, signal.SIGTERM) == 0
    assert project.summary("a")["status"] == "completed"
    assert "UPLOADS PAUSED" not in project.cli("status").stdout


@pytest.mark.slow
@pytest.mark.parametrize("source", ["environment", "file"])
def test_the_paused_token_message_tells_where_the_token_came_from(
    project: Project, emulator: Emulator, source: str
) -> None:
    env: dict[str, str] = {}
    if source == "file":
        token_file = project.root / "token.txt"
        token_file.write_text("sandbox-token\n")
        token_file.chmod(0o600)
        project.config.write_text(project.config.read_text().replace("[api]", '[api]\ntoken_file = "token.txt"', 1))
        env["SCM_API__TOKEN"] = ""
    with project.running(**env) as service:
        deadline = time.monotonic() + 30
        while '"api_ready"' not in (project.root / "service.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        emulator.configure(revoked=True)  # revoked while the service runs: uploads pause, the rows wait
        project.drop("a.csv", csv_text(["extended_id", "batch"], ROWS))
        status = ""
        while "UPLOADS PAUSED" not in status and time.monotonic() < deadline + 30:
            time.sleep(0.3)
            status = project.cli("status").stdout
        assert stop(service, signal.SIGTERM) == 0
    if source == "environment":
        assert "the token comes from SCM_API__TOKEN: set a valid one and restart the service" in status
    else:
        assert "renew it in the token file or credential; it is checked every few minutes and on reload" in status
    assert "sandbox-token" not in status


def test_check_with_the_debug_log_shows_each_api_answer_scrubbed(project: Project) -> None:
    out = project.cli("check", "--log-level", "debug")
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stderr.splitlines() if '"api_answer"' in line]
    assert [(a["request"], a["status"]) for a in answers] == [("GET /api/v2/me/", 200)]
    assert answers[0]["body"].startswith("{")
    assert "sandbox-token" not in out.stderr
