"""The API client against the emulator, and against tiny raw servers that misbehave on purpose."""

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
from pydantic import SecretStr

from daemon.api import (
    ApiError,
    ErrorKind,
    HTTPStatusError,
    NotFound,
    ProtocolError,
    Rejected,
    ScantrustClient,
    SyncResult,
    Throttled,
    Timeout,
    TokenRefused,
    Transient,
    TransportError,
    classify,
    parse_retry_after,
)
from daemon.sandbox import Emulator

TOKEN = "sandbox-token"


def code(n: int) -> str:
    return f"CODE{n:08d}"


def make_client(base_url: str, token: str = TOKEN, read_timeout: float = 5.0, pool_size: int = 8) -> ScantrustClient:
    return ScantrustClient(
        base_url, SecretStr(token), connect_timeout=2.0, read_timeout=read_timeout, pool_size=pool_size
    )


@pytest.fixture
def client(emulator: Emulator) -> Iterator[ScantrustClient]:
    api = make_client(emulator.base_url)
    yield api
    api.close()


class RawServer:
    """A one-thread loopback server that reads each request and then does `behaviour` with the socket."""

    def __init__(self, behaviour: Callable[[socket.socket, threading.Event], None]) -> None:
        self.behaviour = behaviour
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # close() does not wake a blocked accept(), so poll for the stop flag
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                header, _, body = head.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in header.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head)
                self.behaviour(conn, self.stopped)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(5)


def answering(status: int, body: bytes, *headers: str) -> Callable[[socket.socket, threading.Event], None]:
    def behaviour(conn: socket.socket, _: threading.Event) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close", *headers]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    return behaviour


@pytest.fixture
def raw() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(behaviour: Callable[[socket.socket, threading.Event], None]) -> RawServer:
        servers.append(RawServer(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


RawFactory = Callable[[Callable[[socket.socket, threading.Event], None]], RawServer]


def call_raw(raw: RawFactory, status: int, body: bytes, *headers: str, read_timeout: float = 5.0) -> SyncResult:
    server = raw(answering(status, body, *headers))
    api = make_client(server.base_url, read_timeout=read_timeout)
    try:
        return api.upload_sync("extended_id", [{"extended_id": code(1), "lot": "1"}])
    finally:
        api.close()


# -- the happy path against the emulator -------------------------------------------------------------------


def test_me_returns_the_user(client: ScantrustClient) -> None:
    assert client.me()["email"] == "sandbox@example.com"


def test_upload_reports_the_changed_codes_and_fields(emulator: Emulator, client: ScantrustClient) -> None:
    emulator.configure(known_codes={code(1), code(2)}, campaign_fields={"market", "lot"})
    items = [
        {"extended_id": code(1), "market": "cn", "colour": "red"},
        {"extended_id": code(2), "lot": "7"},
        {"extended_id": code(3), "market": "de"},
    ]
    result = client.upload_sync("extended_id", items)
    assert dict(result.changed) == {code(1): ("market",), code(2): ("lot",)}
    assert (result.total_updates, result.codes_affected) == (2, 2)
    assert emulator.data("extended_id", code(1)) == {"market": "cn"}
    again = client.upload_sync("extended_id", items)
    assert dict(again.changed) == {}
    assert emulator.transactions("extended_id", code(1)) == 2


def test_an_upload_waits_for_its_turn_once_built_and_leaves_right_after(
    emulator: Emulator, client: ScantrustClient
) -> None:
    # The rolling window counts a request as sent when its turn comes: by then it is built, so that only the
    # socket's work is left (built after, in a busy process, it could leave tens of milliseconds later).
    turns: list[int] = []

    def turn() -> None:
        turns.append(len(emulator.upload_arrivals()))  # nothing of this request has reached the API yet

    client.upload_sync("extended_id", [{"extended_id": code(1), "lot": "1"}], turn=turn)
    task_id = client.upload_async("extended_id", [code(2)], {"lot": "2"}, "r", turn=turn)
    assert turns == [0, 1]
    assert len(emulator.upload_arrivals()) == 2
    assert task_id
    client.task(task_id)  # polls are not paced: no turn
    assert turns == [0, 1]


def test_the_client_is_safe_to_share_between_threads(emulator: Emulator) -> None:
    api = make_client(emulator.base_url, pool_size=4)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(10):
                result = api.upload_sync("extended_id", [{"extended_id": code(worker * 100 + n), "w": str(worker)}])
                assert list(result.changed) == [code(worker * 100 + n)]
        except BaseException as exc:  # collected for the main thread's assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    api.close()
    assert errors == []
    assert len(emulator.all_data()) == 80
    assert emulator.stats().sync_calls == 80


def test_a_closed_client_refuses_calls(client: ScantrustClient) -> None:
    client.close()
    with pytest.raises(RuntimeError):
        client.me()


def test_a_base_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match=r"api\.base_url"):
        make_client("api.scantrust.com")


# -- errors from the emulator ------------------------------------------------------------------------------


def test_a_wrong_token_is_refused_without_showing_it(emulator: Emulator) -> None:
    api = make_client(emulator.base_url, token="my-secret-token-123")
    with pytest.raises(TokenRefused) as caught:
        api.upload_sync("extended_id", [{"extended_id": code(1)}])
    api.close()
    error = caught.value
    assert (error.status, error.detail, error.ambiguous) == (401, "Invalid token.", False)
    assert "SCM_API__TOKEN" in str(error)
    for text in (str(error), repr(error), repr(api), repr(api._auth)):
        assert "my-secret-token-123" not in text
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


def test_a_token_without_permission_is_refused(emulator: Emulator, client: ScantrustClient) -> None:
    emulator.configure(forbidden=True)
    with pytest.raises(TokenRefused) as caught:
        client.me()
    assert caught.value.status == 403


def test_throttling_raises_throttled_with_the_wait(emulator: Emulator, client: ScantrustClient) -> None:
    emulator.configure(rate_limit=1)
    client.upload_sync("extended_id", [{"extended_id": code(1)}])
    with pytest.raises(Throttled) as caught:
        client.upload_sync("extended_id", [{"extended_id": code(2)}])
    assert caught.value.retry_after == 1.0
    assert caught.value.ambiguous is False
    assert classify(caught.value) is ErrorKind.TRANSIENT


def test_injected_server_errors_are_transient(emulator: Emulator, client: ScantrustClient) -> None:
    emulator.configure(fail_rate=1.0, seed=1)
    seen: dict[int, str] = {}
    for n in range(15):
        with pytest.raises(Transient) as caught:
            client.upload_sync("extended_id", [{"extended_id": code(n)}])
        seen[caught.value.status] = caught.value.detail
    assert set(seen) == {500, 502, 503}
    assert seen[502] == "502 Bad Gateway"  # the HTML page's words, without its markup
    assert emulator.all_data() == {}


def test_a_defective_batch_is_rejected_with_its_item_errors(client: ScantrustClient) -> None:
    with pytest.raises(Rejected) as caught:
        client.upload_sync("extended_id", [{"extended_id": code(1)}, {"lot": "1"}])
    error = caught.value
    assert error.status == 400
    assert error.detail == "items[1].extended_id: This field is required."
    assert error.body == {"items": [{}, {"extended_id": ["This field is required."]}]}
    assert classify(error) is ErrorKind.DEFECTIVE


def test_a_read_timeout_is_an_ambiguous_transport_error(emulator: Emulator) -> None:
    emulator.configure(slow_rate=1.0, slow_seconds=5.0)
    api = make_client(emulator.base_url, read_timeout=0.2)
    with pytest.raises(TransportError) as caught:
        api.upload_sync("extended_id", [{"extended_id": code(1), "lot": "1"}])
    api.close()
    assert caught.value.ambiguous is True
    assert emulator.data("extended_id", code(1)) == {"lot": "1"}  # indeed applied


# -- misbehaving servers -----------------------------------------------------------------------------------


def test_a_server_that_hangs_up_after_the_request_is_ambiguous(raw: RawFactory) -> None:
    server = raw(lambda conn, _: None)  # reads the request, closes without a word
    api = make_client(server.base_url)
    with pytest.raises(TransportError) as caught:
        api.upload_sync("extended_id", [{"extended_id": code(1)}])
    api.close()
    assert caught.value.ambiguous is True
    assert server.requests  # the request did reach the server
    assert classify(caught.value) is ErrorKind.TRANSIENT


def test_a_server_that_hangs_past_the_read_timeout_is_ambiguous(raw: RawFactory) -> None:
    def hang(conn: socket.socket, stopped: threading.Event) -> None:
        stopped.wait(10)

    server = raw(hang)
    api = make_client(server.base_url, read_timeout=0.2)
    with pytest.raises(TransportError, match=r"no answer from 127\.0\.0\.1 within 0\.2 s") as caught:
        api.upload_sync("extended_id", [{"extended_id": code(1)}])
    api.close()
    assert caught.value.ambiguous is True


def test_a_refused_connection_is_not_ambiguous() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    api = make_client(f"http://127.0.0.1:{port}")
    with pytest.raises(TransportError) as caught:
        api.me()
    api.close()
    assert caught.value.ambiguous is False


def test_a_truncated_answer_is_an_ambiguous_transport_error(raw: RawFactory) -> None:
    def behaviour(conn: socket.socket, _: threading.Event) -> None:
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{"items')

    api = make_client(raw(behaviour).base_url)
    with pytest.raises(TransportError) as caught:
        api.upload_sync("extended_id", [])
    api.close()
    assert caught.value.ambiguous is True


@pytest.mark.parametrize(
    ("body", "changed", "counts"),
    [
        (b'{"total_updates": 1, "codes_affected": 1, "items": {"A": ["lot"]}, "changes": []}', {"A": ("lot",)}, (1, 1)),
        (b'{"items": ["A", "B"]}', {"A": (), "B": ()}, (None, None)),
        (b'{"items": [{"extended_id": "A", "fields": ["lot"]}, {"odd": 1}, 7]}', {"A": ("lot",)}, (None, None)),
        (b'{"total_updates": "2", "surprise": {"x": 1}}', {}, (None, None)),
        (b'{"items": null, "codes_affected": true}', {}, (None, None)),
        (b'{"items": {"A": "lot", "B": null}}', {"A": ("lot",), "B": ()}, (None, None)),
    ],
)
def test_answer_shapes_are_read_tolerantly(
    raw: RawFactory, body: bytes, changed: dict[str, tuple[str, ...]], counts: tuple[int | None, int | None]
) -> None:
    result = call_raw(raw, 200, body)
    assert dict(result.changed) == changed
    assert (result.total_updates, result.codes_affected) == counts


@pytest.mark.parametrize("body", [b"<html>ok</html>", b"[1, 2]", b'{"items": 5}', b""])
def test_an_unreadable_success_is_a_protocol_error(raw: RawFactory, body: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        call_raw(raw, 200, body)
    assert caught.value.ambiguous is True
    assert classify(caught.value) is ErrorKind.PROTOCOL


def test_a_redirect_is_not_followed(raw: RawFactory) -> None:
    with pytest.raises(ProtocolError) as caught:
        call_raw(raw, 301, b"", "Location: http://127.0.0.1:1/elsewhere")
    assert (caught.value.status, caught.value.ambiguous) == (301, False)


def test_the_token_is_scrubbed_from_server_messages(raw: RawFactory) -> None:
    body = json.dumps({"detail": f"Token {TOKEN} is not valid here."}).encode()
    with pytest.raises(Rejected) as caught:
        call_raw(raw, 400, body)
    assert TOKEN not in str(caught.value)
    assert TOKEN not in caught.value.detail


def test_the_authorization_header_is_sent(raw: RawFactory) -> None:
    server = raw(answering(200, b"{}"))
    api = make_client(server.base_url)
    api.upload_sync("extended_id", [])
    api.close()
    assert f"Authorization: UAT {TOKEN}".encode() in server.requests[0]


@pytest.mark.parametrize(
    ("status", "error_type", "ambiguous"),
    [
        (400, Rejected, False),
        (404, NotFound, False),
        (406, Rejected, False),
        (401, TokenRefused, False),
        (403, TokenRefused, False),
        (408, Transient, False),
        (429, Throttled, False),
        (500, Transient, True),
        (501, Transient, False),
        (502, Transient, True),
        (503, Transient, False),
        (504, Transient, False),
        (520, Transient, True),
    ],
)
def test_statuses_map_to_the_error_tree(
    raw: RawFactory, status: int, error_type: type[HTTPStatusError], ambiguous: bool
) -> None:
    with pytest.raises(error_type) as caught:
        call_raw(raw, status, b'{"detail": "nope"}', "Retry-After: 2")
    assert type(caught.value) is error_type
    assert (caught.value.status, caught.value.detail, caught.value.retry_after) == (status, "nope", 2.0)
    assert caught.value.ambiguous is ambiguous


# -- pure helpers ------------------------------------------------------------------------------------------

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "detail", "expected"),
    [
        (None, "", None),
        ("3", "", 3.0),
        ("0.5", "", 0.5),
        ("-1", "", None),
        ("nan", "", None),
        ("soon", "", None),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), "", 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), "", 0.0),
        (None, "Request was throttled. Expected available in 3 seconds.", 3.0),
        (None, "Request was throttled. Expected available in 1 second.", 1.0),
        ("1", "Request was throttled. Expected available in 4 seconds.", 4.0),
        ("9", "Request was throttled. Expected available in 4 seconds.", 9.0),
    ],
)
def test_parse_retry_after(header: str | None, detail: str, expected: float | None) -> None:
    assert parse_retry_after(header, detail, now=NOW) == expected


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TransportError("x", ambiguous=True), ErrorKind.TRANSIENT),
        (TransportError("x"), ErrorKind.TRANSIENT),
        (Transient("x", status=503, detail=""), ErrorKind.TRANSIENT),
        (Throttled("x", status=429, detail="", retry_after=1), ErrorKind.TRANSIENT),
        (TokenRefused("x", status=401, detail=""), ErrorKind.TOKEN_REFUSED),
        (TokenRefused("x", status=403, detail=""), ErrorKind.TOKEN_REFUSED),
        (Rejected("x", status=400, detail=""), ErrorKind.DEFECTIVE),
        (ProtocolError("x"), ErrorKind.PROTOCOL),
        (ApiError("x"), ErrorKind.PROTOCOL),
        (HTTPStatusError("x", status=502, detail=""), ErrorKind.TRANSIENT),
        (HTTPStatusError("x", status=401, detail=""), ErrorKind.TOKEN_REFUSED),
        (HTTPStatusError("x", status=409, detail=""), ErrorKind.DEFECTIVE),
        (HTTPStatusError("x", status=302, detail=""), ErrorKind.PROTOCOL),
        (requests.ConnectionError("x"), ErrorKind.TRANSIENT),
        (ConnectionResetError(), ErrorKind.TRANSIENT),
        (TimeoutError(), ErrorKind.TRANSIENT),
        (ValueError("bug"), ErrorKind.PROTOCOL),
        (KeyError("bug"), ErrorKind.PROTOCOL),
    ],
)
def test_classify(error: BaseException, kind: ErrorKind) -> None:
    assert classify(error) is kind


# Hostile answers (issue 11, findings 4, 6, 7): trickled, huge, non-JSON, echoing the token.


def trickling(total: int) -> object:
    def behaviour(conn: socket.socket, stopped: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n".encode())
        for _ in range(total):
            if stopped.is_set():
                return
            try:
                conn.sendall(b" ")
            except OSError:
                return
            time.sleep(0.1)

    return behaviour


def test_a_trickled_answer_ends_at_the_request_deadline(raw: RawFactory) -> None:
    # Each byte comes well within read_timeout, so only the whole-answer deadline can end it.
    server = raw(trickling(10_000))  # type: ignore[arg-type]
    api = make_client(server.base_url, read_timeout=5.0)
    api._deadline = 1.0
    with pytest.raises(Timeout) as caught:
        api.me()
    api.close()
    assert "api.request_deadline" in str(caught.value)


def test_a_stop_cuts_an_answer_still_trickling_in(raw: RawFactory) -> None:
    # The deadline is far off; the stop gives the answer being read a short grace, then it is not read further.
    server = raw(trickling(10_000))  # type: ignore[arg-type]
    api = make_client(server.base_url, read_timeout=5.0)
    api._deadline = 60.0
    threading.Timer(0.5, lambda: api._answers.stop(0.2)).start()
    started = time.monotonic()
    with pytest.raises(Timeout) as caught:
        api.me()
    took = time.monotonic() - started
    api.close()
    assert "the service stopped while the answer was still arriving" in str(caught.value)
    assert caught.value.ambiguous is True
    assert took < 3, took


def test_a_huge_answer_is_a_transient_error_read_no_further(raw: RawFactory) -> None:
    size = 64 << 20

    def behaviour(conn: socket.socket, stopped: threading.Event) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode())
        block = b"[" + b" " * 65535
        sent = 0
        try:
            while sent < size and not stopped.is_set():
                conn.sendall(block)
                sent += len(block)
        except OSError:
            return

    server = raw(behaviour)
    api = make_client(server.base_url)
    with pytest.raises(Transient) as caught:
        api.me()
    api.close()
    assert "larger than 8 MiB" in str(caught.value)


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"[1, 2", b"[" * 100_000 + b"]" * 100_000])
def test_a_non_json_200_is_a_classified_error(raw: RawFactory, body: bytes) -> None:
    server = raw(
        lambda conn, _: conn.sendall(
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
    )
    api = make_client(server.base_url)
    with pytest.raises(ProtocolError):
        api.me()
    api.close()


GZIP_HEAD = "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"


def test_a_gzipped_answer_is_decoded(raw: RawFactory) -> None:
    """requests asks for gzip; a server (or proxy) that compresses must be read as the JSON it is."""
    body = gzip.compress(json.dumps({"id": 7, "email": "ops@example.com"}).encode())
    server = raw(lambda conn, _: conn.sendall(GZIP_HEAD.format(length=len(body)).encode() + body))
    api = make_client(server.base_url)
    assert api.me() == {"id": 7, "email": "ops@example.com"}
    api.close()


def test_a_compressed_bomb_is_refused_by_its_decoded_size(raw: RawFactory) -> None:
    body = gzip.compress(b"[" + b" " * (32 << 20) + b"]")
    server = raw(lambda conn, _: conn.sendall(GZIP_HEAD.format(length=len(body)).encode() + body))
    api = make_client(server.base_url)
    with pytest.raises(Transient, match="larger than 8 MiB"):
        api.me()
    api.close()


def test_item_errors_echoing_the_token_are_scrubbed(raw: RawFactory) -> None:
    body = json.dumps([{"extended_id": [f"Authorization: UAT {TOKEN}"]}, {}]).encode()
    server = raw(
        lambda conn, _: conn.sendall(
            f"HTTP/1.1 400 X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
    )
    api = make_client(server.base_url)
    with pytest.raises(Rejected) as caught:
        api.upload_sync("extended_id", [{"extended_id": code(1)}, {"extended_id": code(2)}])
    api.close()
    assert caught.value.item_errors is not None
    assert TOKEN not in repr(caught.value.item_errors)
    assert TOKEN not in repr(caught.value.body)
    assert TOKEN not in str(caught.value)
