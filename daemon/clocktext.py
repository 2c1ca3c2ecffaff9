"""Times for a person: a clock time on this machine's local time, with the date only when it is not today."""

from datetime import datetime


def clock_time(at: float, now: float, *, seconds: bool = True) -> str:
    """'14:05:10' (today), or '2026-12-03 14:05:10' on another day; local time, as the operator's clock shows."""
    when = datetime.fromtimestamp(at).astimezone()
    today = datetime.fromtimestamp(now).astimezone().date()
    text = when.strftime("%H:%M:%S" if seconds else "%H:%M")
    return text if when.date() == today else f"{when.date().isoformat()} {text}"


def next_time(at: float | None, now: float) -> str | None:
    """When something happens next, never a time already past: 'now' once it is due."""
    if at is None:
        return None
    return "now" if at <= now else f"at {clock_time(at, now)}"
