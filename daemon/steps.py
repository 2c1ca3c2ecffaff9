"""Big work in small steps: a file's reading and planning are generators that the service loop advances a few
thousand rows at a time, so that answers are recorded and requests leave while a million-row file is taken.

A step generator yields the rows of work it did since it last yielded (0 while it waits for a read that runs off
the loop's thread) and returns its result. The ledger is still written only by the loop's thread: long reads that
write nothing to it (a GROUP BY over a file's rows, writing a file's reports) are handed to an Offload, which runs
them on threads of their own in the service and at once in the simulation (so that its runs stay deterministic)
and in one-shot callers.
"""

from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

T = TypeVar("T")

Steps = Generator[int, None, T]  # yields rows of work done, returns the result


class Offload(Protocol):
    """Where a long read runs while the loop goes on."""

    def __call__(self, fn: Callable[[], T]) -> Future[T]:
        """Start fn(); its future completes with the result."""

    def close(self) -> None:
        """Stop; a read still running is waited for."""


class Inline:
    """Runs each read at once, in the caller's thread: one-shot callers and the simulation."""

    def __call__(self, fn: Callable[[], T]) -> Future[T]:
        """Run fn() now."""
        future: Future[T] = Future()
        try:
            future.set_result(fn())
        except Exception as exc:
            future.set_exception(exc)
        return future

    def close(self) -> None:
        """Nothing runs on its own."""


class ThreadOffload:
    """Two threads for the loop's long reads (SQLite reads run beside the loop's writes in WAL mode): a big file's
    reports being written never hold up the planning read of another."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ledger-read")

    def __call__(self, fn: Callable[[], T]) -> Future[T]:
        """Start fn() on the thread."""
        return self.pool.submit(fn)

    def close(self) -> None:
        """Wait for a running read and stop the thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)


OFFLOAD_ROWS = 50_000  # a read over fewer rows than this takes tens of milliseconds: it runs at once


def started(offload: Offload, fn: Callable[[], T], rows: int) -> Future[T]:
    """fn(), a read over about `rows` rows, started through `offload`; a small one is run at once (its future is
    done on return): a small file is taken, or reported, within one step."""
    return offload(fn) if rows >= OFFLOAD_ROWS else Inline()(fn)


def offloaded(offload: Offload, fn: Callable[[], T], rows: int) -> Steps[T]:
    """Run fn() through `offload` (see started), yielding 0 until it is done; its result (or exception) is the
    return value."""
    future = started(offload, fn, rows)
    while not future.done():
        yield 0
    return future.result()


def run_through(steps: Steps[T]) -> T:
    """Take every step at once and return the result: for callers that are not the service loop."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
