"""The API emulator's HTTP server: routing, authentication, throttling, the views, and injected faults."""

import contextlib
import dataclasses
import hmac
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from urllib.parse import unquote

from daemon.sandbox.config import REQUEST_KINDS, SET_KNOBS, EmulatorConfig, EmulatorStats
from daemon.sandbox.faults import Dice, async_poison_body, poisoned_items, roll, spared, sync_poison_body
from daemon.sandbox.http import Server
from daemon.sandbox.responses import (
    GATEWAY_TIMEOUT,
    INJECTED,
    NOT_FOUND,
    RESET,
    Response,
    echoing,
    json_response,
    throttled,
)
from daemon.sandbox.store import ScmStore, SyncRequest, ValidationFailed, parse_sync_body
from daemon.sandbox.tasks import TaskSnapshot, TaskStore, parse_async_body, respell_task_body, task_body
from daemon.sandbox.throttle import SlidingWindowThrottle

# Path -> kind; the docs show the upload path both with and without its trailing slash.
ROUTES: Mapping[str, str] = {
    "/api/v2/me/": "me",
    "/api/v2/scm/upload/": "scm_upload",
    "/api/v2/scm/upload": "scm_upload",
    "/api/v2/scm/upload/async/": "scm_upload_async",
    "/api/v2/scm/upload/async": "scm_upload_async",
}
_TASK_PATH = re.compile(r"/api/v2/scm/tasks/[^/]+/?")  # kind scm_task; API.md: the trailing slash is a guess
ALLOWED_METHODS: Mapping[str, str] = {"me": "GET", "scm_upload": "POST", "scm_upload_async": "POST", "scm_task": "GET"}
UPLOAD_KINDS = frozenset({"scm_upload", "scm_upload_async"})  # the API's scm_update throttle scope
THROTTLE_RATE_KINDS = UPLOAD_KINDS | {"scm_task"}  # what throttle_rate strikes (see EmulatorConfig)
assert set(ALLOWED_METHODS) == set(REQUEST_KINDS)
ME_BODY: Mapping[str, object] = {
    "id": 1,
    "email": "sandbox@example.com",
    "first_name": "Sandbox",
    "last_name": "User",
    "company": {"id": 1, "name": "Sandbox Company"},
}


def route(path: str) -> tuple[str, str]:
    """The kind of a request path and its parameter (a task id), ("unknown", "") if nothing matches."""
    kind = ROUTES.get(path)
    if kind is not None:
        return kind, ""
    match = _TASK_PATH.fullmatch(path)
    # The parameter keeps the id quoted and the trailing slash, so the view knows which form was asked for.
    return ("scm_task", path.removeprefix("/api/v2/scm/tasks/")) if match else ("unknown", "")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Emulator:
    """The Scantrust API emulator: a threaded HTTP server on loopback, with inspectable state.

    `clock` (seconds, monotonic) and `wall` (aware UTC datetimes) are the only time its logic reads: request
    arrival for the throttle, the tasks' course, and the Date header. Under a fake clock and a seed, every answer
    is determined by the sequence of requests. Only the HTTP server's waiting (an answer's `delay`) is real time.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._lock = threading.Lock()
        self._config = config or EmulatorConfig()
        self._clock = clock
        self._wall = wall
        self._rng = random.Random(self._config.seed)
        self._throttle = self._new_throttle(self._config.rate_limit)
        self._store = ScmStore()
        self._tasks = TaskStore(self._store, clock=clock, wall=wall)
        self._counts: Counter[str] = Counter()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._burst_left = 0
        self._burst_wait = 1.0
        self._in_flight = 0
        self._max_in_flight = 0
        self._upload_arrivals: list[tuple[float, str]] = []  # (monotonic arrival, route) of every upload
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = any free port) in a background thread; return the base URL."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._stopping.clear()
        server = Server((host, port), self)
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
        """Change knobs at run time (thread-safe); unknown knob names raise TypeError, bad values ValueError."""
        for name in SET_KNOBS:
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

    def throttle_burst(self, n: int, retry_after: float = 1.0) -> None:
        """Answer the next n SCM updates (sync or async) with 429, announcing `retry_after` seconds."""
        if n < 0 or not retry_after > 0:
            raise ValueError(f"throttle_burst needs n >= 0 and retry_after > 0, got {n} and {retry_after}")
        with self._lock:
            self._burst_left = n
            self._burst_wait = retry_after

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock the emulator's logic reads (time.monotonic unless a fake was given)."""
        return self._clock

    @property
    def wall(self) -> Callable[[], datetime]:
        """The wall clock for the API's timestamps and the Date header (aware UTC datetimes)."""
        return self._wall

    @property
    def config(self) -> EmulatorConfig:
        """The knobs now in force."""
        with self._lock:
            return self._config

    def data(self, data_key: str, code: str) -> dict[str, str] | None:
        """The SCM data held for a code, None if no accepted update ever included it."""
        self._tasks.advance()
        return self._store.data(data_key, code)

    def all_data(self, data_key: str = "extended_id") -> dict[str, dict[str, str]]:
        """The SCM data of every code an accepted update included."""
        self._tasks.advance()
        return self._store.all_data(data_key)

    def transactions(self, data_key: str, code: str) -> int:
        """How many accepted updates included this code (each is a Code Transaction in the portal)."""
        self._tasks.advance()
        return self._store.transactions(data_key, code)

    def task(self, task_id: str) -> TaskSnapshot:
        """A task as it stands now; KeyError if no such task was created."""
        snapshot = self._tasks.get(task_id)
        if snapshot is None:
            raise KeyError(task_id)
        return snapshot

    def tasks(self) -> tuple[TaskSnapshot, ...]:
        """Every task created, as it stands now, oldest first."""
        return self._tasks.all()

    def upload_arrivals(self, kind: str | None = None) -> tuple[float, ...]:
        """When each upload request arrived, on the emulator's clock, oldest first; `kind` picks one route
        (scm_upload: sync, scm_upload_async), for the gap benchmarks."""
        with self._lock:
            return tuple(t for t, route in self._upload_arrivals if kind is None or route == kind)

    def stats(self) -> EmulatorStats:
        """A frozen snapshot of the counters."""
        self._tasks.advance()
        with self._lock:
            counts = self._counts
            return EmulatorStats(
                requests=MappingProxyType(dict(self._requests)),
                sync_calls=counts["sync_calls"],
                rejected=counts["rejected"],
                throttled=counts["throttled"],
                injected_failures=counts["injected_failures"],
                slow_answers=counts["slow_answers"],
                auth_failures=counts["auth_failures"],
                max_concurrency=self._max_in_flight,
                async_jobs=counts["async_jobs"],
                async_rejected=counts["async_rejected"],
                task_polls=counts["task_polls"],
                tasks_completed=self._tasks.completed,
                tasks_failed=self._tasks.failed,
                resets=counts["resets"],
                hangs=counts["hangs"],
                applied_then_500=counts["applied_then_500"],
                poisoned=counts["poisoned"],
                partial_applications=counts["partial_applications"],
                outages=counts["outages"],
                tasks_missing=counts["tasks_missing"],
            )

    # -- the HTTP handler's hooks (daemon.sandbox.http.Backend), called from handler threads -------------------

    def request_started(self, method: str, path: str) -> tuple[str, str]:
        """Count a request and the concurrency; return its route."""
        kind, param = route(path)
        with self._lock:
            self._requests[method, kind] += 1
            if kind in UPLOAD_KINDS:
                self._upload_arrivals.append((self._clock(), kind))
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        return kind, param

    def request_finished(self) -> None:
        """A request left the handler."""
        with self._lock:
            self._in_flight -= 1

    def track_connection(self, conn: socket.socket, *, add: bool) -> None:
        """Remember an open connection so that stop() can drop it."""
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def wait(self, seconds: float) -> bool:
        """Sleep unless the emulator stops first; True if it is still running."""
        return seconds <= 0 or not self._stopping.wait(seconds)

    def handle(self, method: str, route: tuple[str, str], authorization: str | None, body: bytes) -> Response:
        """Answer one routed request, `latency` later."""
        kind, param = route
        arrived = self._clock()
        self._tasks.advance()  # tasks due by now finish before this request is seen
        with self._lock:
            config = self._config
            dice = roll(self._rng, config)
        if kind == "me" and config.faults_spare_me:
            config, dice = spared(config, dice)
        answer = self._answer(
            method, kind, param, authorization=authorization, body=body, config=config, dice=dice, arrived=arrived
        )
        if config.echo_token and answer.status >= 400:
            answer = echoing(answer, (authorization or "").partition(" ")[2])
        headers = answer.headers
        if config.retry_after_header is not None and answer.status in (429, 503):
            headers = {**headers, "Retry-After": _seconds_text(config.retry_after_header)}
        delay = answer.delay + config.latency
        return dataclasses.replace(answer, headers=headers, delay=delay, trickle=config.trickle_seconds)

    def _answer(
        self,
        method: str,
        kind: str,
        param: str,
        *,
        authorization: str | None,
        body: bytes,
        config: EmulatorConfig,
        dice: Dice,
        arrived: float,
    ) -> Response:
        """The order follows DRF: route, authenticate, throttle, then the view; faults strike where noted."""
        if kind == "unknown":
            return NOT_FOUND
        if kind == "scm_task":
            moved = _task_form(config, param)
            if moved is not None:
                return moved  # URL routing (and Django's APPEND_SLASH) comes before authentication
        if kind in config.outage:
            # The service behind the load balancer is down: it answers before anything can authenticate.
            self._count("outages")
            return INJECTED[503]
        refusal = self._authenticate(config, authorization)
        if refusal is not None:
            self._count("auth_failures")
            return refusal
        allowed = ALLOWED_METHODS[kind]
        if method != allowed:
            return json_response(405, {"detail": f'Method "{method}" not allowed.'}, Allow=allowed)
        if kind in THROTTLE_RATE_KINDS:
            wait = self._throttle_wait(kind, dice, config, arrived)
            if wait is not None:
                self._count("throttled")
                return throttled(wait)
        # Resets, injected 5xx and hangs strike before the view: nothing of the request is applied.
        if dice.reset:
            self._count("resets")
            return RESET
        if dice.fail_status:
            self._count("injected_failures")
            return INJECTED[dice.fail_status]
        if dice.hang:
            # The API's gateway gives up on a request that takes too long: 504, and no code was updated (API.md).
            self._count("hangs")
            return dataclasses.replace(GATEWAY_TIMEOUT, delay=config.hang_seconds)
        answer = self._view(kind, param, config, body, dice)
        if dice.slow:
            self._count("slow_answers")
            answer = dataclasses.replace(answer, delay=config.slow_seconds)
        if dice.applied_then_500 and kind in UPLOAD_KINDS and answer.status == 200:
            self._count("applied_then_500")
            return dataclasses.replace(INJECTED[500], delay=answer.delay)
        if kind == "scm_upload" and answer.status == 200:
            self._count("sync_calls")
        return answer

    @staticmethod
    def _new_throttle(rate: float | None) -> SlidingWindowThrottle | None:
        return None if rate is None else SlidingWindowThrottle(rate)

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def _throttle_wait(self, kind: str, dice: Dice, config: EmulatorConfig, arrived: float) -> float | None:
        """Seconds to announce if this request is throttled (burst, injected, or over the rate), else None.

        The burst and the rate limit are the scm_update scope (uploads); throttle_rate also strikes task polls.
        """
        update = kind in UPLOAD_KINDS
        with self._lock:
            if update and self._burst_left > 0:
                self._burst_left -= 1
                return self._burst_wait
            throttle = self._throttle if update else None
        if dice.throttled:
            return config.throttle_retry_after
        return None if throttle is None else throttle.allow(arrived)

    @staticmethod
    def _authenticate(config: EmulatorConfig, authorization: str | None) -> Response | None:
        keyword, _, token = (authorization or "").partition(" ")
        valid = keyword.lower() == "uat" and hmac.compare_digest(token.encode(), config.token.encode())
        if not valid or config.revoked:
            return json_response(401, {"detail": "Invalid token."}, **{"WWW-Authenticate": "UAT"})
        if config.forbidden:
            return json_response(403, {"detail": "You do not have permission to perform this action."})
        return None

    def _view(self, kind: str, param: str, config: EmulatorConfig, body: bytes, dice: Dice) -> Response:
        if kind == "me":
            return json_response(200, ME_BODY)
        if kind == "scm_upload":
            return self._sync_upload(config, body)
        if kind == "scm_upload_async":
            return self._async_upload(config, body, dice)
        return self._task(config, unquote(param.removesuffix("/")), dice)

    def _sync_upload(self, config: EmulatorConfig, body: bytes) -> Response:
        try:
            request = parse_sync_body(body)
        except ValidationFailed as exc:
            self._count("rejected")
            return json_response(400, exc.body)
        bad = poisoned_items(request, config.poison_codes)
        if bad:
            self._count("rejected", "poisoned")
            if config.partial_apply and bad[0] > 0:
                # API.md: whether items before a defective one are applied is unknown; this knob says they are.
                before = SyncRequest(request.data_key, request.items[: bad[0]])
                self._store.apply_sync(before, known_codes=config.known_codes, campaign_fields=config.campaign_fields)
                self._count("partial_applications")
            return json_response(400, sync_poison_body(request, bad, config))
        outcome = self._store.apply_sync(
            request, known_codes=config.known_codes, campaign_fields=config.campaign_fields
        )
        payload = {
            "total_updates": outcome.total_updates,
            "codes_affected": outcome.codes_affected,
            "items": outcome.items,
            "changes": [],
        }
        return json_response(200, payload)

    def _async_upload(self, config: EmulatorConfig, body: bytes, dice: Dice) -> Response:
        try:
            request = parse_async_body(body)
        except ValidationFailed as exc:
            self._count("async_rejected")
            return json_response(400, exc.body)
        refusal = async_poison_body(dict(request.constraints), config)
        if refusal is not None:
            self._count("async_rejected", "poisoned")
            return json_response(400, refusal)
        self._tasks.create(
            request,
            task_id=dice.task_id,
            pending=config.task_pending_seconds,
            running=config.task_running_seconds,
            fails=dice.task_fails,
            forever=config.task_never_finishes,
            known_codes=config.known_codes,
            campaign_fields=config.campaign_fields,
        )
        self._count("async_jobs")
        return json_response(200, {"task_id": dice.task_id})

    def _task(self, config: EmulatorConfig, task_id: str, dice: Dice) -> Response:
        self._count("task_polls")
        snapshot = self._tasks.get(task_id)
        if snapshot is None:
            return NOT_FOUND
        if dice.task_missing:
            # A load balancer sent the poll to a node that does not know the task (yet, or any more).
            self._count("tasks_missing")
            return NOT_FOUND
        body = task_body(snapshot, vocabulary=config.task_states, unknown_state=config.task_unknown_state)
        return json_response(200, respell_task_body(body, state_key=config.task_state_key, style=config.task_key_style))


def _task_form(config: EmulatorConfig, param: str) -> Response | None:
    """None if the task path's form is served; else a 404, or with task_redirect a 301 to the served form."""
    slash = param.endswith("/")
    if config.task_path == "both" or (config.task_path == "slash") == slash:
        return None
    if not config.task_redirect:
        return NOT_FOUND
    other = param.removesuffix("/") if slash else param + "/"
    location = f"{config.task_redirect_origin.rstrip('/')}/api/v2/scm/tasks/{other}"
    return json_response(301, {"detail": "Moved permanently."}, Location=location)


def _seconds_text(seconds: float) -> str:
    """A Retry-After value as configured: 100000000, not 100000000.0; a fraction stays a fraction."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))
