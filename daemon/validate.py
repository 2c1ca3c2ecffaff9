"""`scm-daemon validate`: read and plan a file exactly as the service would, in a scratch ledger, uploading nothing."""

import tempfile
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

from daemon import intake
from daemon.config import Settings
from daemon.config.routes import describe_route, name_for_validation, route_of, settings_for
from daemon.ledger import FileLayout, Ledger
from daemon.normalize import cell_reference
from daemon.planner import plan
from daemon.states import RowStatus

MAX_PROBLEMS = 20


def validate_file(
    path: Path, settings: Settings, *, route: str | None = None, on_rows: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """What the service would do with a file: layout, rows by outcome, first problems, batches and calls.

    The route is the one of the file's folder when it lies in the inbox, or `route` when given.
    """
    name = name_for_validation(path, settings.paths.inbox, route)
    key = route_of(settings.routes, name)
    routed = {"route": key, "route_settings": describe_route(settings, key)}
    if not path.is_file():
        return _unreadable(path, f"{path} does not exist or is not a file", routed)
    with tempfile.TemporaryDirectory(prefix="scm-validate-") as scratch:
        ledger = Ledger(Path(scratch) / "validate.sqlite3")
        try:
            problem_columns: dict[int, int] = {}
            file_id = intake.take(path, ledger, settings, name=name, problem_columns=problem_columns, on_rows=on_rows)
            if file_id is None:
                return _unreadable(path, "the file changed while it was read", routed)
            f = ledger.file(file_id)
            if f.error:
                return _unreadable(path, f.error, routed)
            upload = settings_for(settings, name).upload
            p = plan(
                ledger.plannable_groups(file_id),
                mode=upload.mode,
                sync_batch_size=upload.sync_batch_size,
                async_batch_size=upload.async_batch_size,
            )
            counts = ledger.row_counts(file_id)
            problems = [
                {"row": line, **_column(f.layout, line, problem_columns.get(line)), "status": status, "detail": detail}
                for line, _cells, status, detail in islice(ledger.error_rows(file_id), MAX_PROBLEMS)
            ]
            skipped_in_file = counts.get(RowStatus.SKIPPED, 0)
        finally:
            ledger.close()
    layout = f.layout
    rejected = counts.get(RowStatus.REJECTED, 0)
    return {
        "file": str(path),
        **routed,
        "readable": True,
        "ok": rejected == 0,  # the command exits 1 unless every row would be uploaded or skipped
        "error": None,
        "format": layout.format_record(),
        "data_key": f.data_key,
        "columns": layout.columns(),
        "key_column": layout.headers[layout.key_index],
        "warnings": list(layout.warnings),
        "rows": {
            "total": sum(counts.values()),
            "to_upload": sum(len(b.lines) for b in p.batches),
            "skipped": skipped_in_file,
            "rejected": rejected,
        },
        "problems": problems,
        "plan": {
            "mode": f.mode,
            "groups": p.groups,
            "sync_calls": p.sync_calls,
            "async_jobs": p.async_jobs,
            "sync_only_calls": p.sync_only_calls,
        },
        "api_calls": p.api_calls,
        "note": "codes already uploaded earlier are not looked up here; the service skips them",
    }


def _unreadable(path: Path, error: str, routed: dict[str, Any]) -> dict[str, Any]:
    return {"file": str(path), **routed, "readable": False, "ok": False, "error": error}


def _column(layout: FileLayout, line: int, index: int | None) -> dict[str, str | None]:
    """The heading and cell name of a rejected row's faulty cell; None for problems of the whole row."""
    if index is None:
        return {"column": None, "cell": None}
    heading = layout.headers[index] if index < len(layout.headers) else None
    return {"column": heading, "cell": cell_reference(layout.column_offset + index, line)}


def render_validation(report: dict[str, Any]) -> str:
    """The validation report as lines of text."""
    if not report["readable"]:
        return f"{report['file']}: cannot be read: {report['error']}\nroute:    {report['route_settings']}"
    fmt = report["format"]
    details = ", ".join(f"{k} {v!r}" for k, v in fmt.items() if v not in (None, ""))
    lines = [
        f"file:     {report['file']} ({details})",
        f"route:    {report['route_settings']}",
        f"key:      column {report['key_column']!r} as {report['data_key']}",
        "columns:  " + (", ".join(f"{h!r} -> {f}" for h, f in report["columns"].items()) or "none"),
    ]
    lines.extend(f"warning:  {w}" for w in report["warnings"])
    rows = report["rows"]
    lines.append(
        f"rows:     {rows['total']} in all: {rows['to_upload']} to upload, {rows['skipped']} repeated in the file, "
        f"{rows['rejected']} rejected"
    )
    lines.extend(f"  row {p['row']}: {p['detail']}" for p in report["problems"])
    if rows["rejected"] > len(report["problems"]):
        lines.append(f"  ... and {rows['rejected'] - len(report['problems'])} more rejected row(s)")
    plan_ = report["plan"]
    lines.append(
        f"plan:     mode {plan_['mode']}: {plan_['groups']} group(s) of identical data; {plan_['async_jobs']} async "
        f"job(s) + {plan_['sync_calls']} sync call(s) = {report['api_calls']} API call(s) "
        f"(sync alone: {plan_['sync_only_calls']})"
    )
    lines.append(f"note:     {report['note']}")
    return "\n".join(lines)
