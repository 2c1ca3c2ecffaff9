"""The process that reads one workbook for the service: `python -m daemon.readers.worker ... PATH`.

python-calamine is native code, and a hostile workbook can make it abort the whole process, exhaust memory or
loop. So the service never loads it: for each Excel or ODS file it starts this process (daemon/readers/isolated.py),
which limits its own address space before it imports calamine, reads the sheet and streams the table back over
its stdout (the messages of daemon/readers/wire.py). Whatever happens here, the service sees a failed read.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from daemon.readers import events, wire
from daemon.readers.table import Row, UnreadableFile, cannot_open

CHUNK_ROWS = 1000  # rows per message: the pickles cost little, and the service's garbage collector too (at
# 5,000 rows a chunk, unpickling costs it four times as much)
CHUNK_CHARS = 4 << 20  # and fewer when their cells hold this much text (the service holds one chunk at a time)
_PR_SET_PDEATHSIG = 1


class _Pipe:
    """The protocol's end of the old stdout: whole frames, one writer at a time (the xlsx scan thread logs too)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        data = memoryview(wire.frame(message))
        with self._lock:
            while data:
                data = data[os.write(self._fd, data) :]


def _forward(pipe: _Pipe) -> events.Sink:
    """The readers' log events, sent to the service (which logs them as its own)."""

    def send(level: str, fields: dict[str, Any]) -> None:
        plain = {
            key: value if value is None or isinstance(value, str | int | float | bool) else str(value)
            for key, value in fields.items()
        }
        pipe.send((wire.LOG, level, plain))

    return send


def _take_stdout() -> int:
    """The protocol keeps stdout's pipe for itself; whatever else writes to stdout goes to stderr instead."""
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return fd


def _detach(parent: int) -> None:
    """The service alone ends this process: no SIGINT or SIGTERM (a stop signal must not fail the file being
    read), and on Linux death with the service (a SIGKILLed service leaves no reader behind)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes  # noqa: PLC0415 -- Linux only

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)  # the service ended before the line above took effect


def limit_memory(megabytes: int) -> None:
    """Cap this process's address space (RLIMIT_AS) and write no core dump (an abort is expected here)."""
    limit = megabytes << 20
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _stream(pipe: _Pipe, rows: Iterator[Row]) -> None:
    """The data rows, a chunk per message."""
    chunk: list[Row] = []
    chars = 0
    for row in rows:
        chunk.append(row)
        chars += sum(map(len, row[1]))
        if len(chunk) >= CHUNK_ROWS or chars >= CHUNK_CHARS:
            pipe.send((wire.ROWS, chunk))
            chunk, chars = [], 0
    if chunk:
        pipe.send((wire.ROWS, chunk))


def _read(pipe: _Pipe, path: Path, fmt: str, sheet: str | None) -> None:
    """Open the workbook and send its table, or why it cannot be read."""
    try:
        from daemon.readers.excel import open_excel_table  # noqa: PLC0415 -- calamine only under the limit

        with open_excel_table(path, fmt, sheet) as table:
            pipe.send((wire.TABLE, asdict(table.info), table.headers))
            _stream(pipe, table.rows())
        pipe.send((wire.END,))
    except UnreadableFile as exc:
        pipe.send((wire.UNREADABLE, str(exc)))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        pipe.send((wire.UNREADABLE, str(cannot_open(path.name, exc))))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m daemon.readers.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, help="xlsx, xlsm, xls or ods")
    parser.add_argument("--sheet", default="", help="the sheet to read ('': the first visible one)")
    parser.add_argument("--memory-mb", type=int, required=True, help="the address-space limit")
    parser.add_argument("--parent", type=int, required=True, help="the service's process id")
    parser.add_argument("path", type=Path)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Read the workbook, send its table to stdout, exit (os._exit: nothing of calamine's is worth freeing)."""
    args = _parser().parse_args(argv)
    pipe = _Pipe(_take_stdout())
    _detach(args.parent)
    limit_memory(args.memory_mb)
    events.install(_forward(pipe))
    try:
        _read(pipe, args.path, args.format, args.sheet or None)
    except MemoryError:
        os._exit(wire.EXIT_MEMORY)  # a message could need memory there is none of; the status says it
    except BrokenPipeError:
        os._exit(0)  # the service stopped reading (and kills this process)
    except BaseException as exc:  # a Rust panic arrives as a BaseException: a failed read too
        try:
            pipe.send((wire.FAILED, f"{type(exc).__name__}: {exc}"))
        except MemoryError:
            os._exit(wire.EXIT_MEMORY)
        except BrokenPipeError:
            pass
    os._exit(0)


if __name__ == "__main__":
    main()
