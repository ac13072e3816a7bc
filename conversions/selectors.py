"""Reads of ConversionTask (HackSoftware style): views, admin and metrics ask these, never the ORM directly."""
from __future__ import annotations

import time
from typing import Iterable

from django.db.models import Count, Q, QuerySet

from .models import ConversionTask, Status


def conversion_list(*, status: str = "", source: str = "", hosts: Iterable[str] | None = None
                    ) -> QuerySet[ConversionTask]:
    """Newest first; ``status`` exact, ``source`` a substring of the normalised reference; ``hosts``
    (None: all) the registries whose images to list."""
    qs = ConversionTask.objects.all().order_by("-created", "-pk")
    if hosts is not None:
        on_hosts = Q(pk__in=[])
        for host in hosts:
            on_hosts |= Q(source__startswith=f"{host}/")
        qs = qs.filter(on_hosts)
    if status:
        qs = qs.filter(status=status)
    if source:
        qs = qs.filter(source__icontains=source)
    return qs


def conversion_wait(*, task_ids: Iterable, timeout: float, poll: float = 0.2) -> list[ConversionTask]:
    """Poll until every task has finished (the conversion runs in the qcluster, another process).

    Returns the tasks as last read; some may still be PROCESSING when ``timeout`` ran out.
    """
    ids = list(task_ids)
    deadline = time.monotonic() + timeout
    while True:
        tasks = list(ConversionTask.objects.filter(pk__in=ids))
        if all(t.status != Status.PROCESSING for t in tasks) or time.monotonic() >= deadline:
            return tasks
        time.sleep(poll)


def conversion_gauges() -> dict:
    """How things are now, for /metrics' gauges: tasks by status, and conversions a worker is running."""
    by_status = dict(ConversionTask.objects.values_list("status").annotate(n=Count("pk")))
    return {
        "by_status": {s.value: by_status.get(s.value, 0) for s in Status},
        "running": ConversionTask.objects.filter(status=Status.PROCESSING, shared_with__isnull=True,
                                                 started__isnull=False).count(),
    }


def conversion_route_gauges() -> dict[tuple[str, str], int]:
    """Tasks now by ``(route, status)``, for /metrics when ``converter.routes`` is configured (one query)."""
    rows = ConversionTask.objects.exclude(route="").values_list("route", "status").annotate(n=Count("pk"))
    return {(route, status): n for route, status, n in rows}
