"""The outbox dashboard, `outbox/index.html`: what the ledger holds, as one self-contained page for the share.

`gather()` reads the ledger (files table only), `render()` turns the picture into HTML (pure), `write_index()`
writes it atomically, and `Dashboard.tick()` decides when it is due. The page has no script at all and a
Content-Security-Policy that forbids fetching anything, so it opens from `file://` on a Windows share, has no
console errors by construction, and a hostile file name stays text: every value goes through `_e()`.
"""

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from daemon.chart import DAYS as CHART_DAYS
from daemon.chart import SERIES, outcome_chart
from daemon.ledger import UPLOADS_PAUSED, Clock, FileInfo, FileLine, Ledger
from daemon.logs import redact
from daemon.progress import Progress
from daemon.reporter import atomic_write, names_for
from daemon.states import ERROR_ROW_STATUSES, OPEN_FILE_STATES, FileState, Outcome
from daemon.uploader import Pause

INDEX_NAME = "index.html"
REFRESH_SECONDS = 30.0  # rewritten this often while files are at work; the page reloads itself as often
MIN_GAP_SECONDS = 1.0  # changes in quick succession (many small files) are written together, at most this often
RECENT_FILES = 200
OPEN_STATES = OPEN_FILE_STATES

# The one home of how a file's status looks: the word (so the page reads in black and white) and its colour class.
STATUS_LOOK: dict[str, tuple[str, str]] = {
    str(Outcome.COMPLETED): ("completed", "ok"),
    str(Outcome.COMPLETED_WITH_ERRORS): ("completed with errors", "warn"),
    str(Outcome.FAILED): ("failed", "bad"),
    str(Outcome.DUPLICATE): ("duplicate", "dup"),
    str(FileState.RECEIVED): ("reading", "busy"),
    str(FileState.ACTIVE): ("uploading", "busy"),
    str(FileState.REPORTING): ("writing reports", "busy"),
    "paused": ("paused", "warn"),  # an active file while uploads are paused
}


@dataclass(frozen=True)
class Banner:
    """Why uploads are paused, and what to do about it."""

    cause: str  # token | configuration | api_down
    title: str
    detail: str
    action: str


def banner_for(pause: Pause | None, api_down: bool, operator_text: str | None) -> Banner | None:
    """The banner for the uploader's state; `operator_text` is the ledger's UPLOADS_PAUSED note, if any."""
    if pause is not None and pause.cause == "token":
        return Banner(
            "token",
            "Uploads are paused: Scantrust refused the API token",
            operator_text or pause.reason,
            "Ask the administrator to renew the Scantrust API token. Files dropped meanwhile are kept and "
            "uploaded once it is valid again; do not drop them twice.",
        )
    if pause is not None:
        return Banner(
            "configuration",
            "Uploads are paused: a configuration problem",
            operator_text or pause.reason,
            "Ask the administrator to fix the configuration (api.base_url) and reload the service. "
            "Files wait in the queue; nothing is lost.",
        )
    if api_down:
        return Banner(
            "api_down",
            "Uploads are paused for a while: the Scantrust API is not answering",
            operator_text or "repeated failed requests",
            "Nothing to do: sending resumes by itself. If this lasts more than an hour, check the network "
            "and Scantrust's status page.",
        )
    return None


@dataclass(frozen=True)
class Active:
    """A file at work: its ledger record and, once sampled, its progress."""

    file: FileInfo
    progress: Progress | None


@dataclass(frozen=True)
class Page:
    """Everything the page shows, read at one moment."""

    generated_at: datetime
    running: bool  # False: written as the service stopped
    banner: Banner | None
    active: Sequence[Active]
    files: Sequence[FileLine]
    days: dict[str, dict[str, int]]  # YYYY-MM-DD -> rows by status


def gather(
    ledger: Ledger,
    now: datetime,
    *,
    pause: Pause | None,
    api_down: bool,
    progress: Sequence[Progress],
    running: bool = True,
) -> Page:
    """Read the picture from the ledger: a handful of queries over the files table, never over rows."""
    note = ledger.get_meta(UPLOADS_PAUSED) if pause is not None or api_down else None
    by_id = {p.file_id: p for p in progress}
    active = [Active(f, by_id.get(f.id)) for f in ledger.files(OPEN_STATES)]
    first_day = (now.astimezone(UTC) - timedelta(days=CHART_DAYS - 1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return Page(
        generated_at=now,
        running=running,
        banner=banner_for(pause, api_down, note),
        active=active,
        files=ledger.recent_files(RECENT_FILES),
        days=ledger.daily_outcomes(first_day.isoformat(timespec="milliseconds")),
    )


def write_index(outbox: Path, text: str) -> None:
    """Write the page atomically (a temporary name in the outbox, then a rename), like every report."""
    with atomic_write(outbox / INDEX_NAME, encoding="utf-8") as f:
        f.write(text)


def due(*, pending: bool, now: float, next_at: float, last_at: float) -> bool:
    """Whether the page must be written now: something changed (or the last write failed) and the last write is
    MIN_GAP_SECONDS old, or its periodic time came."""
    return (pending and now - last_at >= MIN_GAP_SECONDS) or now >= next_at


class Dashboard:
    """Writes the page when a file starts or finishes, when the pause state changes, and every REFRESH_SECONDS
    while files are at work. A failed write raises (the loop's error boundary logs it) and stays due."""

    def __init__(self, ledger: Ledger, outbox: Path, *, clock: Clock) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.clock = clock
        self._pending = True  # written on the first tick
        self._next_at = math.inf
        self._last_at = -math.inf
        self._shown: tuple[Pause | None, bool, bool] | None = None
        self._sampled: tuple[tuple[int, bool], ...] = ()

    def tick(
        self,
        now: float,
        files_changed: bool,
        pause: Pause | None,
        api_down: bool,
        progress: Sequence[Progress],
        *,
        running: bool = True,
    ) -> int:
        """Write the page if due (`now` on the monotonic clock); returns 1 when it was written."""
        signals = (pause, api_down, running)
        # A file's first progress sample (and the first since a pause) comes seconds after the change: shown soon.
        sampled = tuple((p.file_id, p.paused is not None) for p in progress)
        self._pending = self._pending or files_changed or sampled != self._sampled
        urgent = signals != self._shown  # a pause, its end, a stop: written at once (run --once may end next)
        if not (urgent or due(pending=self._pending, now=now, next_at=self._next_at, last_at=self._last_at)):
            return 0
        page = gather(self.ledger, self.clock(), pause=pause, api_down=api_down, progress=progress, running=running)
        write_index(self.outbox, render(page))
        self._pending, self._shown, self._sampled, self._last_at = False, signals, sampled, now
        self._next_at = now + REFRESH_SECONDS if page.active and running else math.inf
        return 1


# --- rendering (pure) ----------------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Any value as HTML text: secrets scrubbed, every special character escaped (quotes too, for attributes)."""
    return html.escape(redact("" if value is None else str(value)), quote=True)


def _href(name: str) -> str:
    """A relative link to a file beside the page: percent-encoded (spaces, '#', '?'), then escaped."""
    return _e(quote(name, safe=""))


def _when(iso: str | None) -> str:
    """'2026-12-02 14:05' from the ledger's ISO time."""
    return "" if not iso else iso[:16].replace("T", " ")


def status_key(f: FileLine | FileInfo) -> str:
    """The STATUS_LOOK key of a file: its outcome once done, else its state."""
    return str(f.outcome) if f.state is FileState.DONE and f.outcome else str(f.state)


def _badge(key: str, paused: bool) -> str:
    if paused and key == str(FileState.ACTIVE):
        key = "paused"
    word, css = STATUS_LOOK.get(key, (key, "busy"))
    return f'<span class="badge {css}">{_e(word)}</span>'


def _eta(p: Progress, now: datetime, held: bool) -> str:
    """The ETA, or why there is none; `held`: a banner or the stopped note above says why nothing moves."""
    if held:
        return "paused: see above"
    if p.paused:
        return f"paused: {p.paused}"
    if p.final >= p.total:
        return "all rows final"
    if p.eta is None:
        return "ETA: measuring the pace"
    at = datetime.fromtimestamp(p.eta, UTC)
    return "ETA " + at.strftime("%H:%M UTC" if at.date() == now.astimezone(UTC).date() else "%Y-%m-%d %H:%M UTC")


def _active_item(a: Active, now: datetime, banner: bool) -> str:
    p = a.progress
    name = f'<b class="name">{_e(a.file.name)}</b>'
    head = f'<li data-file-id="{a.file.id}"><div class="line">{name} {_badge(status_key(a.file), banner)}'
    if p is None:
        what = {FileState.RECEIVED: "reading the file", FileState.REPORTING: "writing its reports"}.get(
            a.file.state, "measuring its progress"
        )
        return f'{head} <span class="muted">{_e(what)}</span></div></li>'
    rate = "" if p.rate is None else f", {p.rate:,.0f} rows/s"
    return (
        f'{head} <span class="figures" data-final="{p.final}" data-total="{p.total}">{p.final:,} / {p.total:,} rows '
        f'({p.percent} %){_e(rate)}</span> <span class="eta">{_e(_eta(p, now, banner))}</span></div>'
        f'<div class="bar" role="progressbar" aria-valuenow="{p.percent}" aria-valuemin="0" aria-valuemax="100">'
        f'<span style="width:{p.percent}%"></span></div></li>'
    )


def _reports(f: FileLine) -> str:
    if f.state is not FileState.DONE or not f.report_base:
        return ""
    names = names_for(f.report_base)
    links = [(names.summary, "summary"), (names.report, "rows")]
    if any(f.counts.get(str(s)) for s in ERROR_ROW_STATUSES):
        links.append((names.rejected, "rejected rows"))
    return " ".join(f'<a href="{_href(name)}">{_e(label)}</a>' for name, label in links)


def _file_row(f: FileLine, progress: Progress | None, banner: bool) -> str:
    key = status_key(f)
    done = f.state is FileState.DONE
    if done:
        rows = f'<td class="num" data-count="total">{sum(f.counts.values()):,}</td>'
    elif progress is not None:
        rows = f'<td class="num">{progress.total:,}</td>'
    else:
        rows = '<td class="num">–</td>'
    cells = [
        f'<td class="when">{_e(_when(f.received_at))}</td>',
        f'<td class="name">{_e(f.name)}</td>',
        f'<td class="status">{_badge(key, banner)}{"" if progress is None else f" {progress.percent} %"}</td>',
        rows,
    ]
    for status, _colour, _label in SERIES:
        n = f.counts.get(status, 0)
        cells.append(
            f'<td class="num{" zero" if not n else ""}" data-count="{status}">{n:,}</td>' if done else "<td></td>"
        )
    cells.append(f'<td class="reason">{_e(f.reason)}</td>')
    cells.append(f'<td class="links">{_reports(f)}</td>')
    return f'<tr data-file-id="{f.id}" data-status="{_e(key)}">{"".join(cells)}</tr>'


def _banner(page: Page) -> str:
    b = page.banner
    parts = []
    if b is not None:
        parts.append(
            f'<div class="banner" id="banner" role="alert" data-cause="{_e(b.cause)}"><strong>{_e(b.title)}</strong>'
            f"<p>{_e(b.detail)}</p><p><b>What to do:</b> {_e(b.action)}</p></div>"
        )
    if not page.running:
        parts.append(
            f'<div class="note" id="stopped">The service stopped at {_e(_stamp(page.generated_at))}; this page is '
            "updated again when it runs.</div>"
        )
    return "".join(parts)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(page: Page) -> str:
    """The whole page as one HTML document."""
    # A pause or a stopped service: active files are not moving, and the banner or the note above says why.
    now, banner = page.generated_at, page.banner is not None or not page.running
    if page.active:
        active = '<ul class="active">' + "".join(_active_item(a, now, banner) for a in page.active) + "</ul>"
    else:
        active = '<p class="muted">No file is being processed.</p>'
    heads = "".join(f'<th class="num">{_e(label)}</th>' for _s, _c, label in SERIES)
    sampled = {a.file.id: a.progress for a in page.active}
    rows = (
        "".join(_file_row(f, sampled.get(f.id), banner) for f in page.files)
        or '<tr><td colspan="11" class="muted">No file yet.</td></tr>'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta http-equiv="refresh" content="{REFRESH_SECONDS:.0f}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Scantrust uploads: scm-daemon</title>
<style>{STYLE}</style></head>
<body>
<header><h1>Scantrust uploads</h1>
<p class="muted">Written <time id="generated" datetime="{_e(now.isoformat(timespec="seconds"))}">
{_e(_stamp(now))}</time> by scm-daemon; rewritten when a file starts or finishes
and every {REFRESH_SECONDS:.0f} s while files are at work.</p>
</header>
{_banner(page)}
<section id="active"><h2>At work ({len(page.active)})</h2>{active}</section>
<section id="chart"><h2>Rows by outcome per day, last {CHART_DAYS} days (UTC)</h2>
{outcome_chart(page.days, now)}</section>
<section id="files"><h2>Latest files ({len(page.files)}, newest first)</h2>
<div class="scroll"><table><thead><tr><th>Received (UTC)</th><th>File</th><th>Status</th>
<th class="num">Rows</th>{heads}<th>Reason</th><th>Reports</th></tr></thead>
<tbody>{rows}</tbody></table></div></section>
</body></html>
"""


STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:16px 24px;color:#1b1b1b;
background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px}
.muted{color:#666}
.banner{border:2px solid #b71c1c;background:#ffebee;padding:10px 14px;margin:12px 0;border-radius:4px}
.banner strong{font-size:16px;color:#b71c1c}.banner p{margin:4px 0}
.note{border:1px solid #888;background:#eee;padding:8px 12px;margin:12px 0}
ul.active{list-style:none;padding:0;margin:0}ul.active li{margin:0 0 10px}
.line{display:flex;gap:8px;align-items:baseline;flex-wrap:wrap}
.bar{height:12px;background:#e0e0e0;border:1px solid #bbb;border-radius:3px;max-width:640px;margin-top:3px}
.bar span{display:block;height:100%;background:#1565c0;border-radius:2px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600}th.num{white-space:normal}.scroll{overflow-x:auto}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.zero{color:#aaa}
td.name{overflow-wrap:anywhere;min-width:8em;max-width:320px}td.when{white-space:nowrap}
td.reason{min-width:10em;max-width:420px}td.links a{display:block;white-space:nowrap}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;white-space:nowrap;
border:1px solid}
.badge.ok{background:#e8f5e9;color:#1b5e20;border-color:#2e7d32}
.badge.warn{background:#fff3e0;color:#8a4b00;border-color:#ef6c00}
.badge.bad{background:#ffebee;color:#b71c1c;border-color:#c62828}
.badge.dup{background:#eceff1;color:#37474f;border-color:#78909c}
.badge.busy{background:#e3f2fd;color:#0d47a1;border-color:#1565c0}
.legend{list-style:none;padding:0;margin:4px 0;display:flex;gap:14px;flex-wrap:wrap}
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px;border:1px solid #555}
svg{max-width:100%;height:auto}svg text{font-size:11px;fill:#444}
details{margin-top:6px}details table{width:auto}
"""
