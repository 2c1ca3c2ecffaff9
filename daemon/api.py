"""The Scantrust API client: the only module that speaks HTTP, and where call outcomes are classified.

Every failure of a call raises one of these::

    ApiError                   .ambiguous: the request may have taken effect on the server
     ├── TransportError        no usable answer: connection refused or reset, timeouts, a broken body
     ├── HTTPStatusError       a non-2xx answer: .status, .detail (the server's words), .retry_after (s)
     │    ├── TokenRefused     401, 403
     │    ├── Transient        408, 429, any 5xx
     │    │    └── Throttled   429
     │    └── Rejected         any other 4xx; .body is the parsed answer, for per-item errors
     └── ProtocolError         an answer the client cannot use: a 2xx it cannot read, a redirect

`classify()` maps any exception to an ErrorKind: transient (retry), token_refused (pause all uploads),
defective (the request itself is wrong: do not resend as is), protocol (unexpected; not retried).

`ambiguous` is True when the server may have applied the request: a read timeout or a connection reset after
the request was sent, a 2xx the client could not read, and 5xx other than 501/503/504 (the application, or the
hop behind the proxy, failed mid-way). It is False when nothing can have been applied: the connection never
opened, 4xx, 501, 503 (refused before the application), 504 (API.md: the sync call was dropped, no update).
"""

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import structlog
import urllib3.exceptions
from pydantic import SecretStr
from requests.adapters import HTTPAdapter

from daemon import __version__

if TYPE_CHECKING:
    from daemon.pacing import Pacer

log = structlog.get_logger(__name__)

ME_PATH = "/api/v2/me/"
SYNC_UPLOAD_PATH = "/api/v2/scm/upload/"
_MAX_DETAIL = 500
_THROTTLE_WAIT = re.compile(r"available in (\d+(?:\.\d+)?) second", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]*>")


class ErrorKind(StrEnum):
    """What the caller should do about a failed call."""

    TRANSIENT = "transient"  # retry later, with backoff
    TOKEN_REFUSED = "token_refused"  # noqa: S105 - a kind name, not a password; stop until the token is fixed
    DEFECTIVE = "defective"  # the request is wrong; resending it unchanged cannot help
    PROTOCOL = "protocol"  # an answer or failure the client does not understand


class ApiError(Exception):
    """A call to the Scantrust API failed."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


class TransportError(ApiError):
    """No usable HTTP answer: the connection failed, timed out, or broke."""


class HTTPStatusError(ApiError):
    """The API answered with a non-2xx status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        detail: str,
        retry_after: float | None = None,
        body: object = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message, ambiguous=ambiguous)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self.body = body


class TokenRefused(HTTPStatusError):
    """401 or 403: the token is wrong, expired, or lacks a permission."""


class Transient(HTTPStatusError):
    """408, 429 or 5xx: the same request may succeed later."""


class Throttled(Transient):
    """429: the account's rate limit was hit."""


class Rejected(HTTPStatusError):
    """Any other 4xx: the request itself was refused (for a 400, `body` holds the per-item errors)."""


class ProtocolError(ApiError):
    """The API answered, but not in a way the client can use."""

    def __init__(self, message: str, *, status: int | None = None, ambiguous: bool = True) -> None:
        super().__init__(message, ambiguous=ambiguous)
        self.status = status


def classify(exc: BaseException) -> ErrorKind:
    """The one place where a failure becomes a decision; anything not understood is not retried."""
    if isinstance(exc, TransportError | Transient):
        return ErrorKind.TRANSIENT
    if isinstance(exc, TokenRefused):
        return ErrorKind.TOKEN_REFUSED
    if isinstance(exc, Rejected):
        return ErrorKind.DEFECTIVE
    if isinstance(exc, HTTPStatusError):  # constructed directly rather than by this module
        return _kind_for_status(exc.status)
    if isinstance(exc, ApiError):
        return ErrorKind.PROTOCOL
    if isinstance(exc, requests.RequestException | OSError):  # escaped the client, or a socket error
        return ErrorKind.TRANSIENT
    return ErrorKind.PROTOCOL


def _kind_for_status(status: int) -> ErrorKind:
    if status in (401, 403):
        return ErrorKind.TOKEN_REFUSED
    if status in (408, 429) or 500 <= status <= 599:
        return ErrorKind.TRANSIENT
    if 400 <= status <= 499:
        return ErrorKind.DEFECTIVE
    return ErrorKind.PROTOCOL


@dataclass(frozen=True)
class SyncResult:
    """What a sync upload answered: the codes it changed, with the names of their changed fields."""

    changed: Mapping[str, tuple[str, ...]]
    total_updates: int | None
    codes_affected: int | None


class _UatAuth(requests.auth.AuthBase):
    """Adds `Authorization: UAT <token>` to each request; its repr never shows the token."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"UAT {self._token.get_secret_value()}"
        return request

    def __repr__(self) -> str:
        return "_UatAuth(token=SecretStr('**********'))"


class ScantrustClient:
    """A thread-safe client for the endpoints the daemon uses."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        *,
        connect_timeout: float,
        read_timeout: float,
        pacer: "Pacer | None" = None,
        pool_size: int = 8,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API base URL {base_url!r} is not an http(s) URL; set api.base_url")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._auth = _UatAuth(token)
        self._timeout = (connect_timeout, read_timeout)
        self._pacer = pacer
        # A Session is not documented as thread-safe, so each worker thread gets its own; they share one
        # adapter, whose urllib3 pool is thread-safe, so any free thread reuses the keep-alive connections.
        self._adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"ScantrustClient(base_url={self.base_url!r}, token=SecretStr('**********'))"

    def me(self) -> dict[str, Any]:
        """The user the token belongs to (GET /api/v2/me/): the connectivity and token check."""
        body = self._call("GET", ME_PATH)
        if not isinstance(body, dict):
            raise ProtocolError(f"GET {ME_PATH} answered 200 with {_shape(body)} instead of a JSON object")
        return body

    def upload_sync(self, data_key: str, items: list[dict[str, str]]) -> SyncResult:
        """Send one synchronous SCM upload (at most 100 items); paced when the client has a pacer."""
        if self._pacer is not None:
            self._pacer.acquire()
        body = self._call("POST", SYNC_UPLOAD_PATH, {"data_key": data_key, "items": items})
        return _parse_sync_result(body, data_key)

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

    def _call(self, method: str, path: str, payload: object = None) -> object:
        if self._closed:
            raise RuntimeError("the API client was closed")
        what = f"{method} {path}"
        try:
            response = self._session().request(
                method, self.base_url + path, json=payload, timeout=self._timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            # `from None`: a requests exception holds the prepared request, Authorization header included, and
            # a traceback renderer that shows causes or locals would print it.
            raise _transport_error(what, exc, self._token) from None
        return _read_answer(what, response, self._token)


def _transport_error(what: str, exc: requests.RequestException, token: SecretStr) -> ApiError:
    cause = _scrub(f"{type(exc).__name__}: {exc}", token)
    if isinstance(exc, requests.ConnectTimeout):
        return TransportError(f"{what}: could not connect in time ({cause})", ambiguous=False)
    if isinstance(exc, requests.ReadTimeout):
        return TransportError(f"{what}: no answer within the read timeout ({cause})", ambiguous=True)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return TransportError(f"{what}: the answer broke off ({cause})", ambiguous=True)
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
        return TransportError(f"{what}: connection failed ({cause})", ambiguous=not never_sent)
    # Invalid URL, unserializable body and the like: a bug or a bad setting, which retrying cannot fix.
    return ProtocolError(f"{what}: the request could not be made ({cause})", ambiguous=False)


def _read_answer(what: str, response: requests.Response, token: SecretStr) -> object:
    status = response.status_code
    body = _json_or_none(response)
    if 200 <= status <= 299:
        if body is None:
            raise ProtocolError(f"{what} answered {status} with a body that is not JSON", status=status)
        return body
    if not 400 <= status <= 599:
        raise ProtocolError(f"{what} answered an unexpected {status}", status=status, ambiguous=False)
    detail = _scrub(_detail(body, response.text) or response.reason or "", token)
    retry_after = parse_retry_after(response.headers.get("Retry-After"), detail, now=datetime.now(UTC))
    fields: dict[str, Any] = {"status": status, "detail": detail, "retry_after": retry_after, "body": body}
    if status in (401, 403):
        hint = "check the token (api.token_file or SCM_API__TOKEN) and its permissions"
        raise TokenRefused(f"{what}: the API refused the token ({status}: {detail}); {hint}", **fields)
    message = f"{what} answered {status}: {detail}"
    if status == 429:
        raise Throttled(message, **fields)
    if status == 408 or status >= 500:
        raise Transient(message, ambiguous=status not in (408, 501, 503, 504), **fields)
    raise Rejected(message, **fields)


def _json_or_none(response: requests.Response) -> object:
    try:
        return response.json()
    except ValueError:  # requests' JSONDecodeError is a ValueError
        return None


def _detail(body: object, text: str) -> str:
    """The server's message: DRF's {"detail": ...}, else the field errors flattened, else the body's text."""
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])[:_MAX_DETAIL]
    if isinstance(body, dict | list):
        return "; ".join(_flatten_errors(body))[:_MAX_DETAIL]
    # A proxy's HTML error page: keep its words, drop its markup.
    return " ".join(_HTML_TAG.sub(" ", text).split())[:_MAX_DETAIL]


def _flatten_errors(errors: object, prefix: str = "") -> list[str]:
    """DRF errors as "items[3].extended_id: This field is required." lines; empty per-item entries vanish."""
    if isinstance(errors, dict):
        out: list[str] = []
        for key, value in errors.items():
            out += _flatten_errors(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(errors, list):
        if all(isinstance(item, str) for item in errors):
            return [f"{prefix}: {message}" if prefix else str(message) for message in errors]
        out = []
        for index, item in enumerate(errors):
            out += _flatten_errors(item, f"{prefix}[{index}]")
        return out
    return [f"{prefix}: {errors}" if prefix else str(errors)]


def parse_retry_after(header: str | None, detail: str, *, now: datetime) -> float | None:
    """Seconds to wait: the larger of a Retry-After header (seconds or HTTP date) and a 429 detail's count."""
    waits: list[float] = []
    if header:
        try:
            seconds = float(header)
        except ValueError:
            try:
                when = parsedate_to_datetime(header)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
                waits.append(max(0.0, (when - now).total_seconds()))
        else:
            if seconds >= 0 and seconds != float("inf"):
                waits.append(seconds)
    match = _THROTTLE_WAIT.search(detail)
    if match:
        waits.append(float(match.group(1)))
    return max(waits) if waits else None


def _parse_sync_result(body: object, data_key: str) -> SyncResult:
    if not isinstance(body, dict):
        what = f"POST {SYNC_UPLOAD_PATH}"
        raise ProtocolError(f"{what} answered 200 with {_shape(body)} instead of a JSON object")
    items = body.get("items")
    changed: dict[str, tuple[str, ...]] = {}
    if isinstance(items, dict):
        for code, fields in items.items():
            changed[str(code)] = _field_names(fields)
    elif isinstance(items, list):
        # API.md marks the shape of `items` a guess; a list of codes or of {code, fields} objects is accepted.
        for entry in items:
            if isinstance(entry, str):
                changed[entry] = ()
            elif isinstance(entry, dict):
                code = next((entry[k] for k in (data_key, "code") if isinstance(entry.get(k), str)), None)
                if code is not None:
                    changed[code] = _field_names(entry.get("fields", entry.get("changes")))
                else:
                    log.warning("api_sync_item_unreadable", keys=sorted(map(str, entry)))
    elif items is not None:
        raise ProtocolError(f"POST {SYNC_UPLOAD_PATH} answered 200 with `items` as {_shape(items)}")
    return SyncResult(
        changed=MappingProxyType(changed),
        total_updates=_int_or_none(body.get("total_updates")),
        codes_affected=_int_or_none(body.get("codes_affected")),
    )


def _field_names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple | dict):
        return tuple(str(name) for name in value)
    return ()


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _shape(value: object) -> str:
    return "null" if value is None else f"a JSON {type(value).__name__}"


def _scrub(text: str, token: SecretStr) -> str:
    secret = token.get_secret_value()
    return text.replace(secret, "**********") if secret else text
