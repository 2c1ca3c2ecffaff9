"""The API client's errors: one exception tree, the one classification of failures, and readers of error bodies.

Every failure of a call raises one of these::

    ApiError                   .ambiguous: the request may have taken effect on the server
     ├── TransportError        no usable answer: connection refused or reset, a broken body
     │    └── Timeout          no answer within the read timeout (the request had left)
     ├── HTTPStatusError       a non-2xx answer: .status, .detail (the server's words), .retry_after (s)
     │    ├── TokenRefused     401, 403
     │    ├── Transient        408, 429, any 5xx
     │    │    └── Throttled   429
     │    └── Rejected         any other 4xx; .body is the parsed answer, .item_errors the per-item errors
     │         └── NotFound    404 (e.g. a task id the API does not know)
     └── ProtocolError         an answer the client cannot use: a 2xx it cannot read, a redirect

`classify()` maps any exception to an ErrorKind: transient (retry), token_refused (pause all uploads),
defective (the request itself is wrong: do not resend as is), protocol (unexpected; not retried).

`ambiguous` is True when the server may have applied the request: a read timeout or a connection reset after
the request was sent, a 2xx the client could not read, and 5xx other than 501/503/504 (the application, or the
hop behind the proxy, failed mid-way). It is False when nothing can have been applied: the connection never
opened, 4xx, 501, 503 (refused before the application), 504 (API.md: the sync call was dropped, no update).
"""

import re
import socket
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

import requests
import urllib3

MAX_DETAIL = 500
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


class Timeout(TransportError):
    """The request left, but no answer came within the read timeout."""


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
    """Any other 4xx: the request itself was refused.

    `item_errors` maps the index of a sync upload's item to the API's message about it, when the body said
    which items were defective; None when it did not (the caller then has to find them by splitting).
    """

    item_errors: dict[int, str] | None = None


class NotFound(Rejected):
    """404: the path, or the object it names (a task id), does not exist."""


class ProtocolError(ApiError):
    """The API answered, but not in a way the client can use."""

    def __init__(self, message: str, *, status: int | None = None, ambiguous: bool = True) -> None:
        super().__init__(message, ambiguous=ambiguous)
        self.status = status


def classify(exc: BaseException) -> ErrorKind:
    """What kind of failure an exception is; anything not understood is not retried."""
    if isinstance(exc, HTTPStatusError):
        exc_type: type[BaseException] = _class_for_status(exc.status)  # also for one constructed directly
    else:
        exc_type = type(exc)
    if issubclass(exc_type, TransportError | Transient):
        return ErrorKind.TRANSIENT
    if issubclass(exc_type, TokenRefused):
        return ErrorKind.TOKEN_REFUSED
    if issubclass(exc_type, Rejected):
        return ErrorKind.DEFECTIVE
    if issubclass(exc_type, ApiError):
        return ErrorKind.PROTOCOL
    if issubclass(exc_type, requests.RequestException | OSError):  # escaped the client, or a socket error
        return ErrorKind.TRANSIENT
    return ErrorKind.PROTOCOL


def _class_for_status(status: int) -> type[HTTPStatusError]:
    """The one mapping of an HTTP error status to its exception class (the base class: not an error status)."""
    if not 400 <= status <= 599:
        return HTTPStatusError
    if status in (401, 403):
        return TokenRefused
    if status == 429:
        return Throttled
    if status == 408 or 500 <= status <= 599:
        return Transient
    if status == 404:
        return NotFound
    return Rejected


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its args that are exceptions (urllib3's MaxRetryError.reason) and its causes, outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [a for a in current.args if isinstance(a, BaseException)]
        if isinstance(current, urllib3.exceptions.MaxRetryError) and current.reason is not None:
            todo.append(current.reason)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
    return seen


def plain_transport_error(exc: BaseException, host: str, port: int | None, read_timeout: float) -> str:
    """A transport failure in a few words a person can act on, without the HTTP library's text.

    "cannot connect to HOST:PORT (connection refused)", "no answer from HOST within 90 s", "TLS certificate of
    HOST not trusted", "name HOST not found (DNS)"; the full exception belongs only in the debug log.
    """
    where = f"{host}:{port}" if port else host
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()

    def has(kind: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
        return any(isinstance(e, kind) for e in chain)

    if has(requests.exceptions.SSLError) or has(ssl.SSLError) or has(urllib3.exceptions.SSLError):
        if "certificate" in text or has(ssl.SSLCertVerificationError):
            return f"TLS certificate of {host} not trusted"
        return f"TLS handshake with {where} failed"
    if has(socket.gaierror) or "name or service not known" in text or "nodename nor servname" in text:
        return f"name {host} not found (DNS)"
    if "temporary failure in name resolution" in text or "failed to resolve" in text:
        return f"name {host} not found (DNS)"
    if has(requests.ReadTimeout) or has(urllib3.exceptions.ReadTimeoutError):
        return f"no answer from {host} within {read_timeout:g} s"
    # Before the timeout: urllib3's NewConnectionError is a subclass of ConnectTimeoutError.
    if has(ConnectionRefusedError) or "connection refused" in text:
        return f"cannot connect to {where} (connection refused)"
    if has(requests.ConnectTimeout) or has(urllib3.exceptions.ConnectTimeoutError):
        return f"cannot connect to {where} (no answer to the connection attempt)"
    if has(ConnectionResetError) or "connection reset" in text or "connection aborted" in text:
        return f"connection to {where} was reset"
    if has((requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return f"the answer from {where} broke off"
    if "network is unreachable" in text or "no route to host" in text:
        return f"cannot connect to {where} (network unreachable)"
    if has(requests.exceptions.ProxyError):
        return f"cannot connect to {where} through the proxy"
    return f"cannot connect to {where} ({type(exc).__name__})"


def status_error(what: str, status: int, detail: str, retry_after: float | None, body: object) -> HTTPStatusError:
    """The exception for a 4xx or 5xx answer to `what` (e.g. "POST /api/v2/scm/upload/")."""
    error_type = _class_for_status(status)
    message = f"{what} answered {status}: {detail}"
    if error_type is TokenRefused:
        hint = "check the token (api.token_file or SCM_API__TOKEN) and its permissions"
        message = f"{what}: the API refused the token ({status}: {detail}); {hint}"
    ambiguous = error_type is Transient and status not in (408, 501, 503, 504)
    return error_type(message, status=status, detail=detail, retry_after=retry_after, body=body, ambiguous=ambiguous)


def error_detail(body: object, text: str) -> str:
    """The server's message: DRF's {"detail": ...}, else the field errors flattened, else the body's text."""
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])[:MAX_DETAIL]
    if isinstance(body, dict | list):
        return "; ".join(flatten_errors(body))[:MAX_DETAIL]
    # A proxy's HTML error page: keep its words, drop its markup.
    return " ".join(_HTML_TAG.sub(" ", text).split())[:MAX_DETAIL]


def flatten_errors(errors: object, prefix: str = "") -> list[str]:
    """DRF errors as "items[3].extended_id: This field is required." lines; empty per-item entries vanish."""
    if isinstance(errors, dict):
        out: list[str] = []
        for key, value in errors.items():
            out += flatten_errors(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(errors, list):
        if all(isinstance(item, str) for item in errors):
            return [f"{prefix}: {message}" if prefix else str(message) for message in errors]
        out = []
        for index, item in enumerate(errors):
            out += flatten_errors(item, f"{prefix}[{index}]")
        return out
    return [f"{prefix}: {errors}" if prefix else str(errors)]


def item_errors(body: object, codes: Sequence[str | None]) -> dict[int, str] | None:
    """Per-item errors of a refused sync upload: item index -> message, or None if the body names no item.

    `codes` are the key values of the request's items, in order. Accepted shapes (API.md: DRF, a guess):
    a list aligned with the items (DRF's ListSerializer: `{}` for the good ones), a dict keyed by item index,
    or a dict keyed by code; each at the top level or under "items". A body that names no item, or names
    indexes or codes outside the request, gives None: the caller cannot trust it to isolate the bad items.
    """
    container = body.get("items") if isinstance(body, dict) and "items" in body else body
    found: dict[int, str] = {}
    if isinstance(container, list):
        if len(container) != len(codes) or all(isinstance(entry, str) for entry in container):
            return None  # a message about the list as a whole ("no more than 100 elements"), not per item
        for index, entry in enumerate(container):
            if message := _message(entry):
                found[index] = message
    elif isinstance(container, dict):
        positions: dict[str, list[int]] = {}
        for index, code in enumerate(codes):
            if code is not None:
                positions.setdefault(code, []).append(index)
        for key, entry in container.items():
            message = _message(entry)
            if not message:
                continue
            name = str(key)
            if name in positions:  # a code; it wins over an index, so a serial number "3" is read as a code
                indexes = positions[name]
            elif name.isascii() and name.isdigit() and int(name) < len(codes):  # "²".isdigit(), int("²") fails
                indexes = [int(name)]
            elif name in ("detail", "non_field_errors", "code"):
                continue  # messages about the request as a whole
            else:
                return None  # a key that is neither an item nor a code of this request
            for index in indexes:
                found[index] = message
    return found or None


def _message(entry: object) -> str:
    """One item's errors as a single line: "extended_id: Invalid code." or the bare message."""
    if isinstance(entry, str):
        return entry
    return "; ".join(flatten_errors(entry)) if isinstance(entry, dict | list) else ""


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
