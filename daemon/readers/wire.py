"""The messages between the service and its workbook reader process (daemon/readers/worker.py).

Each message is a tuple `(kind, ...)`, pickled and framed by its length (4 bytes, big-endian), written to the
reader's stdout. The service unpickles them with a restricted unpickler: builtin values and the three cell types
only, since the reader has been parsing a file anyone could have dropped in the inbox.

    (TABLE, info as a dict, headers)     first: how the sheet was read (TableInfo's fields) and its header row
    (ROWS, [(row number, cells), ...])   the data rows, in order, a chunk at a time
    (END,)                               every row was sent
    (UNREADABLE, message)                the file is not a table (UnreadableFile); nothing follows
    (FAILED, "Type: text")               any other exception in the reader; nothing follows
    (LOG, level, fields)                 a log event of the reader's, for the service's log; at any time

A MemoryError ends the reader with the exit status EXIT_MEMORY (writing a message may need memory it has not got).
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

TABLE = "table"
ROWS = "rows"
END = "end"
UNREADABLE = "unreadable"
FAILED = "failed"
LOG = "log"
EXIT_MEMORY = 3

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 30  # a longer length is a broken stream, not a message
_ALLOWED = frozenset(("daemon.readers.table", name) for name in ("Number", "Imprecise", "CellError"))


def frame(message: tuple[Any, ...]) -> bytes:
    """A message as written to the pipe: its length, then its pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"the reader sent a {module}.{name}, which is not a message part")
        return super().find_class(module, name)


def loads(payload: bytes) -> tuple[Any, ...]:
    """One message from its pickle (pickle.UnpicklingError for anything but a tuple of values and cells)."""
    message = _Unpickler(io.BytesIO(payload)).load()
    if not isinstance(message, tuple) or not message:
        raise pickle.UnpicklingError("the reader sent something that is not a message")
    return message
