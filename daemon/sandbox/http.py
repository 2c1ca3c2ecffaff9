"""The emulator's HTTP plumbing: a threaded keep-alive server whose handler hands every request to a backend.

The pieces of an exchange that do not touch a socket (the body's length, the canned 413 and 500, the headers
written) are functions here, so that daemon.sandbox.inprocess answers exactly as this handler does.
"""

import contextlib
import socket
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import urlsplit

import structlog

from daemon.sandbox.responses import Response, json_response

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 10 * 1024 * 1024
TOO_LARGE = json_response(413, {"detail": "Request body too large or Content-Length invalid."})
SERVER_ERROR = json_response(500, {"detail": "A server error occurred."})  # the emulator itself failed


class Backend(Protocol):
    """What the handler needs from the emulator."""

    def request_started(self, method: str, path: str) -> tuple[str, str]:
        """Count a request; return its route (kind, parameter)."""

    def request_finished(self) -> None:
        """The request's answer went out, or the connection dropped."""

    def track_connection(self, conn: socket.socket, *, add: bool) -> None:
        """Remember an open connection (add) or forget a closed one, so that stop() can drop it."""

    def wait(self, seconds: float) -> bool:
        """Sleep unless the emulator stops first; True if it is still running."""

    def handle(self, method: str, route: tuple[str, str], authorization: str | None, body: bytes) -> Response:
        """The answer to one request."""

    @property
    def wall(self) -> Callable[[], datetime]:
        """The emulator's wall clock, for the Date header."""


def http_date(moment: datetime) -> str:
    """A Date header's value (RFC 9110 IMF-fixdate), as the stdlib server writes it."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def body_length(content_length: str) -> int | None:
    """The number of body bytes a Content-Length announces, or None if it is invalid or over MAX_BODY_BYTES."""
    try:
        length = int(content_length)
    except ValueError:
        return None
    return None if length < 0 or length > MAX_BODY_BYTES else length


def reason_phrase(status: int) -> str:
    """The reason the stdlib server puts on the status line ("" for a status it has no phrase for)."""
    return BaseHTTPRequestHandler.responses.get(status, ("",))[0]


def answer_headers(response: Response, *, date: str, close: bool) -> list[tuple[str, str]]:
    """Every header the handler writes for `response`, in order; `close` when the connection ends after it."""
    headers = [
        ("Server", f"{Handler.server_version} {Handler.sys_version}"),  # BaseHTTPRequestHandler.version_string
        ("Date", date),
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers.items(),
    ]
    if close:
        headers.append(("Connection", "close"))
    return headers


class Server(ThreadingHTTPServer):
    """The listening socket; one thread per connection."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: Backend) -> None:
        super().__init__(address, Handler)
        self.backend = backend


class Handler(BaseHTTPRequestHandler):
    """Reads one request after another from a keep-alive connection and sends the backend's answers."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the real API behind its load balancer
    server_version = "scm-sandbox"
    sys_version = ""
    server: Server

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY, Nagle plus the client's delayed ACK stalls every keep-alive answer by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.backend.track_connection(self.connection, add=True)

    def finish(self) -> None:
        self.server.backend.track_connection(self.connection, add=False)
        with contextlib.suppress(OSError):  # the peer went away; nothing left to flush
            super().finish()

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header from the emulator's wall clock, so that a fake clock shows in it too."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        return http_date(self.server.backend.wall())

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
        backend = self.server.backend
        path = urlsplit(self.path).path
        route = backend.request_started(method, path)
        try:
            body = self._read_body()
            if body is None:
                self.close_connection = True
                response = TOO_LARGE
            else:
                response = backend.handle(method, route, self.headers.get("Authorization"), body)
            if not backend.wait(response.delay):
                self.close_connection = True
                return
            if response.reset:
                self._reset()
                return
            self._send(response)
        except OSError:
            self.close_connection = True  # the client hung up; there is nobody to answer
        except Exception:
            log.exception("sandbox_request_failed", method=method, path=path)
            self.close_connection = True
            self._send(SERVER_ERROR)
        finally:
            backend.request_finished()

    def _reset(self) -> None:
        """Drop the connection without a word; a zero linger makes the close an RST, as a crashed peer's."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Closed here, not by socketserver: its shutdown(SHUT_WR) would send a FIN first, and the client would
            # read a clean end of stream (RemoteDisconnected) instead of a reset (ConnectionResetError).
            self.connection.close()

    def _read_body(self) -> bytes | None:
        length = body_length(self.headers.get("Content-Length", "0"))
        if length is None:
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, response: Response) -> None:
        self.log_request(response.status)
        self.send_response_only(response.status)
        for name, value in answer_headers(response, date=self.date_time_string(), close=self.close_connection):
            self.send_header(name, value)
        self.end_headers()
        if response.trickle <= 0:
            self.wfile.write(response.body)
            return
        backend = self.server.backend
        for at in range(len(response.body)):  # wfile is unbuffered: each byte is its own segment
            self.wfile.write(response.body[at : at + 1])
            if not backend.wait(response.trickle):
                self.close_connection = True
                return
