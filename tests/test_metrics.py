"""Prometheus metrics and /healthz (issue 15, item 3): the real service loop against the emulator on loopback,
scraped over a real socket, its figures checked against the ledger and against what the emulator saw."""

import socket
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from support import TOKEN, Project, csv_text, in_process, make_project, stop

from daemon.config.models import listen_address
from daemon.decide import Health, PollAgain, RequestKind, Requeue
from daemon.metrics import BIND_RETRY, HEALTHY_WITHIN, Metrics
from daemon.sandbox import Emulator
from daemon.service import Service
from daemon.uploader import TOKEN_RECHECK_SECONDS, Pause

HEADER = ["extended_id", "intended_market"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Clock:
    """The service's monotonic clock: real time plus an offset a test moves forward (no sleeping)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def project_for(tmp_path: Path, emulator: Emulator, listen: str = "127.0.0.1:0") -> Project:
    return make_project(
        tmp_path / "site",
        emulator.base_url,
        metrics={"listen": listen},
        watch={"settle_seconds": 0},
        poll={"interval_seconds": 0.1, "max_interval_seconds": 0.2},
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


def started(project: Project, clock: Clock) -> Service:
    service = in_process(project, clock)
    service.telemetry.open()
    service.start()
    return service


@pytest.fixture
def services() -> Iterator[list[Service]]:
    made: list[Service] = []
    yield made
    for service in made:
        service.events.stop()
        service.telemetry.close()
        service.uploader.close()
        service.ledger.close()


def turn_until(service: Service, done: object, turns: int = 3000) -> None:
    for _ in range(turns):
        service.turn()
        if callable(done) and done():
            return
    raise AssertionError("the service did not get there")


def url(service: Service, path: str) -> str:
    assert service.telemetry.server is not None
    port = service.telemetry.server.port
    assert port is not None, "not listening"
    return f"http://127.0.0.1:{port}{path}"


def scrape(service: Service) -> Samples:
    answer = requests.get(url(service, "/metrics"), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for (n, k), v in samples.items() if n == name and v}


def query(project: Project, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(project.ledger) as db:
        return [tuple(r) for r in db.execute(sql)]


def test_figures_after_a_real_run_match_the_ledger_and_the_emulator(
    tmp_path: Path, emulator: Emulator, clock: Clock, services: list[Service]
) -> None:
    project = project_for(tmp_path, emulator)
    good = csv_text(HEADER, [(f"MET{i:08d}", f"M{i}") for i in range(250)])  # three sync calls
    project.drop("good.csv", good)
    project.drop("same-data.csv", csv_text(HEADER, [(f"ASY{i:08d}", "EU") for i in range(300)]))  # one async job
    project.drop("errors.csv", csv_text(HEADER, [("ERR00000001", "x"), ("1.23457E+11", "y")]))
    project.drop("broken.xlsx", b"not a workbook at all")
    emulator.throttle_burst(2, retry_after=0.05)  # two 429s, each retried
    began = time.time()
    service = started(project, clock)
    services.append(service)
    turn_until(service, lambda: len(list(project.archive.iterdir())) == 3 and service.idle())
    project.drop("good-again.csv", good)  # the same bytes: a duplicate
    turn_until(service, lambda: (project.outbox / "good-again.summary.json").exists() and service.idle())

    samples = scrape(service)
    files = by_label(samples, "scm_daemon_files", "status")
    assert files == {"completed": 2, "completed_with_errors": 1, "failed": 1, "duplicate": 1}
    assert files == service.ledger.overview()["files"]
    rows = dict(query(project, "SELECT status, count(*) FROM rows GROUP BY status"))
    assert by_label(samples, "scm_daemon_rows", "status") == rows
    assert (rows["uploaded"], rows["rejected"]) == (551, 1)
    assert value(samples, "scm_daemon_rows_queued") == 0
    assert value(samples, "scm_daemon_oldest_pending_row_age_seconds") == 0

    seen = emulator.stats().requests
    kinds = {"sync_upload": ("POST", "scm_upload"), "async_submit": ("POST", "scm_upload_async")}
    kinds["task_poll"] = ("GET", "scm_task")
    for kind, emulated in kinds.items():
        counted = sum(
            v for (n, k), v in samples.items() if n == "scm_daemon_api_requests_total" and ("kind", kind) in k
        )
        assert counted == seen[emulated], kind
        assert value(samples, "scm_daemon_api_request_duration_seconds_count", kind=kind) == counted
    attempts = query(project, "SELECT sum(attempts) FROM batches")[0][0]
    uploads = sum(seen[kinds[k]] for k in ("sync_upload", "async_submit"))
    assert attempts == uploads
    assert value(samples, "scm_daemon_api_requests_total", kind="sync_upload", status="429") == 2
    assert value(samples, "scm_daemon_api_throttled_total", kind="sync_upload") == 2 == emulator.stats().throttled
    assert value(samples, "scm_daemon_retries_total", kind="sync_upload") >= 2
    assert began <= value(samples, "scm_daemon_last_upload_success_timestamp_seconds") <= time.time()
    assert by_label(samples, "scm_daemon_uploads_paused", "reason") == {}
    assert by_label(samples, "scm_daemon_breaker_state", "state") == {"closed": 1}
    assert value(samples, "scm_daemon_leader") == 1  # the only instance leads
    assert ("scm_daemon_build_info", (("version", "0.1.0"),)) in samples
    assert TOKEN not in requests.get(url(service, "/metrics"), timeout=10).text


def test_healthz_is_200_while_the_loop_turns_and_503_when_it_stops(
    tmp_path: Path, emulator: Emulator, clock: Clock, services: list[Service]
) -> None:
    project = project_for(tmp_path, emulator)
    service = started(project, clock)
    services.append(service)
    before = requests.get(url(service, "/healthz"), timeout=10)
    assert (before.status_code, before.json()["status"]) == (503, "starting")  # recovered, not turned yet
    service.turn()
    ok = requests.get(url(service, "/healthz"), timeout=10)
    assert (ok.status_code, ok.json()["status"]) == (200, "ok")

    clock.offset += HEALTHY_WITHIN + 1  # the loop is stuck: nothing turned it for 31 s
    stalled = requests.get(url(service, "/healthz"), timeout=10)
    assert (stalled.status_code, stalled.json()["status"]) == (503, "stalled")
    assert stalled.json()["seconds_since_loop_turned"] > HEALTHY_WITHIN
    assert value(scrape(service), "scm_daemon_loop_tick_age_seconds") > HEALTHY_WITHIN

    service.turn()
    assert requests.get(url(service, "/healthz"), timeout=10).status_code == 200
    assert requests.get(url(service, "/nothing"), timeout=10).status_code == 404


def test_a_refused_token_shows_as_paused_with_the_rows_waiting_and_clears_when_renewed(
    tmp_path: Path, emulator: Emulator, clock: Clock, services: list[Service]
) -> None:
    project = project_for(tmp_path, emulator)
    emulator.configure(revoked=True, faults_spare_me=True)  # refused for uploads; the start-up check passes
    project.drop("waiting.csv", csv_text(HEADER, [(f"TOK{i:08d}", f"M{i}") for i in range(40)]))
    service = started(project, clock)
    services.append(service)
    turn_until(service, lambda: service.uploader.pause is not None and service.uploader.pause.cause == "token")

    samples = scrape(service)
    assert by_label(samples, "scm_daemon_uploads_paused", "reason") == {"token": 1}
    assert value(samples, "scm_daemon_rows_queued") == 40
    assert value(samples, "scm_daemon_files", status="active") == 1
    oldest = min(str(r[0]) for r in query(project, "SELECT created_at FROM batches"))
    age = value(samples, "scm_daemon_oldest_pending_row_age_seconds")
    assert 0 <= age <= (datetime.now(UTC) - datetime.fromisoformat(oldest)).total_seconds()
    assert value(samples, "scm_daemon_api_requests_total", kind="sync_upload", status="401") >= 1

    emulator.configure(revoked=False)
    clock.offset += TOKEN_RECHECK_SECONDS + 1  # the next token check is due
    turn_until(service, lambda: (project.outbox / "waiting.summary.json").exists() and service.idle())
    samples = scrape(service)
    assert by_label(samples, "scm_daemon_uploads_paused", "reason") == {}
    # GET /me/: the start-up check, then the re-check that found the token accepted again
    assert value(samples, "scm_daemon_api_requests_total", kind="token_check", status="200") == 2
    assert value(samples, "scm_daemon_rows", status="uploaded") == 40
    assert value(samples, "scm_daemon_rows_queued") == 0


def test_a_taken_port_is_logged_the_service_runs_on_and_listens_once_the_port_is_free(
    tmp_path: Path, emulator: Emulator, clock: Clock, services: list[Service]
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    project = project_for(tmp_path, emulator, listen=f"127.0.0.1:{port}")
    project.drop("a.csv", csv_text(HEADER, [("PORT00000001", "x")]))
    with capture_logs() as logs:
        service = started(project, clock)
        services.append(service)
        turn_until(service, (project.outbox / "a.summary.json").exists)  # uploads go on
    (error,) = [e for e in logs if e["event"] == "metrics_unavailable"]
    assert error["log_level"] == "error"
    assert error["listen"] == f"127.0.0.1:{port}"
    assert "tried again" in error["action"]
    assert error["retry_in"] == BIND_RETRY[0]
    assert service.telemetry.server is not None
    assert service.telemetry.server.port is None

    with capture_logs() as logs:
        clock.offset += BIND_RETRY[0]
        service.turn()  # still taken: said again, as a warning, and the wait doubles
        holder.close()
        service.turn()
        assert service.telemetry.server.port is None  # not before the retry is due
        clock.offset += 2 * BIND_RETRY[0]
        service.turn()
    (again,) = [e for e in logs if e["event"] == "metrics_unavailable"]
    assert (again["log_level"], again["retry_in"]) == ("warning", 2 * BIND_RETRY[0])
    assert [e["after_failures"] for e in logs if e["event"] == "metrics_recovered"] == [2]
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    assert value(scrape(service), "scm_daemon_files", status="completed") == 1


def test_without_metrics_listen_nothing_listens(tmp_path: Path, emulator: Emulator, services: list[Service]) -> None:
    project = make_project(tmp_path / "site", emulator.base_url)
    service = started(project, Clock())
    services.append(service)
    service.turn()
    assert service.telemetry.server is None


def test_retries_count_requeues_and_failed_polls_only() -> None:
    metrics = Metrics()
    metrics.decided(
        RequestKind.SYNC_UPLOAD, Requeue(Health.FAILURE, delay=1.0, error="500", ambiguous=False, count_failure=True)
    )
    metrics.decided(RequestKind.TASK_POLL, PollAgain(Health.SUCCESS, delay=1.0, task_state="pending", error=None))
    metrics.decided(RequestKind.TASK_POLL, PollAgain(Health.FAILURE, delay=1.0, task_state=None, error="502"))
    metrics.request("sync_upload", "429", 0.01)
    metrics.request("sync_upload", "200", 0.01)
    get = metrics.registry.get_sample_value
    assert get("scm_daemon_retries_total", {"kind": "sync_upload"}) == 1
    assert get("scm_daemon_retries_total", {"kind": "task_poll"}) == 1
    assert get("scm_daemon_api_throttled_total", {"kind": "sync_upload"}) == 1
    assert get("scm_daemon_api_requests_total", {"kind": "sync_upload", "status": "200"}) == 1


@given(st.ip_addresses(), st.integers(0, 65535))
def test_listen_addresses_read_back(host: object, port: int) -> None:
    text = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    assert listen_address(text) == (str(host), port)


@pytest.mark.parametrize("bad", ["9464", "127.0.0.1", "::1:9464", "host:port", "127.0.0.1:70000", ":9464"])
def test_listen_addresses_that_are_not_host_port_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"9464|port"):
        listen_address(bad)


def test_an_api_outage_shows_as_paused_with_the_breaker_open_and_clears_after(
    tmp_path: Path, emulator: Emulator, clock: Clock, services: list[Service]
) -> None:
    project = make_project(
        tmp_path / "site",
        emulator.base_url,
        metrics={"listen": "127.0.0.1:0"},
        watch={"settle_seconds": 0},
        retry={"breaker_failures": 2, "max_attempts": 50, "breaker_cooldown_seconds": 30},
    )
    emulator.configure(fail_rate=1.0, faults_spare_me=True)  # every upload answered 5xx; the start-up check passes
    project.drop("down.csv", csv_text(HEADER, [(f"DOWN{i:08d}", f"M{i}") for i in range(150)]))
    service = started(project, clock)
    services.append(service)
    turn_until(service, lambda: service.uploader.breaker.is_open and not service.uploader.inflight)

    samples = scrape(service)
    assert by_label(samples, "scm_daemon_uploads_paused", "reason") == {"api_down": 1}
    assert by_label(samples, "scm_daemon_breaker_state", "state") == {"open": 1}
    failed = sum(
        v for (n, k), v in samples.items() if n == "scm_daemon_api_requests_total" and dict(k)["status"].startswith("5")
    )
    assert failed == emulator.stats().injected_failures >= 2
    assert value(samples, "scm_daemon_retries_total", kind="sync_upload") == failed
    assert value(samples, "scm_daemon_last_upload_success_timestamp_seconds") == 0
    assert value(samples, "scm_daemon_rows_queued") == 150

    emulator.configure(fail_rate=0.0)
    clock.offset += 31  # the cool-down is over: the half-open trial goes out
    assert by_label(scrape(service), "scm_daemon_breaker_state", "state") == {"half_open": 1}
    turn_until(service, lambda: (project.outbox / "down.summary.json").exists() and service.idle())
    samples = scrape(service)
    assert by_label(samples, "scm_daemon_uploads_paused", "reason") == {}
    assert by_label(samples, "scm_daemon_breaker_state", "state") == {"closed": 1}
    assert value(samples, "scm_daemon_rows", status="uploaded") == 150


def test_a_configuration_pause_has_its_own_reason(
    tmp_path: Path, emulator: Emulator, clock: Clock, services: list[Service]
) -> None:
    project = project_for(tmp_path, emulator)
    service = started(project, clock)
    services.append(service)
    service.uploader.pause = Pause("configuration", "POST /api/v2/scm/upload/ answered 404")
    assert by_label(scrape(service), "scm_daemon_uploads_paused", "reason") == {"configuration": 1}


@pytest.mark.slow
def test_the_real_service_serves_metrics_until_it_stops(tmp_path: Path, emulator: Emulator) -> None:
    with socket.socket() as probe:  # a free port for the service (released before it starts)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    project = project_for(tmp_path, emulator, listen=f"127.0.0.1:{port}")
    with project.running() as process:
        project.drop("live.csv", csv_text(HEADER, [(f"LIVE{i:08d}", "x") for i in range(30)]))
        project.wait_for(project.outbox / "live.summary.json")
        deadline = time.monotonic() + 60
        while True:  # the file is reported a moment before the ledger says done
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            if 'scm_daemon_rows{status="uploaded"} 30.0' in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert 'scm_daemon_rows{status="uploaded"} 30.0' in text
        assert 'scm_daemon_files{status="completed"} 1.0' in text
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["status"] == "ok"
        assert stop(process) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert '"event": "metrics_listening"' in (project.root / "service.log").read_text()
