"""Reading an answer's body as a stream: bounded in size and in time, and cut short when the service stops.

read_timeout bounds each socket read, not the answer, so an answer trickled a byte at a time would hold a request
(and a graceful stop) for ever: a watchdog closes the response at api.request_deadline. A stop does not wait for
that either: an answer still arriving STOP_GRACE seconds into a stop is not read further (the API's answers are
small JSON; a trickling one is sent again at the next start, as any answer that did not come).
"""

import threading
import time
from collections.abc import Callable

import requests
import urllib3.exceptions

from daemon.errors import Timeout, Transient

STOP_GRACE = 2.0  # seconds an answer being read when the service stops has left to arrive
_CHUNK = 64 * 1024


class Answers:
    """The answers being read (one per request in flight), so that a stop can cut the ones still arriving."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reading: set[Callable[[], None]] = set()  # each read's `cut`
        self.stopping = False

    def stop(self, grace: float = STOP_GRACE) -> None:
        """The service stops: every answer being read, or read from now on, has at most `grace` seconds left."""
        with self._lock:
            self.stopping, reading = True, list(self._reading)
        for cut in reading:
            _timer(grace, cut)

    def read(self, what: str, response: requests.Response, deadline: float, max_bytes: int) -> bytes:
        """The whole body: at most `max_bytes`, within `deadline` seconds of the request (and the grace of a stop).

        A watchdog closes the response when the time is up, which ends a read blocked on a trickling answer.
        """
        expired = threading.Event()
        why: list[str] = []

        def ending(reason: str) -> Callable[[], None]:
            def end() -> None:
                if not expired.is_set():
                    why.append(reason)
                    expired.set()
                    response.close()

            return end

        cut = ending("stop")
        with self._lock:
            self._reading.add(cut)
            stopping = self.stopping
        started = time.monotonic()
        timers = [_timer(max(0.0, deadline - response.elapsed.total_seconds()), ending("deadline"))]
        if stopping:
            timers.append(_timer(STOP_GRACE, cut))
        try:
            chunks, total = _chunks(what, response, expired, max_bytes)
        finally:
            for timer in timers:
                timer.cancel()
            with self._lock:
                self._reading.discard(cut)
            response.close()
        if expired.is_set():
            seconds = time.monotonic() - started
            if why[:1] == ["stop"]:
                raise Timeout(
                    f"{what}: the service stopped while the answer was still arriving (read {total} bytes in "
                    f"{seconds:.0f} s); not read further, sent again at the next start",
                    ambiguous=True,
                )
            raise Timeout(
                f"{what}: the answer took more than {deadline:g} s in all (api.request_deadline); not read further "
                f"(read {total} bytes in {seconds:.0f} s)",
                ambiguous=True,
            )
        return b"".join(chunks)


def _timer(seconds: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()
    return timer


def _chunks(
    what: str, response: requests.Response, expired: threading.Event, max_bytes: int
) -> tuple[list[bytes], int]:
    """The body's chunks as they arrive, until its end or the watchdog; Transient past `max_bytes`."""
    chunks: list[bytes] = []
    total = 0
    try:
        # read1 returns what has arrived (a trickle cannot hold the loop past the deadline) and decodes a gzip or
        # deflate answer (requests asks for them); the limit counts decoded bytes, so a compressed bomb is refused.
        while not expired.is_set():
            chunk = response.raw.read1(_CHUNK, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise Transient(
                    f"{what}: the answer is larger than {max_bytes // (1 << 20)} MiB; not read further",
                    status=response.status_code,
                    detail="answer too large",
                    ambiguous=True,
                )
            chunks.append(chunk)
    except (OSError, ValueError, AttributeError, urllib3.exceptions.HTTPError, requests.RequestException) as exc:
        if not expired.is_set():
            if isinstance(exc, requests.RequestException):
                raise
            raise requests.exceptions.ChunkedEncodingError(str(exc)) from None
    return chunks, total
