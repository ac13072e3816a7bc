"""The task table of ``make bench-api``: Django set up in the bench's own process to fill, touch and count it."""
from __future__ import annotations

import datetime
import os
import time


def django_setup(config_path: str) -> None:
    for key in [k for k in os.environ if k.startswith(("ACCELD_", "DATABASE_URL"))]:
        del os.environ[key]
    os.environ["ACCELD_CONFIG"] = config_path
    os.environ["DJANGO_SETTINGS_MODULE"] = "acceld_project.settings"
    import django

    django.setup()


def fill_tasks(host: str, n: int) -> float:
    """Replace every task with ``n`` of them: 80% COMPLETED, 15% FAILED (with a reason), 5% PROCESSING."""
    from django.utils import timezone

    from conversions.models import ConversionTask, Status

    t0 = time.perf_counter()
    ConversionTask.objects.all().delete()
    now = timezone.now()
    rows = []
    for i in range(n):
        created = now - datetime.timedelta(seconds=30 * (n - i))
        kind = i % 20
        status = Status.PROCESSING if kind == 0 else Status.FAILED if kind <= 3 else Status.COMPLETED
        source = f"{host}/library/app{i}:v{i % 7}"
        rows.append(ConversionTask(
            source=source, target=source + "-esgz", status=status, created=created,
            finished=None if status == Status.PROCESSING else created + datetime.timedelta(seconds=41, microseconds=i),
            source_size=70254592 + i, target_size=72351744 + i if status == Status.COMPLETED else 0,
            reason=f"{source}: manifest unknown (registry said 404)" if status == Status.FAILED else "",
            driver="estargz", trigger="webhook",
            progress={"phase": "done", "percent": 100} if status != Status.PROCESSING else {},
        ))
    ConversionTask.objects.bulk_create(rows, batch_size=1000)
    assert ConversionTask.objects.count() == n
    return time.perf_counter() - t0


def touch_one_task() -> None:
    """Commit a change to one task (its reason), as a finishing conversion would."""
    from conversions.models import ConversionTask, Status

    task = ConversionTask.objects.filter(status=Status.FAILED).order_by("-created").first()
    ConversionTask.objects.filter(pk=task.pk).update(reason=f"touched at {time.time():.6f}")


def tasks_in_window() -> int:
    from django.utils import timezone

    from conversions import admin_dashboard
    from conversions.models import ConversionTask

    start, _ = admin_dashboard.window(timezone.now())
    return ConversionTask.objects.filter(created__gte=start).count()


def task_counts() -> dict:
    from django.db.models import Count

    from conversions.models import ConversionTask

    return {row["status"]: row["n"] for row in ConversionTask.objects.values("status").annotate(n=Count("pk"))}
