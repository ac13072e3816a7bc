"""Small inline SVG charts for the admin dashboard, drawn on the server (no JS, no CDN).

Colours and fonts come from classes in ``conversions/static/conversions/dashboard.css``: the
Content-Security-Policy refuses ``style`` attributes (acceld_project/security.py), while SVG's geometry
attributes (x, y, width, height) are not styles and need no exception. Every mark carries a ``<title>``,
which the browser shows as a tooltip, so the exact number is one hover away.
"""
from __future__ import annotations

import datetime

from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .models import Status

STATUSES = (Status.COMPLETED, Status.FAILED, Status.PROCESSING)  # bottom to top in a stacked bar
BAR = 5     # px per hour: 7 days x 24 h x 5 px = 840 px, the admin's content width on a laptop
HEIGHT = 140
AXIS = 18   # room under the bars for the day labels


def timeline_svg(counts: dict[tuple[datetime.datetime, str], int], start: datetime.datetime,
                 hours: int) -> SafeString:
    """Stacked bars, one per hour from ``start``: tasks by status; a label under each day's first hour."""
    totals = [sum(counts.get((start + datetime.timedelta(hours=h), s), 0) for s in STATUSES) for h in range(hours)]
    top = max(totals, default=0) or 1
    marks = []
    for h in range(hours):
        hour = start + datetime.timedelta(hours=h)
        y = HEIGHT
        for status in STATUSES:
            n = counts.get((hour, status), 0)
            if not n:
                continue
            tall = max(1, round(n / top * (HEIGHT - 10)))
            y -= tall
            marks.append(format_html(
                '<rect class="bar-{}" x="{}" y="{}" width="{}" height="{}"><title>{} {}: {}</title></rect>',
                status.lower(), h * BAR, y, BAR - 1, tall, hour.strftime("%a %d %b %H:00"), status, n))
        if hour.hour == 0 or h == 0:
            marks.append(format_html('<text class="axis" x="{}" y="{}">{}</text>', h * BAR, HEIGHT + 13,
                                     hour.strftime("%a %d")))
    width = hours * BAR
    return format_html(
        '<svg class="chart" id="timeline-chart" viewBox="0 0 {} {}" width="{}" height="{}" role="img" '
        'aria-label="Tasks per hour by status">'
        '<line class="baseline" x1="0" y1="{}" x2="{}" y2="{}"></line>{}'
        '<text class="axis" x="{}" y="10" text-anchor="end">max {} / h</text></svg>',
        width, HEIGHT + AXIS, width, HEIGHT + AXIS, HEIGHT, width, HEIGHT, SafeString("".join(marks)), width, top)


def bytes_svg(rows: list[dict]) -> SafeString:
    """Two bars per driver: bytes pulled (in) over bytes pushed (out), on one scale."""
    if not rows:
        return SafeString("")
    label, width, pair = 110, 520, 30
    top = max(max(r["source"], r["target"]) for r in rows) or 1
    marks = []
    for i, row in enumerate(rows):
        y = i * (pair + 10)
        marks.append(format_html('<text class="label" x="0" y="{}">{}</text>', y + 19, row["driver"]))
        for j, (kind, n) in enumerate((("in", row["source"]), ("out", row["target"]))):
            w = max(1, round(n / top * width)) if n else 0
            marks.append(format_html(
                '<rect class="bytes-{}" x="{}" y="{}" width="{}" height="13"><title>{} {}: {}</title></rect>'
                '<text class="axis" x="{}" y="{}">{}</text>',
                kind, label, y + j * 15, w, row["driver"], kind, filesizeformat(n),
                label + w + 4, y + j * 15 + 11, filesizeformat(n)))
    height = len(rows) * (pair + 10)
    total = label + width + 80
    return format_html('<svg class="chart" id="bytes-chart" viewBox="0 0 {} {}" width="{}" height="{}" role="img" '
                       'aria-label="Bytes in and out by format">{}</svg>',
                       total, height, total, height, SafeString("".join(marks)))


def duration_text(value: datetime.timedelta | None) -> str:
    """41.2 s, 3 min 02 s, 2 h 05 min: precise where it matters, short where it does not."""
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"

