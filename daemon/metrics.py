"""Prometheus metrics and the health check: /metrics and /healthz on `[metrics] listen`, served from a daemon thread.

Two kinds of figures. What the ledger knows (files, rows, the oldest waiting work) is read at scrape time by a
custom collector, so it can never drift from the ledger. What only the process sees (requests, latency, 429s,
retries, the last accepted upload) is counted as it happens: the API client reports each request at one place
(`ScantrustClient._request`), the uploader each decision it applies.
"""

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from daemon import __version__
from daemon.config import MetricsSettings
from daemon.decide import Decision, PollAgain, RequestKind, Requeue
from daemon.ledger import Clock, Ledger
from daemon.logs import redact
from daemon.retry import Backoff
from daemon.states import OPEN_FILE_STATES, Outcome, RowStatus
from daemon.uploader import Uploader

log = structlog.get_logger(__name__)

HEALTHY_WITHIN = 30.0  # /healthz answers 200 while the loop turned within this many seconds
BIND_RETRY = (60.0, 3600.0)  # first and longest wait before listening is tried again after the address was taken
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)  # sync calls may take ~60 s
UPLOAD_KINDS = frozenset({RequestKind.SYNC_UPLOAD, RequestKind.ASYNC_SUBMIT})
FILE_STATUSES = (
    *(str(s) for s in OPEN_FILE_STATES),
    *(str(o) for o in Outcome),
)
FINAL_ROW_STATUSES = tuple(str(s) for s in RowStatus if s not in (RowStatus.PENDING, RowStatus.QUEUED))
PAUSE_REASONS = ("token", "configuration", "api_down")


class Metrics:
    """The process's own figures, counted as they happen, and the registry that /metrics reads."""

    def __init__(self, *, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "scm_daemon_api_requests",
            "HTTP requests to the Scantrust API by kind and outcome (the HTTP status, or timeout / connection_error)",
            ["kind", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "scm_daemon_api_request_duration_seconds",
            "Time from sending a request to the end of its answer, by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.throttled = Counter(
            "scm_daemon_api_throttled", "429 Too Many Requests answers, by kind", ["kind"], registry=r
        )
        self.retries = Counter(
            "scm_daemon_retries",
            "Requests to be made again after a transient failure (uploads re-queued, task polls that failed)",
            ["kind"],
            registry=r,
        )
        self.last_upload = Gauge(
            "scm_daemon_last_upload_success_timestamp_seconds",
            "When the API last accepted an upload (sync answer or async job created), Unix time; 0 = not yet",
            registry=r,
        )
        for kind in RequestKind:  # every series exists from the start, so rate() and alerts see the zeros
            self.throttled.labels(str(kind))
            self.retries.labels(str(kind))
        Gauge("scm_daemon_build_info", "The running scm-daemon's version", ["version"], registry=r).labels(
            __version__
        ).set(1)

    def request(self, kind: str, outcome: str, seconds: float) -> None:
        """One HTTP request was made (the API client's observer)."""
        self.requests.labels(kind, outcome).inc()
        self.latency.labels(kind).observe(seconds)
        if outcome == "429":
            self.throttled.labels(kind).inc()
        elif kind in UPLOAD_KINDS and outcome.startswith("2"):
            self.last_upload.set(self.wall())

    def decided(self, kind: RequestKind, decision: Decision) -> None:
        """The uploader applies a decision (its observer): count what will be retried."""
        if isinstance(decision, Requeue) or (isinstance(decision, PollAgain) and decision.error is not None):
            self.retries.labels(str(kind)).inc()


class Health:
    """When the service loop last turned, on the service's monotonic clock."""

    def __init__(self, monotonic: Callable[[], float], within: float = HEALTHY_WITHIN) -> None:
        self.monotonic = monotonic
        self.within = within
        self.last_tick: float | None = None
        self.leading = False  # whether this instance holds the work lease (daemon.lease), as of the last turn

    def ticked(self) -> None:
        """The loop turned."""
        self.last_tick = self.monotonic()

    def age(self) -> float | None:
        """Seconds since the loop last turned; None before its first turn."""
        return None if self.last_tick is None else max(0.0, self.monotonic() - self.last_tick)

    def healthy(self) -> bool:
        """Whether the loop turned within `within` seconds."""
        age = self.age()
        return age is not None and age <= self.within


class ServiceCollector:
    """The figures read at scrape time: the ledger's counts and the uploader's pause and breaker."""

    def __init__(self, ledger: Ledger, uploader: Uploader, health: Health, clock: Clock) -> None:
        self.ledger = ledger
        self.uploader = uploader
        self.health = health
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        """Every scrape-time metric family."""
        figures = self.ledger.figures()
        files = GaugeMetricFamily("scm_daemon_files", "Files in the ledger by status", labels=["status"])
        for status in FILE_STATUSES:
            files.add_metric([status], figures.files.get(status, 0))
        yield files
        rows = GaugeMetricFamily(
            "scm_daemon_rows",
            "Rows of finished files by final status (a file's rows count here once it is done)",
            labels=["status"],
        )
        for status in FINAL_ROW_STATUSES:
            rows.add_metric([status], figures.rows.get(status, 0))
        yield rows
        yield GaugeMetricFamily(
            "scm_daemon_rows_queued",
            "Rows in batches not final yet: waiting to be sent, retried, or confirmed by their task",
            value=figures.rows_queued,
        )
        age = 0.0
        if figures.oldest_waiting_since is not None:
            since = datetime.fromisoformat(figures.oldest_waiting_since)
            age = max(0.0, (self.clock() - since).total_seconds())
        yield GaugeMetricFamily(
            "scm_daemon_oldest_pending_row_age_seconds",
            "Age of the oldest work not final yet (its batch's creation, or a file still being read); 0 = none",
            value=age,
        )
        pause = self.uploader.pause
        breaker = self.uploader.breaker
        causes = {pause.cause} if pause is not None else set()
        if "starting" in causes:  # the start-up check: paused only once it could not reach the API
            causes = {"api_down"} if self.uploader.start_failures else set()
        if breaker.is_open:
            causes.add("api_down")
        paused = GaugeMetricFamily(
            "scm_daemon_uploads_paused",
            "1 while uploads are paused, by reason: token refused, configuration problem, API down (breaker open)",
            labels=["reason"],
        )
        for reason in PAUSE_REASONS:
            paused.add_metric([reason], 1 if reason in causes else 0)
        yield paused
        state = "closed"
        if breaker.open_until is not None:
            state = "open" if self.uploader.monotonic() < breaker.open_until else "half_open"
        states = GaugeMetricFamily(
            "scm_daemon_breaker_state", "The circuit breaker's state (1 for the current one)", labels=["state"]
        )
        for name in ("closed", "open", "half_open"):
            states.add_metric([name], 1 if name == state else 0)
        yield states
        yield GaugeMetricFamily(
            "scm_daemon_leader",
            "1 while this instance holds the work lease and does the work; 0 while it stands by",
            value=1 if self.health.leading else 0,
        )
        tick_age = self.health.age()
        yield GaugeMetricFamily(
            "scm_daemon_loop_tick_age_seconds",
            "Seconds since the service loop last turned (/healthz fails beyond 30)",
            value=float("nan") if tick_age is None else tick_age,
        )


def _handler(registry: CollectorRegistry, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"scm-daemon/{__version__}"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                except Exception as exc:  # the ledger locked or gone: say so, the next scrape tries again
                    error = redact(f"{type(exc).__name__}: {exc}")
                    log.error("metrics_scrape_failed", error=error)
                    body, status, kind = f"metrics unavailable: {error}\n".encode(), 500, "text/plain"
            elif path == "/healthz":
                age = health.age()
                ok = health.healthy()
                body = json.dumps(
                    {
                        "status": "ok" if ok else ("starting" if age is None else "stalled"),
                        "seconds_since_loop_turned": None if age is None else round(age, 3),
                        "healthy_within_seconds": health.within,
                    }
                ).encode()
                status, kind = (200 if ok else 503), "application/json"
            else:
                body, status, kind = b"not found: try /metrics or /healthz\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics_request", line=format % args)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class MetricsServer:
    """/metrics and /healthz on one address, in a daemon thread; a taken address is logged and tried again."""

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, health: Health) -> None:
        self.address = address
        self.registry = registry
        self.health = health
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The port listened on (the chosen one when configured as 0), or None when not listening."""
        return None if self._server is None else int(self._server.server_address[1])

    def start(self) -> None:
        """Listen; OSError when the address cannot be had (taken, not on this host, a port below 1024)."""
        host, port = self.address

        class Server(_Server):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        server = Server((host, port), _handler(self.registry, self.health))
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info(
            "metrics_listening", url=f"http://{host}:{self.port}/metrics", health=f"http://{host}:{self.port}/healthz"
        )

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Telemetry:
    """What the service calls: open() at start, turned() on every turn of the loop, close() at the end."""

    def __init__(
        self,
        settings: MetricsSettings,
        *,
        ledger: Ledger,
        uploader: Uploader,
        clock: Clock,
        monotonic: Callable[[], float],
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics = metrics or Metrics()
        # The two places where requests and decisions are seen report here (whether or not anything listens).
        uploader.observe = metrics.decided
        uploader.client.observe = metrics.request
        self.monotonic = monotonic
        self.health = Health(monotonic)
        address = settings.address()
        self.server: MetricsServer | None = None
        if address is not None:
            metrics.registry.register(ServiceCollector(ledger, uploader, self.health, clock))
            self.server = MetricsServer(address, metrics.registry, self.health)
        self._listening = False
        self._bind_backoff = Backoff(*BIND_RETRY)

    def open(self) -> None:
        """Start listening, if configured."""
        self._bind()

    def turned(self, *, leading: bool = True) -> None:
        """The loop turned (a standby's wait counts, with `leading` False): /healthz is fine for another 30 s;
        listen again if the address was taken."""
        self.health.ticked()
        self.health.leading = leading
        if self.server is not None and not self._listening and self.monotonic() >= self._bind_backoff.next_at:
            self._bind()

    def _bind(self) -> None:
        if self.server is None or self._listening:
            return
        try:
            self.server.start()
        except OSError as exc:
            host, port = self.server.address
            error = exc.strerror or str(exc)
            wait = self._bind_backoff.failed(self.monotonic(), error)
            # Loud the first time; then a warning per retry, ever rarer (up to an hour apart).
            (log.error if self._bind_backoff.failures == 1 else log.warning)(
                "metrics_unavailable",
                listen=f"{host}:{port}",
                error=error,
                retry_in=wait,
                action="uploads go on without /metrics and /healthz; listening is tried again. Free the port, or "
                "set metrics.listen to another address and restart",
            )
            return
        self._listening = True
        if self._bind_backoff.failures:
            log.info("metrics_recovered", after_failures=self._bind_backoff.failures)

    def close(self) -> None:
        """Stop listening."""
        if self.server is not None and self._listening:
            self.server.stop()
            self._listening = False
