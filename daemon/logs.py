"""Set up structlog (JSON lines off a terminal, readable on one) with redaction of registered secrets."""

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "***"
LEVELS = ("debug", "info", "warning", "error", "critical")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_longest_first: list[str] = []  # the secrets, longest first, so that a secret that contains another is replaced whole
_handler: logging.Handler | None = None  # the stdlib handler we installed, so a second call replaces it


def register_secret(value: str) -> None:
    """Make `value` appear as "***" in every log line from now on (empty values are ignored)."""
    if value.strip():
        with _secrets_lock:
            _secrets.add(value)
            _longest_first[:] = sorted(_secrets, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by "***"."""
    for secret in _longest_first:  # sorted once per secret registered, not per call: reports call this per cell
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def holds_secret(text: str) -> bool:
    """Whether redact would change `text`."""
    return any(secret in text for secret in _longest_first)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact_value(item) for item in value)
    # Anything else is rendered through str()/repr() later: check what that would show.
    text, clean = repr(value), redact(repr(value))
    return clean if clean != text else value


def redact_processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace registered secrets in every value of the event."""
    if not _secrets:
        return event_dict
    # exc_info stays an exception for the renderer; the rendered traceback is redacted by _RedactRendered.
    return {key: value if key == "exc_info" else _redact_value(value) for key, value in event_dict.items()}


class _RedactRendered:
    """Wrap the final renderer so the rendered line is checked too (tracebacks, reprs)."""

    def __init__(self, renderer: Callable[[WrappedLogger, str, EventDict], str | bytes]) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        rendered = self._renderer(logger, method_name, event_dict)
        text = rendered.decode() if isinstance(rendered, bytes) else rendered
        return redact(text)


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that knows the name it was asked for, so events carry `logger`."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else "")


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", "")
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def configure_logging(*, json: bool | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    """Log to `stream` (stdout): JSON lines unless it is a terminal; stdlib loggers at WARNING and up.

    Safe to call again: the last call's settings win and no handler is added twice.
    """
    global _handler  # noqa: PLW0603 -- one process-wide logging setup is the point of this module
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    numeric = logging.getLevelNamesMapping()[level.upper()]
    out = stream if stream is not None else sys.stdout
    as_json = not _isatty(out) if json is None else json

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if as_json:
        # format_exc_info turns exc_info into an "exception" string; the console renderer does its own.
        shared.append(structlog.processors.format_exc_info)
        renderer = _RedactRendered(structlog.processors.JSONRenderer(sort_keys=False))
    else:
        renderer = _RedactRendered(structlog.dev.ConsoleRenderer(colors=_isatty(out)))

    structlog.configure(
        processors=[*shared, redact_processor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_NamedWriteLoggerFactory(out),
        # Not cached: modules bind their logger at import, before this runs, and tests reconfigure.
        cache_logger_on_first_use=False,
    )

    # Other libraries (urllib3, watchdog) log through stdlib logging: same format, WARNING and up.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact_processor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    _handler = handler


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
