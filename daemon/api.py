"""The Scantrust API client: the only module that speaks HTTP.

What its failures raise (the error tree, classify) is in daemon.errors, how it reads answers in daemon.answers;
both are re-exported here, so `from daemon.api import Rejected, TaskStatus, classify` works. Answer bodies are
read, bounded in size and in time, by daemon.bodies.
"""

import json
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
import structlog
import urllib3.exceptions
from pydantic import SecretStr
from requests.adapters import HTTPAdapter

from daemon import __version__
from daemon.answers import (
    ASYNC_UPLOAD_PATH,
    SYNC_UPLOAD_PATH,
    SyncResult,
    TaskState,
    TaskStatus,
    parse_sync_result,
    parse_task_id,
    parse_task_status,
    shape,
    task_state,
)
from daemon.bodies import Answers
from daemon.errors import (
    ApiError,
    ErrorKind,
    HTTPStatusError,
    NotFound,
    ProtocolError,
    Rejected,
    Throttled,
    Timeout,
    TokenRefused,
    Transient,
    TransportError,
    classify,
    error_detail,
    item_errors,
    parse_retry_after,
    plain_transport_error,
    status_error,
)
from daemon.logs import redact, register_secret

__all__ = [
    "ApiError",
    "ErrorKind",
    "HTTPStatusError",
    "NotFound",
    "ProtocolError",
    "Rejected",
    "ScantrustClient",
    "SyncResult",
    "TaskState",
    "TaskStatus",
    "Throttled",
    "Timeout",
    "TokenRefused",
    "Transient",
    "TransportError",
    "classify",
    "parse_retry_after",
    "task_state",
]

log = structlog.get_logger(__name__)

ME_PATH = "/api/v2/me/"
DEBUG_BODY_BYTES = 2000  # of each answer, in the debug log
TASK_PATH = "/api/v2/scm/tasks/{task_id}/"
# API.md: the slash form is a guess; the production client polls the bare form (and follows redirects).
TASK_PATH_BARE = "/api/v2/scm/tasks/{task_id}"
_REDIRECTS = frozenset({301, 302, 307, 308})
MAX_REDIRECTS = 3
MAX_ANSWER_BYTES = 8 << 20  # a larger answer is not read further: a transient error, never gigabytes in memory
DEADLINE_MARGIN = 30.0  # api.request_deadline defaults to read_timeout + this

# Called once per HTTP request that was made: (kind, outcome, seconds). The outcome is the status code as text, or
# "timeout" / "connection_error" when no full answer came. /metrics counts and times requests through it.
RequestObserver = Callable[[str, str, float], None]


class _UatAuth(requests.auth.AuthBase):
    """Adds `Authorization: UAT <token>` to each request; its repr never shows the token."""

    def __init__(self, token: SecretStr) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"UAT {self.token.get_secret_value()}"
        return request

    def __repr__(self) -> str:
        return "_UatAuth(token=SecretStr('**********'))"


Turn = Callable[[], object]  # waited for just before an upload leaves (the uploader's rolling window)


class ScantrustClient:
    """A thread-safe client for the endpoints the daemon uses; every request waits for one of `pool_size` slots.

    Pacing is the caller's (the uploader's) job. `adapter` replaces the HTTP transport: the simulation passes one
    that answers from the emulator in-process, so everything above the socket is the production code.
    """

    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        *,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 8,
        adapter: requests.adapters.BaseAdapter | None = None,
        request_deadline: float | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API base URL {base_url!r} is not an http(s) URL; set api.base_url")
        self.base_url = base_url.rstrip("/")
        self._token = token
        register_secret(token.get_secret_value())  # the one scrub (logs.redact) removes it from all we keep
        self._auth = _UatAuth(token)
        self._timeout = (connect_timeout, read_timeout)
        # read_timeout bounds each socket read; this bounds the whole answer, so a trickle cannot hold a slot.
        self._deadline = request_deadline if request_deadline is not None else read_timeout + DEADLINE_MARGIN
        self._max_bytes = max_answer_bytes
        self._answers = Answers()  # the bodies being read, for stopping()
        # A Session is not documented as thread-safe, so each worker thread gets its own; they share one
        # adapter, whose urllib3 pool is thread-safe, so any free thread reuses the keep-alive connections.
        self._adapter = adapter or HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        # urllib3 opens extra connections when its pool is exhausted; this bounds requests in flight instead.
        self._slots = threading.BoundedSemaphore(pool_size)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []
        self._closed = False
        self._task_paths = (TASK_PATH, TASK_PATH_BARE)  # the form that last answered goes first
        self.observe: RequestObserver | None = None  # told of every request made (/metrics)

    def __repr__(self) -> str:
        return f"ScantrustClient(base_url={self.base_url!r}, token=SecretStr('**********'))"

    def set_token(self, token: SecretStr) -> None:
        """Use a renewed token from the next request on (every worker's session shares the one auth object)."""
        self._token = token
        register_secret(token.get_secret_value())
        self._auth.token = token

    def me(self) -> dict[str, Any]:
        """The user the token belongs to (GET /api/v2/me/): the connectivity and token check."""
        body = self._call("GET", ME_PATH, kind="token_check")
        if not isinstance(body, dict):
            raise ProtocolError(f"GET {ME_PATH} answered 200 with {shape(body)} instead of a JSON object")
        return body

    def upload_sync(self, data_key: str, items: list[dict[str, str]], *, turn: Turn | None = None) -> SyncResult:
        """Send one synchronous SCM upload (at most 100 items); `turn` is waited for just before it leaves."""
        try:
            payload = {"data_key": data_key, "items": items}
            body = self._call("POST", SYNC_UPLOAD_PATH, payload, kind="sync_upload", turn=turn)
        except Rejected as exc:
            exc.item_errors = item_errors(exc.body, [_key_of(item, data_key) for item in items])
            raise
        return parse_sync_result(body, data_key)

    def upload_async(
        self, data_key: str, values: list[str], scm_data: dict[str, str], reference: str, *, turn: Turn | None = None
    ) -> str:
        """Create an async job setting `scm_data` on the codes whose `data_key` is in `values`; the task id.
        `turn` is waited for just before the request leaves."""
        payload = {"constraints": {data_key: values}, "scm_data": scm_data, "reference": reference}
        return parse_task_id(self._call("POST", ASYNC_UPLOAD_PATH, payload, kind="async_submit", turn=turn))

    def task(self, task_id: str) -> TaskStatus:
        """The status of an async task: the slash form, on 404 the bare form once; the one that answers is kept."""
        forms = self._task_paths
        quoted = quote(task_id, safe="")
        for tried, template in enumerate(forms):
            path = template.format(task_id=quoted)
            try:
                body = self._call("GET", path, follow_redirects=True, kind="task_poll")
            except NotFound:
                if tried == len(forms) - 1:
                    raise
                continue
            if tried:
                self._task_paths = (template, forms[0])
                log.info("api_task_path_form", path=template.format(task_id="<id>"))
            return parse_task_status(body, task_id, path)
        raise AssertionError("unreachable: the last form re-raises")

    def stopping(self) -> None:
        """The service stops: answers still arriving STOP_GRACE seconds from now are not read further."""
        self._answers.stop()

    def close(self) -> None:
        """Close every thread's session and the shared connection pool."""
        with self._lock:
            self._closed = True
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._adapter.close()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.mount("https://", self._adapter)
            session.mount("http://", self._adapter)
            session.auth = self._auth
            session.headers.update({"Accept": "application/json", "User-Agent": f"scm-daemon/{__version__}"})
            with self._lock:
                self._sessions.append(session)
            self._local.session = session
        return session

    def _call(
        self,
        method: str,
        path: str,
        payload: object = None,
        *,
        kind: str,
        follow_redirects: bool = False,
        turn: Turn | None = None,
    ) -> object:
        if self._closed:
            raise RuntimeError("the API client was closed")
        what = f"{method} {path}"
        url = self.base_url + path
        for _hop in range(MAX_REDIRECTS + 1):
            with self._slots:
                response, raw = self._request(what, kind, method, url, payload, turn=turn)
            # What to copy into a report of an API mismatch (`run --log-level debug`); scrubbed like everything.
            log.debug(
                "api_answer",
                request=what,
                status=response.status_code,
                content_type=response.headers.get("Content-Type"),
                body=_scrub(raw[:DEBUG_BODY_BYTES].decode("utf-8", "replace"), self._token),
            )
            location = response.headers.get("Location")
            if not (follow_redirects and response.status_code in _REDIRECTS and location):
                return _read_answer(what, response, raw, self._token)
            target = urljoin(url, location)
            if not _same_origin(target, self.base_url):
                shown = urlsplit(target)
                raise ProtocolError(
                    f"{what} was redirected to {shown.scheme}://{shown.netloc}, not api.base_url "
                    f"({self.base_url}); not followed, so the token is not sent there",
                    status=response.status_code,
                    ambiguous=False,
                )
            response.close()
            url = target
        raise ProtocolError(f"{what}: more than {MAX_REDIRECTS} redirects; not followed further", ambiguous=False)

    def _request(
        self, what: str, kind: str, method: str, url: str, payload: object, *, turn: Turn | None
    ) -> tuple[requests.Response, bytes]:
        """One HTTP request and its whole answer body; the one place where requests are counted and timed.

        The request is built (its JSON body encoded, its headers set) before `turn` is waited for, so that once
        the rolling window has counted it as sent, only the socket's work is left: built after, in a process whose
        main thread holds the interpreter, it could leave tens of milliseconds after it was counted."""
        outcome = "connection_error"
        started = time.monotonic()
        try:
            session = self._session()
            prepared = session.prepare_request(requests.Request(method, url, json=payload))
            settings = session.merge_environment_settings(prepared.url, {}, True, None, None)  # as request() does
            if turn is not None:
                turn()
                started = time.monotonic()  # the wait for the window is not the API's time
            # requests' own redirect handling is off: it would decide alone where the token goes.
            response = session.send(prepared, timeout=self._timeout, allow_redirects=False, **settings)
            outcome = str(response.status_code)
            return response, self._answers.read(what, response, self._deadline, self._max_bytes)
        except requests.RequestException as exc:
            outcome = "timeout" if isinstance(exc, requests.Timeout) else "connection_error"
            # `from None`: a requests exception holds the prepared request, Authorization header included, and
            # a traceback renderer that shows causes or locals would print it.
            raise _transport_error(what, exc, self._token, self.base_url, self._timeout[1]) from None
        except Timeout:  # the whole answer took longer than api.request_deadline
            outcome = "timeout"
            raise
        finally:
            if self.observe is not None:
                self.observe(kind, outcome, time.monotonic() - started)


def _same_origin(url: str, base_url: str) -> bool:
    """Same scheme, host and port (a missing port is the scheme's default)."""
    a, b = urlsplit(url), urlsplit(base_url)
    defaults = {"http": 80, "https": 443}
    try:
        ports = (a.port or defaults.get(a.scheme), b.port or defaults.get(b.scheme))
    except ValueError:  # a port that is not a number
        return False
    return a.scheme == b.scheme and (a.hostname or "").lower() == (b.hostname or "").lower() and ports[0] == ports[1]


def _transport_error(
    what: str, exc: requests.RequestException, token: SecretStr, base_url: str, read: float
) -> ApiError:
    parts = urlsplit(base_url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    words = plain_transport_error(exc, parts.hostname or base_url, port, read)
    # The library's own text (pool, "max retries", errno) only at debug level: it reads as if we had retried.
    log.debug("transport_error", request=what, error=_scrub(f"{type(exc).__name__}: {exc}", token))
    if isinstance(exc, requests.ConnectTimeout):
        return TransportError(f"{what}: {words}", ambiguous=False)
    if isinstance(exc, requests.ReadTimeout):
        return Timeout(f"{what}: {words}", ambiguous=True)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return TransportError(f"{what}: {words}", ambiguous=True)
    if isinstance(exc, requests.ConnectionError):
        reason = exc.args[0] if exc.args else None
        if isinstance(reason, urllib3.exceptions.MaxRetryError):
            reason = reason.reason
        never_sent = isinstance(
            reason,
            urllib3.exceptions.NewConnectionError
            | urllib3.exceptions.ConnectTimeoutError
            | urllib3.exceptions.SSLError
            | urllib3.exceptions.ProxyError,
        )
        return TransportError(f"{what}: {words}", ambiguous=not never_sent)
    # Invalid URL, unserializable body and the like: a bug or a bad setting, which retrying cannot fix.
    cause = _scrub(f"{type(exc).__name__}: {exc}", token)
    return ProtocolError(f"{what}: the request could not be made ({cause})", ambiguous=False)


def _read_answer(what: str, response: requests.Response, raw: bytes, token: SecretStr) -> object:
    status = response.status_code
    body = _json_or_none(raw, token)
    if 200 <= status <= 299:
        if body is None:
            raise ProtocolError(f"{what} answered {status} with a body that is not JSON", status=status)
        return body
    if not 400 <= status <= 599:
        raise ProtocolError(f"{what} answered an unexpected {status}", status=status, ambiguous=False)
    text = _scrub(raw.decode("utf-8", "replace"), token)
    detail = _scrub(error_detail(body, text) or response.reason or "", token)
    retry_after = parse_retry_after(response.headers.get("Retry-After"), detail, now=datetime.now(UTC))
    raise status_error(what, status, detail, retry_after, body)


def _json_or_none(raw: bytes, token: SecretStr) -> object:
    """The parsed answer with the token scrubbed from every string (keys too), or None if it is not JSON."""
    try:
        return _scrub_tree(json.loads(raw), token)
    except (ValueError, RecursionError):  # not JSON (or nested beyond reason)
        return None


def _scrub_tree(value: object, token: SecretStr) -> object:
    """A parsed answer with every string scrubbed: whatever the API echoes, nothing we keep holds the token."""
    if isinstance(value, str):
        return _scrub(value, token)
    if isinstance(value, list):
        return [_scrub_tree(item, token) for item in value]
    if isinstance(value, dict):
        return {_scrub(str(k), token): _scrub_tree(v, token) for k, v in value.items()}
    return value


def _key_of(item: Mapping[str, object], data_key: str) -> str | None:
    value = item.get(data_key)
    return value if isinstance(value, str) else None


def _scrub(text: str, token: SecretStr) -> str:
    """The one scrub (logs.redact, which knows every registered secret), plus this client's own token."""
    secret = token.get_secret_value()
    return redact(text.replace(secret, "***") if secret else text)
