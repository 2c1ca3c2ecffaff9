"""Progress of each active file: rows final / total, rows per second over the last minute, an ETA.

The decisions (the pace, the ETA, when to log) are pure functions; `ProgressTracker` feeds them from the ledger
with a count of the open rows of each active file and logs `file_progress` events.
"""

import json
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from daemon.clocktext import clock_time
from daemon.ledger import FileInfo, Ledger
from daemon.states import FileState, RowStatus
from daemon.steps import OFFLOAD_ROWS, Inline, Offload, started

log = structlog.get_logger(__name__)

WINDOW_SECONDS = 60.0  # the pace is measured over this much of the recent past
PACE_META = "progress_pace"  # ledger meta: the service's last pace and pause per active file, for `status`
LOG_EVERY_SECONDS = 10.0  # at most one file_progress event per file this often, besides each 10 % step


@dataclass(frozen=True)
class Progress:
    """Where one file stands."""

    file_id: int
    name: str
    final: int
    total: int
    rate: float | None  # rows per second over the last minute; None until there are two samples
    eta: float | None  # epoch seconds when the file should be done at the current pace; None when unknown
    paused: str | None = None  # why no ETA: uploads are paused

    @property
    def percent(self) -> int:
        """Whole per cent of rows final (100 for a file with no rows)."""
        return percent(self.final, self.total)

    def text(self) -> str:
        """'orders.csv: 45,000 / 120,000 rows (37 %), ETA 14:05' (or 'paused: ...' instead of the ETA)."""
        return line(self.name, self.final, self.total, pace=None, eta_at=self.eta, paused=self.paused, now=time.time())

    def as_dict(self) -> dict[str, object]:
        """For `status --json` and the log."""
        return {
            "file": self.name,
            "rows_final": self.final,
            "rows_total": self.total,
            "percent": self.percent,
            "rows_per_second": None if self.rate is None else round(self.rate, 1),
            "eta": None if self.eta is None else datetime.fromtimestamp(self.eta, UTC).isoformat(timespec="seconds"),
            "paused": self.paused,
        }


def line(
    name: str, final: int, total: int, *, pace: float | None, eta_at: float | None, paused: str | None, now: float
) -> str:
    """A file's progress for a person: 'orders.csv: 45,000 / 120,000 rows (37 %), 770 rows/s, ETA 14:05' (the pace
    when given), or 'paused: why' instead of pace and ETA. The one wording of STATUS= and `status`."""
    head = f"{name}: {final:,} / {total:,} rows ({percent(final, total)} %)"
    if paused:
        return f"{head}, paused: {paused}"
    rate_text = f", {pace:,.0f} rows/s" if pace else ""
    return head + rate_text + (f", ETA {clock_time(eta_at, now, seconds=False)}" if eta_at is not None else "")


def percent(final: int, total: int) -> int:
    """Whole per cent done, never over 100; an empty file is done."""
    if total <= 0:
        return 100
    return min(100, final * 100 // total)


def rate(samples: list[tuple[float, int]], now: float, window: float = WINDOW_SECONDS) -> float | None:
    """Rows per second between the oldest sample within `window` of `now` and the newest; None if unknown."""
    recent = [s for s in samples if now - s[0] <= window]
    if len(recent) < 2:
        return None
    (t0, n0), (t1, n1) = recent[0], recent[-1]
    if t1 <= t0:
        return None
    return max(0.0, (n1 - n0) / (t1 - t0))


def eta(final: int, total: int, pace: float | None, now: float) -> float | None:
    """When the remaining rows are done at `pace` rows per second; None when there is no pace."""
    if final >= total:
        return now
    if pace is None or pace <= 0:
        return None
    return now + (total - final) / pace


def should_log(last_at: float | None, last_percent: int | None, now: float, current: int) -> bool:
    """Log when nothing was logged yet, at each new 10 % step, or when LOG_EVERY_SECONDS have passed."""
    if last_at is None or last_percent is None:
        return True
    if current // 10 > last_percent // 10:
        return True
    return now - last_at >= LOG_EVERY_SECONDS


@dataclass
class _Track:
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=120))
    logged_at: float | None = None
    logged_percent: int | None = None


class ProgressTracker:
    """Samples each active file's counts and logs `file_progress` when due.

    A file's row total is counted once; each sample counts only its open rows (from the partial index of open
    rows), so a sample costs the rows still to go, never the rows already uploaded. For big files that is still a
    second or two for millions of open rows: the counts are then read off the loop's thread (`offload`) and taken in
    by a later call once they are done.
    """

    def __init__(self, ledger: Ledger, offload: Offload | None = None) -> None:
        self.ledger = ledger
        self.offload = offload or Inline()
        self._tracks: dict[int, _Track] = {}
        self._totals: dict[int, int] = {}
        self._counting: tuple[float, str | None, Future[list[tuple[FileInfo, int, int]]]] | None = None
        self.current: list[Progress] = []

    def current_files(self) -> list[Progress]:
        """The active files as last sampled (for the terminal's bars)."""
        return self.current

    @property
    def counting(self) -> bool:
        """Whether a sample's counts are being read off the loop's thread (collect() takes them in)."""
        return self._counting is not None

    def sample(self, now: float, *, paused: str | None = None) -> list[Progress]:
        """Measure every active file at epoch second `now` (unless a measure is still being counted), and take it
        in at once when it is done: small files at once, big ones by a later collect()."""
        if self._counting is None:
            active = self.ledger.files([FileState.ACTIVE])
            totals = dict(self._totals)
            rows = sum(totals.get(f.id, OFFLOAD_ROWS) for f in active)
            self._counting = (now, paused, started(self.offload, lambda: self._count(active, totals), rows))
        return self.collect()

    def _count(self, active: list[FileInfo], totals: dict[int, int]) -> list[tuple[FileInfo, int, int]]:
        """Each file with its row total and its rows final; reads only (it may run off the loop's thread)."""
        counted = []
        for f in active:
            total = totals.get(f.id)
            if total is None:
                total = self.ledger.row_total(f.id)
            counted.append((f, total, total - self.ledger.open_row_count(f.id)))
        return counted

    def collect(self) -> list[Progress]:
        """Take in the sample being counted, if it is done; returns the files as last sampled."""
        if self._counting is None or not self._counting[2].done():
            return self.current
        now, paused, future = self._counting
        self._counting = None
        counted = future.result()
        seen: list[Progress] = []
        for f, total, final in counted:
            self._totals[f.id] = total
            track = self._tracks.setdefault(f.id, _Track())
            track.samples.append((now, final))
            pace = rate(list(track.samples), now)
            p = Progress(f.id, f.name, final, total, pace, None if paused else eta(final, total, pace, now), paused)
            if should_log(track.logged_at, track.logged_percent, now, p.percent):
                track.logged_at, track.logged_percent = now, p.percent
                log.info("file_progress", **p.as_dict())
            seen.append(p)
        for gone in set(self._tracks) - {f.id for f, _, _ in counted}:
            del self._tracks[gone]
            self._totals.pop(gone, None)
        if seen or self.current:  # `status` is another process: it reads the pace the service measured here
            paces = {str(p.file_id): {"rate": p.rate, "paused": p.paused, "at": now} for p in seen}
            self.ledger.set_meta(PACE_META, json.dumps(paces) if paces else None)
        self.current = seen
        return seen


def snapshot(ledger: Ledger, now: float, counts: Mapping[int, Mapping[str, int]] | None = None) -> list[Progress]:
    """Progress of every active file, for `status`: the counts from the ledger (or `counts`, a file's rows by
    status, when the caller has counted them already), the pace (and any pause) as the service last measured it,
    if it did within the last minute."""
    try:
        paces: dict[str, dict[str, Any]] = json.loads(ledger.get_meta(PACE_META) or "{}")
    except ValueError:
        paces = {}
    out: list[Progress] = []
    for f in ledger.files([FileState.ACTIVE]):
        counted = None if counts is None else counts.get(f.id)
        if counted is None:
            total = ledger.row_total(f.id)
            final = total - ledger.open_row_count(f.id)
        else:
            total = sum(counted.values())
            final = total - counted.get(RowStatus.PENDING, 0) - counted.get(RowStatus.QUEUED, 0)
        measured = paces.get(str(f.id), {})
        fresh = isinstance(measured.get("at"), int | float) and now - measured["at"] <= WINDOW_SECONDS
        pace = measured.get("rate") if fresh and isinstance(measured.get("rate"), int | float) else None
        paused = measured.get("paused") if fresh and isinstance(measured.get("paused"), str) else None
        out.append(Progress(f.id, f.name, final, total, pace, None if paused else eta(final, total, pace, now), paused))
    return out
