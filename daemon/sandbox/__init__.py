"""The built-in Scantrust API emulator: `scm-daemon sandbox`, `run --sandbox`, and the tests' fixture.

It follows /work/shared/API.md for the sync path. Decisions where the API is not documented:
- A malformed code (an extended_id that is not 8..100 of [A-Za-z0-9_-], a serial_number longer than 100) is
  treated like an unknown code: accepted and absent from the answer's `items`, because the API looks codes up
  rather than parsing them. A missing or blank key field, or a value that is not a string, is a 400 for the
  whole batch, and nothing of that batch is applied.
- `known_codes` applies to the key value of either data_key; extended_ids and serial_numbers are separate
  namespaces.
- An empty string clears a field. `total_updates` counts changed fields, `codes_affected` changed codes.
- A request is processed when it arrives and answered after `latency` (+ `slow_seconds`), so a client that
  times out during a slow answer leaves an applied update behind: the ambiguous case the daemon must survive.
"""

import contextlib
import threading

import structlog

from daemon.sandbox.server import Emulator, EmulatorConfig, EmulatorStats

__all__ = ["Emulator", "EmulatorConfig", "EmulatorStats", "serve_forever"]

log = structlog.get_logger(__name__)


def serve_forever(port: int, config: EmulatorConfig, *, stop: threading.Event | None = None) -> None:
    """Serve the emulator on 127.0.0.1:port until KeyboardInterrupt or until `stop` is set."""
    stop = stop or threading.Event()
    emulator = Emulator(config)
    emulator.start(port=port)
    with emulator:
        log.info("sandbox_listening", url=emulator.base_url, rate_limit=config.rate_limit)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        log.info("sandbox_stopped", url=emulator.base_url, requests=emulator.stats().total_requests)
