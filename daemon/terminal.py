"""A live progress bar for a person at a terminal (`run --once`, `validate`); nothing at all anywhere else.

The bar is drawn on stderr with rich. While it is shown, log lines go through the same console, so they appear
above the bar instead of tearing it. Not a terminal (cron, systemd, a pipe): no bar, the log lines as always.
"""

import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO, cast

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from daemon import progress as file_progress
from daemon.logs import configure_logging

REFRESH_SECONDS = 0.5


class _ConsoleLines(io.TextIOBase):
    """A text stream that prints whole lines through the live console (above the bar)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._console.print(Text.from_ansi(line), soft_wrap=True, highlight=False)
        return len(text)

    def isatty(self) -> bool:
        return True  # the console renders for a terminal: the log keeps its readable form


def on_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def _live(
    console: Console, columns: tuple[ProgressColumn, ...], *, log_level: str, log_to: TextIO
) -> Iterator[Progress]:
    """The bar for the block; the log goes through its console meanwhile and back to `log_to` after."""
    bar = Progress(*columns, console=console, transient=False, refresh_per_second=4)
    with bar:
        configure_logging(level=log_level, stream=cast(TextIO, _ConsoleLines(console)))
        try:
            yield bar
        finally:
            configure_logging(level=log_level, stream=log_to)


@contextmanager
def file_bars(
    current: Callable[[], list[file_progress.Progress]], *, stream: TextIO, log_level: str, log_to: TextIO
) -> Iterator[None]:
    """While the block runs (`run --once`): a bar per active file, rows final of total, from `current()`
    (the service's last progress sample, read from this thread: a list it replaces, never changes).
    Only when both the bar's stream and the log's are a terminal: a log redirected to a file stays there."""
    if not (on_terminal(stream) and on_terminal(log_to)):
        yield
        return
    console = Console(file=stream)
    columns: tuple[ProgressColumn, ...] = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.percentage:>3.0f} %"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    done = threading.Event()
    with _live(console, columns, log_level=log_level, log_to=log_to) as bar:
        tasks: dict[int, tuple[TaskID, int | None]] = {}  # file id -> its bar and rows in all

        def show() -> None:
            active = current()
            for p in active:
                total = p.total or None
                task = tasks[p.file_id][0] if p.file_id in tasks else bar.add_task(p.name, total=total, note="")
                tasks[p.file_id] = (task, total)
                bar.update(task, completed=p.final, total=total, note=f"paused: {p.paused}" if p.paused else "")
            for file_id in tasks.keys() - {p.file_id for p in active}:  # final: no longer at work
                task, total = tasks.pop(file_id)
                bar.update(task, completed=total, note="done")

        def follow() -> None:
            while not done.wait(REFRESH_SECONDS):
                show()

        follower = threading.Thread(target=follow, name="progress-bar", daemon=True)
        follower.start()
        try:
            yield
        finally:
            done.set()
            follower.join(timeout=5)
        show()  # the end: files final since the last look are shown done


@contextmanager
def rows_bar(name: str, *, stream: TextIO, log_level: str, log_to: TextIO) -> Iterator[Callable[[int], None]]:
    """While a file is read (`validate`): rows read so far and the pace; yields the function to report them."""
    if not on_terminal(stream):
        yield lambda _rows: None
        return
    console = Console(file=stream)
    columns: tuple[ProgressColumn, ...] = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
    )
    with _live(console, columns, log_level=log_level, log_to=log_to) as bar:
        task = bar.add_task(f"reading {name}", total=None)
        yield lambda rows: bar.update(task, completed=rows)
        bar.update(task, total=bar.tasks[0].completed or 1, completed=bar.tasks[0].completed or 1)
