"""The dashboard's chart: rows by outcome per day as inline SVG (pure; no script, no fonts, nothing to fetch)."""

import html
from datetime import UTC, datetime, timedelta

from daemon.states import RowStatus

DAYS = 30
# The final row statuses in stacking order (bottom first): key, colour, the word shown beside it.
SERIES: tuple[tuple[str, str, str], ...] = (
    (str(RowStatus.UPLOADED), "#2e7d32", "uploaded"),
    (str(RowStatus.NOT_AFFECTED), "#78909c", "not affected"),
    (str(RowStatus.SKIPPED), "#b0bec5", "skipped"),
    (str(RowStatus.REJECTED), "#ef6c00", "rejected"),
    (str(RowStatus.FAILED), "#c62828", "failed"),
)
WIDTH, HEIGHT = 760, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 24  # margins inside the drawing, for the axis labels


def last_days(now: datetime, days: int = DAYS) -> list[str]:
    """The `days` UTC dates up to and including today's, oldest first, as YYYY-MM-DD."""
    today = now.astimezone(UTC).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def nice_ceiling(n: int) -> int:
    """The smallest of 1, 2, 5 x 10^k at or above n (the top of the scale); 1 for nothing."""
    if n <= 1:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= n:
                return m * step
        step *= 10


def _day_text(day: str, counts: dict[str, int]) -> str:
    parts = [f"{counts.get(key, 0):,} {label}" for key, _c, label in SERIES if counts.get(key)]
    return f"{day}: " + (", ".join(parts) if parts else "nothing finished")


def outcome_chart(days: dict[str, dict[str, int]], now: datetime) -> str:
    """Stacked bars per day, a legend in words, and the figures as a table (which also reads in black and white)."""
    dates = last_days(now)
    totals = {d: sum(days.get(d, {}).get(key, 0) for key, _c, _l in SERIES) for d in dates}
    top = nice_ceiling(max(totals.values(), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(dates)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'role="img" aria-label="rows by outcome per day">'
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - fraction)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ccc"/>')
        label = f"{top * fraction:,.0f}" if top * fraction == int(top * fraction) else f"{top * fraction:,.1f}"
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for i, day in enumerate(dates):
        x = LEFT + i * slot + slot * 0.15
        counts = days.get(day, {})
        out.append(
            f'<g data-day="{day}" data-total="{totals[day]}"><title>{html.escape(_day_text(day, counts))}</title>'
        )
        base = float(TOP + plot_h)
        for key, colour, _label in SERIES:
            n = counts.get(key, 0)
            if n <= 0:
                continue
            h = plot_h * n / top
            base -= h
            bar = f'x="{x:.1f}" y="{base:.1f}" width="{slot * 0.7:.1f}" height="{max(h, 1.5):.1f}"'
            out.append(f'<rect {bar} fill="{colour}"/>')
        out.append("</g>")
        if i % 5 == 4 or i == 0:
            out.append(f'<text x="{x + slot * 0.35:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{day[5:]}</text>')
    out.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch" style="background:{colour}"></span>{label}</li>' for _k, colour, label in SERIES
    )
    shown = [d for d in dates if totals[d]]
    rows = "".join(
        f"<tr><td>{d}</td>"
        + "".join(f'<td class="num">{days[d].get(key, 0):,}</td>' for key, _c, _l in SERIES)
        + f'<td class="num">{totals[d]:,}</td></tr>'
        for d in reversed(shown)
    )
    heads = "".join(f'<th class="num">{label}</th>' for _k, _c, label in SERIES)
    table = (
        f'<details><summary>Figures by day</summary><table id="days"><thead><tr><th>Day</th>{heads}'
        f'<th class="num">total</th></tr></thead><tbody>{rows}</tbody></table></details>'
        if shown
        else '<p class="muted">No file finished in the last 30 days.</p>'
    )
    return "".join(out) + f'<ul class="legend">{legend}</ul>' + table
