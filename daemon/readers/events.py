"""Log events of the modules that run in the workbook reader process (excel, xlsx_cells).

The reader process starts for every workbook, so what it imports is its start-up time, and it does not load
structlog (a tenth of a second). These modules log through `logger(__name__)`: its events go to the sink the
reader installs (its pipe to the service, which logs them as its own), or to structlog when none is installed
(the modules called in-process, as tests do).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Sink = Callable[[str, dict[str, Any]], None]  # (level, fields: "event", "logger" and the event's own)
_sink: list[Sink] = []


def install(sink: Sink) -> None:
    """Send every event from now on to `sink` (the reader process does, once)."""
    _sink[:] = [sink]


class Logger:
    """The two levels the readers use, with structlog's call shape: log.warning("event", key=value)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, event: str, **fields: Any) -> None:
        _emit(self.name, "debug", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        _emit(self.name, "warning", event, fields)


def logger(name: str) -> Logger:
    return Logger(name)


def _emit(name: str, level: str, event: str, fields: dict[str, Any]) -> None:
    if _sink:
        _sink[0](level, {"event": event, "logger": name, **fields})
        return
    import structlog  # noqa: PLC0415 -- in-process only: the reader process installs a sink instead

    getattr(structlog.get_logger(name), level)(event, **fields)
