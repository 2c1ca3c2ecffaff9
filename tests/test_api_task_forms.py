"""Tolerant task polling: either path form, a redirect on the same origin, never the token elsewhere, key spellings."""

import http.server
import threading
from collections.abc import Iterator

import pytest
import requests
from pydantic import SecretStr

from daemon.api import MAX_REDIRECTS, NotFound, ProtocolError, ScantrustClient, TaskState, task_state
from daemon.sandbox import Emulator

TOKEN = "sandbox-token"


def make_client(base_url: str) -> ScantrustClient:
    return ScantrustClient(base_url, SecretStr(TOKEN), connect_timeout=2.0, read_timeout=5.0)


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    emulator.configure(task_pending_seconds=0, task_running_seconds=0)
    return emulator


@pytest.fixture
def client(emu: Emulator) -> Iterator[ScantrustClient]:
    api = make_client(emu.base_url)
    yield api
    api.close()


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request's path and headers; answers with a redirect to `redirect_to`, or a task."""

    seen: list[tuple[str, dict[str, str]]]
    redirect_to: str | None

    def do_GET(self) -> None:
        self.seen.append((self.path, dict(self.headers)))
        if self.redirect_to is not None:
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"id": "t", "state": "complete"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[tuple[str, type[_Recorder]]]:
    """A second plain HTTP server on another loopback port: (its base URL, its handler class with `seen`)."""
    handler = type("Handler", (_Recorder,), {"seen": [], "redirect_to": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def new_task(emu: Emulator, client: ScantrustClient) -> str:
    return client.upload_async("extended_id", ["CODE00000001"], {"lot": "7"}, "r")


def task_requests(emu: Emulator) -> int:
    return emu.stats().requests[("GET", "scm_task")]


@pytest.mark.parametrize("form", ["slash", "bare", "both"])
def test_the_task_is_read_whichever_path_form_the_server_serves(
    emu: Emulator, client: ScantrustClient, form: str
) -> None:
    emu.configure(task_path=form)
    task_id = new_task(emu, client)
    assert client.task(task_id).state is TaskState.COMPLETE
    assert task_requests(emu) == (2 if form == "bare" else 1)  # the slash form first, the bare one on its 404


def test_the_form_that_answered_is_asked_first_from_then_on(emu: Emulator, client: ScantrustClient) -> None:
    emu.configure(task_path="bare")
    first, second = new_task(emu, client), new_task(emu, client)
    client.task(first)
    before = task_requests(emu)
    assert client.task(second).state is TaskState.COMPLETE
    assert task_requests(emu) == before + 1


def test_an_unknown_task_is_still_not_found_after_both_forms(emu: Emulator, client: ScantrustClient) -> None:
    with pytest.raises(NotFound):
        client.task("no-such-task")
    assert task_requests(emu) == 2


@pytest.mark.parametrize("served", ["slash", "bare"])
def test_a_redirect_to_the_other_form_on_the_same_server_is_followed(
    emu: Emulator, client: ScantrustClient, served: str
) -> None:
    emu.configure(task_path=served, task_redirect=True)
    task_id = new_task(emu, client)
    assert client.task(task_id).state is TaskState.COMPLETE
    assert task_requests(emu) == (2 if served == "bare" else 1)


def test_a_redirect_to_another_port_is_refused_and_the_token_never_leaves(
    emu: Emulator, client: ScantrustClient, other_server: tuple[str, type[_Recorder]]
) -> None:
    other_url, handler = other_server
    emu.configure(task_path="bare", task_redirect=True, task_redirect_origin=other_url)
    task_id = new_task(emu, client)
    with pytest.raises(ProtocolError) as caught:
        client.task(task_id)
    assert other_url in str(caught.value)
    assert "not followed, so the token is not sent there" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert handler.seen == []  # not even a request without the header
    # The second server itself works: the refusal above was the client's choice.
    assert requests.get(other_url + "/x", timeout=5).status_code == 200
    assert [h.get("Authorization") for _, h in handler.seen] == [None]


def test_a_redirect_loop_on_the_same_origin_stops_after_a_few_hops(
    other_server: tuple[str, type[_Recorder]],
) -> None:
    other_url, handler = other_server
    handler.redirect_to = "/api/v2/scm/tasks/t/"
    api = make_client(other_url)
    try:
        with pytest.raises(ProtocolError, match="redirects"):
            api.task("t")
    finally:
        api.close()
    assert len(handler.seen) == MAX_REDIRECTS + 1
    assert all(h.get("Authorization") == f"UAT {TOKEN}" for _, h in handler.seen)  # its own origin: sent


@pytest.mark.parametrize("state_key", ["state", "status"])
@pytest.mark.parametrize("style", ["snake", "camel"])
def test_the_task_json_is_read_in_either_spelling(
    emu: Emulator, client: ScantrustClient, state_key: str, style: str
) -> None:
    emu.configure(task_state_key=state_key, task_key_style=style)
    task_id = new_task(emu, client)
    status = client.task(task_id)
    assert (status.state, status.raw_state, status.codes_affected) == (TaskState.COMPLETE, "complete", 1)
    assert status.created_at is not None
    assert status.completed_at is not None


@pytest.mark.parametrize("word", ["cancelled", "canceled", "Aborted", "revoked", "expired", "error", "failed"])
def test_words_that_plainly_mean_the_end_are_final_failures(word: str) -> None:
    assert task_state(word) is TaskState.FAILED


@pytest.mark.parametrize("word", ["queued", "on_hold", "scheduled", ""])
def test_other_unknown_words_are_not_finished(word: str) -> None:
    assert task_state(word) is TaskState.UNKNOWN


def test_an_unknown_emulator_choice_is_refused(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="task_path"):
        emu.configure(task_path="trailing")
