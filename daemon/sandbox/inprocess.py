"""A requests transport that answers from an Emulator in-process: no socket, no thread, no sleeping.

`ScantrustClient(base_url, token, ..., adapter=InProcessAdapter(emulator))` runs the real client against the
real emulator logic. Each exchange is what daemon.sandbox.http would have sent (status, reason, headers, body),
and each transport fault raises what requests raises over a real socket, built from the same urllib3 exceptions:

    the answer's delay > read timeout  ReadTimeout(ReadTimeoutError)                  the request was applied
    the emulator resets                ConnectionError(ProtocolError('Connection aborted.',
                                                                     ConnectionResetError(104, ...)))
    adapter.refuse                     ConnectionError(MaxRetryError(reason=NewConnectionError))   never sent
    adapter.blackhole                  ConnectTimeout(MaxRetryError(reason=ConnectTimeoutError))   never sent

Time is the caller's: the adapter never sleeps, and `last_delay` says how long the exchange would have taken,
so a simulation delivers the answer (or the exception) that much later on its clock.
"""

import errno
import html
import io
import math
import os
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import requests
import structlog
import urllib3
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, connection_from_url
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationValueError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from daemon.sandbox.http import SERVER_ERROR, TOO_LARGE, Handler, answer_headers, body_length, http_date, reason_phrase
from daemon.sandbox.responses import Response
from daemon.sandbox.server import Emulator

__all__ = ["InProcessAdapter"]

log = structlog.get_logger(__name__)


class InProcessAdapter(requests.adapters.BaseAdapter):
    """Answers every request from `emulator` directly; mount it for http:// and https:// (the client does).

    `refuse` and `blackhole` may be flipped at any time: while set, requests fail as a refused or an
    unanswered connection would, and the emulator never sees them. `last_delay` is the simulated duration of
    the calling thread's last exchange.
    """

    def __init__(self, emulator: Emulator) -> None:
        super().__init__()
        self.emulator = emulator
        self.refuse = False  # connection refused: ConnectionError at once (last_delay 0)
        self.blackhole = False  # no SYN-ACK: ConnectTimeout after the connect timeout
        self._local = threading.local()

    @property
    def last_delay(self) -> float:
        """Seconds the calling thread's last `send` took in simulated time (0.0 before any)."""
        delay: float = getattr(self._local, "delay", 0.0)
        return delay

    def send(  # noqa: PLR0917 - BaseAdapter.send's signature, positional as Session.send may call it
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | urllib3.Timeout | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """The emulator's answer to `request`, or the exception requests would raise over a socket.

        `stream`, `verify`, `cert` and `proxies` change nothing here: the answer is in memory, with no TLS or
        proxy on the way. Redirects are answered as they are; following them is the Session's business.
        """
        connect_timeout, read_timeout = _timeouts(timeout)
        url = request.url or ""
        target = request.path_url  # what the client writes on the request line, as the handler reads it
        try:
            pool = connection_from_url(url)
        except LocationValueError as exc:
            raise requests.exceptions.InvalidURL(exc, request=request) from None
        if self.refuse:
            self._local.delay = 0.0
            refused = ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
            reason = NewConnectionError(
                _connection(pool, connect_timeout), f"Failed to establish a new connection: {refused}"
            )
            raise requests.ConnectionError(MaxRetryError(pool, target, reason), request=request)
        if self.blackhole:
            self._local.delay = math.inf if connect_timeout is None else connect_timeout
            message = f"Connection to {pool.host} timed out. (connect timeout={connect_timeout})"
            timed_out = ConnectTimeoutError(_connection(pool, connect_timeout), message)
            raise requests.ConnectTimeout(MaxRetryError(pool, target, timed_out), request=request)

        method = request.method or "GET"
        if not hasattr(Handler, f"do_{method}"):
            self._local.delay = 0.0
            return self._unsupported(request, method)
        answer, close = self._exchange(request, method, target)
        if read_timeout is not None and answer.delay > read_timeout:
            self._local.delay = read_timeout
            message = f"Read timed out. (read timeout={read_timeout})"
            raise requests.exceptions.ReadTimeout(ReadTimeoutError(pool, target, message), request=request)
        self._local.delay = answer.delay
        if answer.reset:
            reset = ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
            raise requests.ConnectionError(ProtocolError("Connection aborted.", reset), request=request)
        headers = answer_headers(answer, date=http_date(self.emulator.wall()), close=close)
        body = b"" if method == "HEAD" else answer.body
        return self._response(request, answer.status, reason_phrase(answer.status), headers, body)

    def close(self) -> None:
        """Nothing to release: there are no connections."""

    def _exchange(self, request: requests.PreparedRequest, method: str, target: str) -> tuple[Response, bool]:
        """The handler's _dispatch without the socket: the answer, and whether the connection would close."""
        emulator = self.emulator
        path = urlsplit(target).path
        route = emulator.request_started(method, path)
        close = request.headers.get("Connection", "").lower() == "close"
        try:
            length = body_length(request.headers.get("Content-Length", "0"))
            if length is None:
                return TOO_LARGE, True
            body = _body_bytes(request.body)[:length]
            return emulator.handle(method, route, request.headers.get("Authorization"), body), close
        except Exception:
            log.exception("sandbox_request_failed", method=method, path=path)
            return SERVER_ERROR, True
        finally:
            emulator.request_finished()

    def _unsupported(self, request: requests.PreparedRequest, method: str) -> requests.Response:
        """BaseHTTPRequestHandler.send_error(501) for a method the handler has no do_ for; the emulator never
        sees the request."""
        message = f"Unsupported method ({method!r})"
        explain = Handler.responses[501][1]
        content = Handler.error_message_format % {
            "code": 501,
            "message": html.escape(message, quote=False),
            "explain": html.escape(explain, quote=False),
        }
        body = content.encode("UTF-8", "replace")
        headers = [
            ("Server", f"{Handler.server_version} {Handler.sys_version}"),
            ("Date", http_date(self.emulator.wall())),
            ("Connection", "close"),
            ("Content-Type", Handler.error_content_type),
            ("Content-Length", str(len(body))),
        ]
        return self._response(request, 501, message, headers, b"" if method == "HEAD" else body)

    def _response(
        self,
        request: requests.PreparedRequest,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> requests.Response:
        """A requests.Response over a urllib3 HTTPResponse, as HTTPAdapter.build_response makes one."""
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers=urllib3.HTTPHeaderDict(headers),
            status=status,
            version=11,
            version_string="HTTP/1.1",
            reason=reason,
            preload_content=False,
            decode_content=False,
            request_method=request.method,
            request_url=request.url,
        )
        response = requests.Response()
        response.status_code = status
        response.headers = CaseInsensitiveDict(raw.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = raw
        response.reason = reason
        response.url = request.url or ""
        response.request = request
        response.connection = self  # type: ignore[assignment]  # the stubs say HTTPAdapter; requests needs no more
        return response


def _timeouts(
    timeout: float | tuple[float | None, float | None] | urllib3.Timeout | None,
) -> tuple[float | None, float | None]:
    """(connect, read) seconds or None for none, resolved and checked as HTTPAdapter.send does."""
    if isinstance(timeout, tuple):
        try:
            connect, read = timeout
        except ValueError:
            raise ValueError(
                f"Invalid timeout {timeout}. Pass a (connect, read) timeout tuple, "
                f"or a single float to set both timeouts to the same value."
            ) from None
        resolved = urllib3.Timeout(connect=connect, read=read)
    elif isinstance(timeout, urllib3.Timeout):
        resolved = timeout
    else:
        resolved = urllib3.Timeout(connect=timeout, read=timeout)
    connect_timeout = resolved.connect_timeout
    return connect_timeout if isinstance(connect_timeout, int | float) else None, resolved.read_timeout


def _connection(pool: HTTPConnectionPool, timeout: float | None) -> HTTPConnection:
    """The connection object a real attempt would have made (named in the error's text); it never connects."""
    cls = HTTPSConnection if pool.scheme == "https" else HTTPConnection
    return cls(host=pool.host, port=pool.port, timeout=timeout)


def _body_bytes(body: object) -> bytes:
    """A prepared request's body as the bytes that would go on the wire."""
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if hasattr(body, "read"):
        data = body.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if isinstance(body, Iterable):
        return b"".join(part.encode("utf-8") if isinstance(part, str) else bytes(part) for part in body)
    raise TypeError(f"cannot send a request body of type {type(body).__name__}")
