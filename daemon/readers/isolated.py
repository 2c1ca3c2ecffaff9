"""Reading a workbook in a reader process (daemon/readers/worker.py) under a memory and a time limit.

open_isolated_table() starts the reader, waits for the sheet's header row and returns a Table whose rows arrive
over the reader's pipe a chunk at a time, while the reader converts the next ones (on two cores, parsing and the
caller's work overlap). A reader that aborts, segfaults, runs out of memory or takes too long is a failed read:
UnreadableFile with a plain reason. The reader is killed when the table is closed before its end, and always
waited for, so none is left behind.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import structlog

import daemon
from daemon.logs import LEVELS, redact
from daemon.readers import wire
from daemon.readers.limits import ReadLimits
from daemon.readers.table import Row, Table, TableInfo, UnreadableFile

log = structlog.get_logger(__name__)

STDERR_KEPT = 4096  # the last bytes of the reader's stderr kept for the log (an abort's message is at the end)
_READ = 1 << 20
_PIPE_SIZE = 1 << 20  # the kernel's default cap for a pipe's buffer: the reader may run this far ahead
_EXIT_WAIT = 10.0  # seconds a reader that sent its last message has to exit before it is killed
_RUST_OOM = re.compile(rb"memory allocation of [0-9]+ bytes failed")  # Rust's words before it aborts


def size_text(megabytes: int) -> str:
    """A memory limit as people say it: "1 GiB", "1.5 GiB", "200 MB"."""
    if megabytes >= 1024 and megabytes % 512 == 0:
        return f"{megabytes / 1024:g} GiB"
    return f"{megabytes} MB"


def memory_reason(name: str, limits: ReadLimits) -> str:
    return (
        f"{name}: the workbook needs more than {size_text(limits.max_reader_memory_mb)} to read "
        "(intake.max_reader_memory_mb); if it is a real table, raise the limit or save it as CSV"
    )


def timeout_reason(name: str, limits: ReadLimits) -> str:
    return (
        f"{name}: reading the workbook took longer than {limits.max_read_seconds:g} s (intake.max_read_seconds); "
        "if it is a real table, raise the limit or save it as CSV"
    )


def exit_reason(name: str, returncode: int, out_of_memory: bool, limits: ReadLimits) -> str:
    """Why a reader that ended without its last message failed, from its exit status and whether Rust said it
    ran out of memory."""
    if returncode == wire.EXIT_MEMORY or out_of_memory:
        return memory_reason(name, limits)  # a MemoryError in Python, or Rust's message before it aborts
    if returncode < 0:
        return (
            f"{name}: the reader crashed (signal {-returncode}); the workbook is corrupt or made to crash "
            "readers: open it in Excel and save it again"
        )
    return f"{name}: the reader stopped with exit status {returncode} before the end of the workbook"


class _StderrTail:
    """A thread that drains the reader's stderr (a full pipe would stop the reader), keeps its last STDERR_KEPT
    bytes for the log (it must not flood it) and notes Rust's out-of-memory message wherever it passes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._tail = b""
        self.out_of_memory = False
        self._thread = threading.Thread(target=self._drain, daemon=True, name="reader-stderr")
        self._thread.start()

    def _drain(self) -> None:
        fd = self._stream.fileno()
        while chunk := os.read(fd, 65536):
            if not self.out_of_memory and _RUST_OOM.search(self._tail[-64:] + chunk):
                self.out_of_memory = True
            self._tail = (self._tail + chunk)[-STDERR_KEPT:]

    def text(self) -> str:
        """The tail so far, decoded and scrubbed of secrets."""
        return redact(self._tail.decode("utf-8", "replace"))

    def close(self) -> None:
        self._thread.join(timeout=_EXIT_WAIT)
        self._stream.close()


def _relay(level: Any, fields: Any) -> None:
    """A log event of the reader's, logged by the service as its own."""
    if not isinstance(fields, dict):
        return
    fields = {str(key): value for key, value in fields.items()}
    event = str(fields.pop("event", "reader_event"))
    logger = structlog.get_logger(str(fields.pop("logger", "") or __name__))
    getattr(logger, level if level in LEVELS else "warning")(event, **fields)


class _Reader:
    """One reader process and the parent's end of its pipe."""

    def __init__(self, path: Path, fmt: str, sheet: str | None, limits: ReadLimits) -> None:
        self.name = path.name
        self.limits = limits
        root = str(Path(daemon.__file__).resolve().parent.parent)  # the same code as this process runs
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        env["MALLOC_ARENA_MAX"] = "2"  # glibc reserves 64 MB of address space per arena: count what is used
        env["RUST_BACKTRACE"] = "0"  # an abort's stderr: its message, not a page of Rust frames
        # fmt: off
        command = [
            sys.executable, "-m", "daemon.readers.worker", "--format", fmt, "--sheet", sheet or "",
            "--memory-mb", str(limits.max_reader_memory_mb), "--parent", str(os.getpid()), "--", str(path),
        ]
        # fmt: on
        self.process = subprocess.Popen(  # noqa: S603 -- our own module, by this interpreter
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C in the service's terminal is the service's to handle
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._stderr = _StderrTail(self.process.stderr)
        self._fd = self.process.stdout.fileno()
        try:
            import fcntl  # noqa: PLC0415 -- POSIX

            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except (ImportError, AttributeError, OSError):
            pass  # the default 64 KB: the reader waits for the service more often
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._buffer = bytearray()
        self._at = 0  # where the next frame starts in the buffer
        self._left = limits.max_read_seconds  # seconds this process may still wait for the reader
        self._closed = False

    def _fill(self) -> bool:
        """Read what the pipe holds, waiting for it within the time left; False at its end."""
        started = time.monotonic()
        ready = self._poll.poll(max(self._left, 0.0) * 1000)
        self._left -= time.monotonic() - started
        if not ready:
            self.close()
            log.warning("reader_timed_out", file=self.name, seconds=self.limits.max_read_seconds)
            raise UnreadableFile(timeout_reason(self.name, self.limits))
        chunk = os.read(self._fd, _READ)
        if self._at:
            del self._buffer[: self._at]
            self._at = 0
        self._buffer += chunk
        return bool(chunk)

    def _frame(self) -> bytes | None:
        """The next frame's payload, or None when the pipe ends first."""
        header = wire.HEADER.size
        while True:
            buffer, at = self._buffer, self._at
            if len(buffer) - at >= header:
                (size,) = wire.HEADER.unpack_from(buffer, at)
                if size > wire.MAX_FRAME:
                    self.close()
                    raise UnreadableFile(f"{self.name}: the reader sent a broken message (of {size} bytes)")
                if len(buffer) - at >= header + size:
                    self._at = at + header + size
                    return bytes(buffer[at + header : self._at])
            if not self._fill():
                return None

    def _failed(self) -> UnreadableFile:
        """The reader ended (or broke its stream) before its last message: why, from how it ended."""
        if self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # past it, close() kills it
                self.process.wait(timeout=_EXIT_WAIT)  # its stream ended: it is exiting
        self.close()
        returncode, stderr = self.process.returncode, self._stderr.text()
        reason = exit_reason(self.name, returncode, self._stderr.out_of_memory, self.limits)
        log.warning("reader_failed", file=self.name, returncode=returncode, reason=reason, stderr=stderr)
        return UnreadableFile(reason)

    def receive(self) -> tuple[Any, ...]:
        """The next message that is not a log event; UnreadableFile when the reader failed or took too long."""
        while True:
            payload = self._frame()
            if payload is None:
                raise self._failed()
            try:
                message = wire.loads(payload)
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
                self.close()
                log.warning("reader_message_broken", file=self.name, error=str(exc), stderr=self._stderr.text())
                raise UnreadableFile(f"{self.name}: the reader sent a broken message ({exc})") from None
            kind = message[0]
            if kind == wire.LOG and len(message) == 3:
                _relay(message[1], message[2])
                continue
            if kind == wire.UNREADABLE:
                self.close()
                raise UnreadableFile(str(message[1]))
            if kind == wire.FAILED:
                self.close()
                log.warning("reader_error", file=self.name, error=str(message[1]), stderr=self._stderr.text())
                raise UnreadableFile(
                    f"{self.name}: the reader failed ({message[1]}); open it in Excel and save it again"
                )
            return message

    def table(self) -> Table:
        """The table once the header arrived."""
        message = self.receive()
        if message[0] != wire.TABLE or len(message) != 3:
            raise self._failed()
        return Table(TableInfo(**message[1]), list(message[2]), self._rows(), self.close)

    def _rows(self) -> Iterator[Row]:
        while True:
            message = self.receive()
            if message[0] == wire.ROWS:
                yield from message[1]
            elif message[0] == wire.END:
                self._end()
                return
            else:
                raise self._failed()

    def _end(self) -> None:
        """After the last message: the reader exits on its own."""
        try:
            self.process.wait(timeout=_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("reader_lingered", file=self.name, seconds=_EXIT_WAIT)
        self.close()

    def close(self) -> None:
        """Kill the reader unless it has exited, wait for it, release the pipes; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._stderr.close()


def open_isolated_table(
    path: Path, fmt: str, sheet: str | None, limits: ReadLimits, check: Callable[[], None] | None = None
) -> Table:
    """Open a workbook in a reader process and read its sheet up to the header row (UnreadableFile as the
    in-process reader raises it, and for a reader that crashed, ran out of memory or took too long).

    `check` (the limits pre-check) runs here while the reader starts and parses; what it raises ends the reader.
    """
    reader = _Reader(path, fmt, sheet, limits)
    try:
        if check is not None:
            check()
        return reader.table()
    except BaseException:
        reader.close()
        raise
