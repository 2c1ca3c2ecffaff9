"""The emulator's HTTP plumbing: a threaded keep-alive server whose handler hands every request to a backend."""

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
                response = json_response(413, {"detail": "Request body too large or Content-Length invalid."})
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
            self._send(json_response(500, {"detail": "A server error occurred."}))
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
        raw_length = self.headers.get("Content-Length", "0")
        try:
            length = int(raw_length)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(response.body)
