"""Injected faults: the seeded draws for one request, and the 400 that a poison code provokes."""

import dataclasses
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.sandbox.config import EmulatorConfig
from daemon.sandbox.responses import INJECTED
from daemon.sandbox.store import ErrorBody, SyncRequest

POISON_MESSAGE = "Invalid code."
POISON_DETAIL = "Invalid code in batch."
_FAIL_STATUSES = sorted(INJECTED)


@dataclass(frozen=True)
class Dice:
    """Which random faults strike one request."""

    fail_status: int  # 0: none; else an injected 500/502/503
    slow: bool
    throttled: bool
    reset: bool
    hang: bool
    applied_then_500: bool
    task_fails: bool  # if this request creates a task, it will end `failed`
    task_missing: bool  # if this request polls an existing task, it is answered 404
    task_id: str  # if this request creates a task, its id


def roll(rng: random.Random, config: EmulatorConfig) -> Dice:
    """Draw every fault for one request; the number of draws never depends on the knobs or on the request, so a
    seed is stable: every request draws a task's fate and id too, whether or not it creates one."""
    fail, fail_pick, slow, throttle, reset, hang, applied, task_fail, task_missing = (rng.random() for _ in range(9))
    task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return Dice(
        fail_status=_FAIL_STATUSES[int(fail_pick * len(_FAIL_STATUSES))] if fail < config.fail_rate else 0,
        slow=slow < config.slow_rate,
        throttled=throttle < config.throttle_rate,
        reset=reset < config.reset_rate,
        hang=hang < config.hang_rate,
        applied_then_500=applied < config.applied_then_500_rate,
        task_fails=task_fail < config.task_fail_rate,
        task_missing=task_missing < config.task_missing_rate,
        task_id=task_id,
    )


def spared(config: EmulatorConfig, dice: Dice) -> tuple[EmulatorConfig, Dice]:
    """The knobs and draws for a request that no fault strikes (`faults_spare_me`: the token check)."""
    calm = dataclasses.replace(
        config, revoked=False, forbidden=False, latency=0.0, trickle_seconds=0.0, outage=frozenset()
    )
    return calm, dataclasses.replace(dice, fail_status=0, slow=False, throttled=False, reset=False, hang=False)


def poisoned_items(request: SyncRequest, poison_codes: frozenset[str]) -> list[int]:
    """Indexes of the items whose key value is a poison code."""
    if not poison_codes:
        return []
    return [n for n, item in enumerate(request.items) if item[request.data_key] in poison_codes]


def sync_poison_body(request: SyncRequest, bad: Sequence[int], config: EmulatorConfig) -> ErrorBody:
    """The 400 body for a poisoned sync batch: per-item errors aligned with the items, or a bare detail."""
    if config.poison_style == "detail":
        return {"detail": POISON_DETAIL}
    bad_set = set(bad)
    items: list[object] = [
        {request.data_key: [POISON_MESSAGE]} if n in bad_set else {} for n in range(len(request.items))
    ]
    return {"items": items}


def async_poison_body(constraints: dict[str, tuple[str, ...]], config: EmulatorConfig) -> ErrorBody | None:
    """The 400 body for an async upload whose constraints name a poison code, or None if none does.

    The per-value errors follow DRF's ListField shape: {"constraints": {"extended_id": {"3": ["..."]}}}.
    """
    if not config.poison_codes:
        return None
    errors: dict[str, object] = {}
    for key in ("extended_id", "serial_number"):
        bad = {
            str(n): [POISON_MESSAGE] for n, value in enumerate(constraints.get(key, ())) if value in config.poison_codes
        }
        if bad:
            errors[key] = bad
    if not errors:
        return None
    return {"detail": POISON_DETAIL} if config.poison_style == "detail" else {"constraints": errors}
