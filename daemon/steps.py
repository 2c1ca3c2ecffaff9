"""Big work in small steps: a file's reading and planning are generators that the service loop advances a few
thousand rows at a time, so that answers are recorded and requests leave while a million-row file is taken.

A step generator yields the rows of work it did since it last yielded (0 while it waits for a read that runs off
the loop's thread) and returns its result. The ledger is still written only by the loop's thread: long reads that
write nothing (a GROUP BY over a file's rows) are handed to an Offload, which runs them on a thread of their own in
the service and at once in the simulation (so that its runs stay deterministic) and in one-shot callers.
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
    """One thread for the loop's long reads (SQLite reads run beside the loop's writes in WAL mode)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-read")

    def __call__(self, fn: Callable[[], T]) -> Future[T]:
        """Start fn() on the thread."""
        return self.pool.submit(fn)

    def close(self) -> None:
        """Wait for a running read and stop the thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)


OFFLOAD_ROWS = 50_000  # a read over fewer rows than this takes tens of milliseconds: it runs at once


def offloaded(offload: Offload, fn: Callable[[], T], rows: int) -> Steps[T]:
    """Run fn(), a read over about `rows` rows, through `offload`, yielding 0 until it is done; its result (or
    exception) is the return value. A small read runs at once: a small file is taken within one step."""
    future = offload(fn) if rows >= OFFLOAD_ROWS else Inline()(fn)
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
