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
- Async jobs: constraints combine with AND (a code must match every key, any of a key's values). An
  extended_id or serial_number constraint selects existing codes as a sync upload would; a field constraint
  matches codes whose held data has that value. Each code has one key here, so a job constraining both key
  fields matches nothing. A task's course (durations, failure) is fixed when it is created; its data is applied
  when it completes, with the known_codes and campaign_fields in force at creation; `codes_affected` is the
  number of codes matched (each gets a transaction), null until the task is final, 0 if it failed. The state
  vocabulary and `task_unknown_state` are read when the task is asked for, so tests can flip them mid-task.
- Faults (each drawn per request from the seeded generator): a reset, an injected 5xx and a hang strike before
  the view, so nothing is applied; a hang holds the answer `hang_seconds`, then answers 504 as the API's gateway
  does after ~60 s. `slow_rate` and `applied_then_500_rate` apply the update first. Poison codes make the whole
  upload a 400 (for async too); with `partial_apply`, a sync batch's items before the first poisoned one are
  applied first. Every request makes the same draws (a task's fate and id included), whatever the knobs.
- Self-healing faults: `outage` answers 503 for the request kinds it names, before authentication (the service
  behind the load balancer is down); `retry_after_header` puts one Retry-After on every 429 and 503 (the 429's
  detail keeps the throttle's figure); `task_missing_rate` answers 404 to a poll of an existing task, which goes
  on regardless; a task created under `task_never_finishes` stays pending. EmulatorConfig's docstring says which
  fault strikes which kind of request.
- Time: the emulator reads only the `clock` and `wall` it is given (real time by default; ManualClock for a
  simulation). Over HTTP an answer's delay is slept in real time; InProcessAdapter reports it instead.
"""

import contextlib
import threading

import structlog

from daemon.sandbox.clock import ManualClock
from daemon.sandbox.config import EmulatorConfig, EmulatorStats
from daemon.sandbox.inprocess import InProcessAdapter
from daemon.sandbox.server import Emulator
from daemon.sandbox.tasks import TaskSnapshot, TaskState

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "EmulatorStats",
    "InProcessAdapter",
    "ManualClock",
    "TaskSnapshot",
    "TaskState",
    "serve_forever",
]

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
