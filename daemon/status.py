"""`scm-daemon status`: the ledger's overview as text for a person (`--json` prints it as it is)."""

from typing import Any


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def render_overview(data: dict[str, Any]) -> str:
    """The overview as lines of text."""
    lines = [f"UPLOADS PAUSED: {data['uploads_paused']}"] if data.get("uploads_paused") else []
    lines += [f"REPORTS NOT DELIVERED (retried): {u['error']}" for u in data.get("undelivered", [])]
    lines += [
        f"ledger:   {data['ledger']}",
        f"files:    {_counts(data['files'])}",
        f"rows:     {_counts(data['rows'])}",
        f"batches:  {_counts(data['batches'])}",
        f"in flight: {data['in_flight']} batch(es)"
        + (f"; next retry at {data['next_retry_at']}" if data["next_retry_at"] else ""),
    ]
    if data.get("active_files"):
        lines.append("active files:")
        lines.extend(
            f"  {a['file']}: {a['rows_final']:,} / {a['rows_total']:,} rows ({a['percent']} %)"
            for a in data["active_files"]
        )
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
            f"  {e['file']} batch {e['batch']} ({e['state']}, {e['attempts']} calls): {e['error']}"
            for e in data["last_errors"]
        )
    return "\n".join(lines)
