"""`scm-daemon status`: the ledger's contents, as text for a person or JSON for a script."""

from pathlib import Path
from typing import Any

from daemon.ledger import Ledger


def overview(ledger_path: Path) -> dict[str, Any]:
    """Files, rows and batches by state, tasks in flight, and the last errors."""
    ledger = Ledger(ledger_path)
    try:
        return ledger.overview()
    finally:
        ledger.close()


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def render_overview(data: dict[str, Any]) -> str:
    """The overview as lines of text."""
    lines = [f"UPLOADS PAUSED: {data['uploads_paused']}"] if data.get("uploads_paused") else []
    lines += [
        f"ledger:   {data['ledger']}",
        f"files:    {_counts(data['files'])}",
        f"rows:     {_counts(data['rows'])}",
        f"batches:  {_counts(data['batches'])}",
        f"in flight: {data['in_flight']} batch(es)"
        + (f"; next retry at {data['next_retry_at']}" if data["next_retry_at"] else ""),
    ]
    if data["recent_files"]:
        lines.append("recent files:")
        for f in data["recent_files"]:
            status = f["status"] or f["state"]
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
