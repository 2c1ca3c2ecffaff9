"""The API emulator's HTTP server: routing, authentication, throttling and injected faults."""

import contextlib
import dataclasses
import hmac
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from urllib.parse import urlsplit

import structlog

from daemon.sandbox.store import ScmStore, ValidationFailed, parse_sync_body
from daemon.sandbox.throttle import SlidingWindowThrottle

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 10 * 1024 * 1024
# Path -> kind; the docs show the upload path both with and without its trailing slash.
ROUTES: Mapping[str, str] = {
    "/api/v2/me/": "me",
    "/api/v2/scm/upload/": "scm_upload",
    "/api/v2/scm/upload": "scm_upload",
}
ALLOWED_METHODS: Mapping[str, str] = {"me": "GET", "scm_upload": "POST"}
THROTTLED_KINDS = frozenset({"scm_upload"})  # the API's scm_update throttle scope
ME_BODY: Mapping[str, object] = {
    "id": 1,
    "email": "sandbox@example.com",
    "first_name": "Sandbox",
    "last_name": "User",
    "company": {"id": 1, "name": "Sandbox Company"},
}
# A proxy in front of the API answers 502/503 in HTML, so the client must cope with a body that is not JSON.
_INJECTED: Mapping[int, tuple[str, bytes]] = {
    500: ("application/json", b'{"detail": "A server error occurred."}'),
    502: ("text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    503: ("text/html", b"<html><body><h1>503 Service Unavailable</h1></body></html>"),
}


@dataclass(frozen=True)
class EmulatorConfig:
    """The emulator's knobs; change them at run time with Emulator.configure(**changes)."""

    token: str = field(default="sandbox-token", repr=False)
    campaign_fields: frozenset[str] | None = None  # None: every field accepted; else the others are discarded
    known_codes: frozenset[str] | None = None  # None: any well-formed code exists
    rate_limit: float | None = 10.0  # SCM updates per rolling second; None: no throttle
    latency: float = 0.0  # seconds added to every request
    fail_rate: float = 0.0  # probability of an injected 500/502/503 (nothing applied)
    slow_rate: float = 0.0  # probability of a slow answer ...
    slow_seconds: float = 0.0  # ... that sleeps this long (after applying) before answering normally
    seed: int | None = None
    revoked: bool = False  # 401 even for the right token (an expired token)
    forbidden: bool = False  # 403 for the right token (a token without the SCM permissions)


@dataclass(frozen=True)
class EmulatorStats:
    """A snapshot of what the emulator has seen since it was created."""

    requests: Mapping[tuple[str, str], int]  # (method, path kind) -> count; kinds: me, scm_upload, unknown
    sync_calls: int  # sync uploads applied (answered 200)
    rejected: int  # sync uploads refused with 400
    throttled: int  # 429s sent
    injected_failures: int
    slow_answers: int
    auth_failures: int  # 401s and 403s sent
    max_concurrency: int  # most requests in progress at once

    @property
    def total_requests(self) -> int:
        """Every request received, of any kind."""
        return sum(self.requests.values())


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering


def _json(status: int, payload: object, **headers: str) -> _Response:
    return _Response(status, json.dumps(payload).encode(), headers=headers)


class Emulator:
    """The Scantrust API emulator: a threaded HTTP server on loopback, with inspectable state."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config or EmulatorConfig()
        self._rng = random.Random(self._config.seed)
        self._throttle = self._new_throttle(self._config.rate_limit)
        self._store = ScmStore()
        self._counts: Counter[str] = Counter()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._in_flight = 0
        self._max_in_flight = 0
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = any free port) in a background thread; return the base URL."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._stopping.clear()
        server = _Server((host, port), _Handler)
        server.emulator = self
        self._server = server
        self.base_url = f"http://{host}:{server.server_address[1]}"
        # A short poll interval makes stop() quick (the stdlib default of 0.5 s would dominate test run time).
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="sandbox-server", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop listening, wake sleeping answers and drop open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # Handler threads block reading the next request on keep-alive connections; this wakes them.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "Emulator":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- knobs and inspection --------------------------------------------------------------------------------

    def configure(self, **changes: object) -> None:
        """Change knobs at run time (thread-safe); unknown knob names raise TypeError."""
        for name in ("campaign_fields", "known_codes"):
            value = changes.get(name)
            if isinstance(value, set | list | tuple):
                changes[name] = frozenset(value)
        with self._lock:
            old = self._config
            self._config = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
            if self._config.rate_limit != old.rate_limit:
                self._throttle = self._new_throttle(self._config.rate_limit)
            if "seed" in changes:
                self._rng.seed(self._config.seed)

    @property
    def config(self) -> EmulatorConfig:
        """The knobs now in force."""
        with self._lock:
            return self._config

    def data(self, data_key: str, code: str) -> dict[str, str] | None:
        """The SCM data held for a code, None if no accepted update ever included it."""
        return self._store.data(data_key, code)

    def all_data(self, data_key: str = "extended_id") -> dict[str, dict[str, str]]:
        """The SCM data of every code an accepted update included."""
        return self._store.all_data(data_key)

    def transactions(self, data_key: str, code: str) -> int:
        """How many accepted updates included this code (each is a Code Transaction in the portal)."""
        return self._store.transactions(data_key, code)

    def stats(self) -> EmulatorStats:
        """A frozen snapshot of the counters."""
        with self._lock:
            return EmulatorStats(
                requests=MappingProxyType(dict(self._requests)),
                sync_calls=self._counts["sync_calls"],
                rejected=self._counts["rejected"],
                throttled=self._counts["throttled"],
                injected_failures=self._counts["injected_failures"],
                slow_answers=self._counts["slow_answers"],
                auth_failures=self._counts["auth_failures"],
                max_concurrency=self._max_in_flight,
            )

    # -- request handling (called from handler threads) -----------------------------------------------------

    @staticmethod
    def _new_throttle(rate: float | None) -> SlidingWindowThrottle | None:
        return None if rate is None else SlidingWindowThrottle(rate)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _enter(self, method: str, kind: str) -> None:
        with self._lock:
            self._requests[method, kind] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the emulator stops first; True if it is still running."""
        return seconds <= 0 or not self._stopping.wait(seconds)

    def _handle(self, method: str, kind: str, authorization: str | None, body: bytes) -> _Response:
        """Answer one routed request; the order follows DRF: route, authenticate, throttle, then the view."""
        arrived = time.monotonic()
        with self._lock:
            config = self._config
            throttle = self._throttle
            fail_status = self._rng.choice(sorted(_INJECTED)) if self._rng.random() < config.fail_rate else 0
            slow = self._rng.random() < config.slow_rate
        delay = config.latency
        if kind == "unknown":
            return dataclasses.replace(_json(404, {"detail": "Not found."}), delay=delay)
        refusal = self._authenticate(config, authorization)
        if refusal is not None:
            self._count("auth_failures")
            return dataclasses.replace(refusal, delay=delay)
        allowed = ALLOWED_METHODS[kind]
        if method != allowed:
            answer = _json(405, {"detail": f'Method "{method}" not allowed.'}, Allow=allowed)
            return dataclasses.replace(answer, delay=delay)
        if kind in THROTTLED_KINDS and throttle is not None:
            wait = throttle.allow(arrived)
            if wait is not None:
                self._count("throttled")
                detail = f"Request was throttled. Expected available in {int(wait)} seconds."
                retry_after = {"Retry-After": str(int(wait))}
                answer = _json(429, {"detail": detail, "code": "throttled"}, **retry_after)
                return dataclasses.replace(answer, delay=delay)
        if fail_status:
            self._count("injected_failures")
            content_type, payload = _INJECTED[fail_status]
            return _Response(fail_status, payload, content_type=content_type, delay=delay)
        if slow:
            self._count("slow_answers")
            delay += config.slow_seconds
        if kind == "me":
            return dataclasses.replace(_json(200, ME_BODY), delay=delay)
        return dataclasses.replace(self._sync_upload(config, body), delay=delay)

    @staticmethod
    def _authenticate(config: EmulatorConfig, authorization: str | None) -> _Response | None:
        keyword, _, token = (authorization or "").partition(" ")
        valid = keyword.lower() == "uat" and hmac.compare_digest(token.encode(), config.token.encode())
        if not valid or config.revoked:
            return _json(401, {"detail": "Invalid token."}, **{"WWW-Authenticate": "UAT"})
        if config.forbidden:
            return _json(403, {"detail": "You do not have permission to perform this action."})
        return None

    def _sync_upload(self, config: EmulatorConfig, body: bytes) -> _Response:
        try:
            request = parse_sync_body(body)
        except ValidationFailed as exc:
            self._count("rejected")
            return _json(400, exc.body)
        outcome = self._store.apply_sync(
            request, known_codes=config.known_codes, campaign_fields=config.campaign_fields
        )
        self._count("sync_calls")
        payload = {
            "total_updates": outcome.total_updates,
            "codes_affected": outcome.codes_affected,
            "items": outcome.items,
            "changes": [],
        }
        return _json(200, payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: Emulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API behind its load balancer
    server_version = "scm-sandbox"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY, Nagle plus the client's delayed ACK stalls every keep-alive answer by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.emulator._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.emulator._track(self.connection, add=False)
        with contextlib.suppress(OSError):  # the peer went away; nothing left to flush
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Silence the stdlib's per-request stderr line: stats() counts requests; headers are never logged."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        emulator = self.server.emulator
        path = urlsplit(self.path).path
        kind = ROUTES.get(path, "unknown")
        emulator._enter(method, kind)
        try:
            body = self._read_body()
            if body is None:
                self.close_connection = True
                response = _json(413, {"detail": "Request body too large or Content-Length invalid."})
            else:
                response = emulator._handle(method, kind, self.headers.get("Authorization"), body)
            if not emulator._sleep(response.delay):
                self.close_connection = True
                return
            self._send(response)
        except OSError:
            self.close_connection = True  # the client hung up; there is nobody to answer
        except Exception:
            log.exception("sandbox_request_failed", method=method, path=path)
            self.close_connection = True
            self._send(_json(500, {"detail": "A server error occurred."}))
        finally:
            emulator._leave()

    def _read_body(self) -> bytes | None:
        raw_length = self.headers.get("Content-Length", "0")
        try:
            length = int(raw_length)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(response.body)
