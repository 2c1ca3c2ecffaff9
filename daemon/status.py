"""`scm-daemon status`: the ledger's overview as text for a person (`--json` prints it as it is)."""

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon import progress
from daemon.clocktext import next_time
from daemon.progress import Progress

if TYPE_CHECKING:  # daemon.work brings the API client's modules, which `scm-daemon status` never needs
    from daemon.work import Pause

LAST_ERRORS = 5  # lines of last errors shown (`--json` has them all)
ERROR_CHARS = 110  # an error's text is cut to this much: one short line each


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _short(text: str) -> str:
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= ERROR_CHARS else one_line[: ERROR_CHARS - 3] + "..."


def _active(a: dict[str, Any], now: float) -> str:
    """An active file's line, from its `--json` form."""
    eta = datetime.fromisoformat(a["eta"]).timestamp() if a.get("eta") else None
    pace, paused = a.get("rows_per_second"), a.get("paused")
    return progress.line(a["file"], a["rows_final"], a["rows_total"], pace=pace, eta_at=eta, paused=paused, now=now)


def _leader(leader: dict[str, Any] | None) -> str:
    if leader is None:
        return "none (no service is running on this ledger)"
    return f"{leader['instance']} (its lease runs {leader['lease_left']:g} s more unless renewed)"


def render_overview(data: dict[str, Any], now: float | None = None) -> str:
    """The overview as lines of text; times as clock times on this machine, never a next time already past."""
    now = time.time() if now is None else now
    retry_at = datetime.fromisoformat(data["next_retry_at"]).timestamp() if data["next_retry_at"] else None
    lines = [f"UPLOADS PAUSED: {data['uploads_paused']}"] if data.get("uploads_paused") else []
    lines += [f"REPORTS NOT DELIVERED (retried): {u['error']}" for u in data.get("undelivered", [])]
    lines += [
        f"ledger:   {data['ledger']}" + (f" (schema {data['schema_version']})" if "schema_version" in data else ""),
        f"leader:   {_leader(data.get('leader'))}",
        f"files:    {_counts(data['files'])}",
        f"rows:     {_counts(data['rows'])}",
        f"batches:  {_counts(data['batches'])}",
        f"in flight: {data['in_flight']} batch(es)"
        + (f"; next try {next_time(retry_at, now)}" if retry_at is not None else ""),
    ]
    if data.get("active_files"):
        lines.append("active files:")
        lines.extend(f"  {_active(a, now)}" for a in data["active_files"])
    notifications = data.get("notifications") or {}
    if notifications.get("counts"):
        lines.append(f"notifications: {_counts(notifications['counts'])}")
        for n in notifications["given_up"]:
            lines.append(f"  not delivered ({n['channel']}, {n['event']}, {n['at']}): {n['error']}")
    if data["tasks_in_flight"]:
        lines.append(f"async tasks being followed: {len(data['tasks_in_flight'])}")
        lines.extend(
            f"  {t['file']} batch {t['batch']}: task {t['task_id']} ({t['state'] or 'not asked yet'})"
            for t in data["tasks_in_flight"][:10]
        )
    if data["recent_files"]:
        lines.append("recent files:")
        for f in data["recent_files"]:
            status = f["state"] if f["state"] != "done" else (f["status"] or f["state"])
            lines.append(
                f"  {f['received_at']}  {status:<22} {f['name']}" + (f"  ({f['error']})" if f["error"] else "")
            )
    if data["last_errors"]:
        lines.append("last errors:")
        lines.extend(
            "  " + _short(f"{e['file']} batch {e['batch']} ({e['state']}, {e['attempts']} calls): {e['error']}")
            for e in data["last_errors"][:LAST_ERRORS]
        )
    return "\n".join(lines)


def systemd_status(
    *,
    files: int,
    in_flight: int,
    busy: bool,
    inbox: str,
    active: list[Progress],
    settling: int,
    problems: list[str],
    pause: "Pause | None",
    breaker_open: bool,
) -> str:
    """The service's STATUS= line for `systemctl status`: what blocks it first, then what it is doing."""
    if files or busy:
        text = f"working: {files} file(s) in progress, {in_flight} request(s) in flight"
    else:
        text = f"idle: watching {inbox}"
    if active:
        text = "uploading " + "; ".join(p.text() for p in active[:3]) + ". " + text
    if settling:
        text += f", {settling} file(s) settling"
    if problems:
        text = f"PROBLEM: {problems[0]} (retried). " + text
    if pause is not None and pause.cause == "starting":
        text = f"starting: {pause.reason}. " + text
    elif pause is not None and pause.cause == "token":
        text = "uploads paused: the API refused the token; renew it. " + text
    elif pause is not None:
        text = f"uploads paused: configuration problem ({pause.reason}). " + text
    elif breaker_open:
        text = "uploads paused for a while after repeated API failures. " + text
    return text
