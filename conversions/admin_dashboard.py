"""``/admin/dashboard/``: how conversions went over the last 7 days, on one server-rendered page.

Who sees it: staff who may see tasks (``conversions.view_conversiontask``, as for the task list). The
Retry buttons beside failures appear only for ``conversions.convert_image``; each posts the admin's own
"Retry" action for that one task, so the permission check, the service call (``conversion_retry``) and
the messages are the task list's, not a second copy.
"""
from __future__ import annotations

import datetime

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils import timezone

from . import charts, dashboard
from .admin import CONVERT_PERMISSION
from .models import ConversionTask


def window(now: datetime.datetime) -> tuple[datetime.datetime, int]:
    """Whole calendar days (in TIME_ZONE): from midnight ``WINDOW_DAYS - 1`` days ago to the current hour."""
    local = timezone.localtime(now)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight - datetime.timedelta(days=dashboard.WINDOW_DAYS - 1)
    hours = int((local.replace(minute=0, second=0, microsecond=0) - start).total_seconds() // 3600) + 1
    return start, hours


def per_day(counts: dict, start: datetime.datetime) -> list[dict]:
    """The hourly counts summed per calendar day, oldest first, every day and status present (0 if none)."""
    days = [(start + datetime.timedelta(days=d)).date() for d in range(dashboard.WINDOW_DAYS)]
    table = {day: dict.fromkeys(charts.STATUSES, 0) for day in days}
    for (hour, status), n in counts.items():
        day = timezone.localtime(hour).date()
        if day in table and status in table[day]:
            table[day][status] += n
    return [{"day": day, "counts": [(s.value, table[day][s]) for s in charts.STATUSES],
             "total": sum(table[day].values())} for day in days]


def dashboard_view(request):
    model_admin = admin.site._registry[ConversionTask]
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    now = timezone.now()
    start, hours = window(now)
    counts = dashboard.timeline(start)
    durations = dashboard.durations(start)
    bytes_rows = dashboard.bytes_by_driver(start)
    slowest = dashboard.slowest(start)
    for task in slowest:
        task.duration_text = charts.duration_text(task.duration)
    context = {
        **admin.site.each_context(request),
        "title": "Conversions dashboard",
        "opts": ConversionTask._meta,
        "since": start,
        "days": per_day(counts, start),
        "statuses": [s.value for s in charts.STATUSES],
        "timeline_svg": charts.timeline_svg(counts, start, hours),
        "durations": durations,
        "median": charts.duration_text(durations.median),
        "p95": charts.duration_text(durations.p95),
        "bytes_rows": bytes_rows,
        "bytes_svg": charts.bytes_svg(bytes_rows),
        "slowest": slowest,
        "failures": dashboard.recent_failures(),
        "queue": dashboard.queue(now),
        "can_convert": request.user.has_perm(CONVERT_PERMISSION),
        "stale_after": int(settings.ACCELD_STALE_AFTER),
    }
    return TemplateResponse(request, "admin/conversions/dashboard.html", context)
