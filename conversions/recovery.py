"""Picking up conversions whose worker died (acceld deletes them on restart; we finish them).

A leader is *interrupted* when it is PROCESSING and either its heartbeat is older than
``ACCELD_STALE_AFTER`` (the worker or the whole qcluster was killed, or django-q2's timeout struck),
or it never started and its queue message is older than the queue's own retry window (a lost message).
Each interrupted task is re-queued under a new token, unless it has already been started
``ACCELD_MAX_ATTEMPTS`` times or its last run reached ``converter.timeout``: then it FAILS with a reason.

The qcluster command runs :func:`recover_interrupted` every ``ACCELD_REAPER_INTERVAL`` seconds.
"""
from __future__ import annotations

import datetime
import logging

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from . import services
from .conf import get_config
from .models import ConversionTask, Status

log = logging.getLogger("acceld.recovery")


def interrupted_q(now: datetime.datetime) -> Q:
    """The condition itself, for a query that counts it among others (the admin dashboard)."""
    stale_before = now - datetime.timedelta(seconds=settings.ACCELD_STALE_AFTER)
    lost_before = now - datetime.timedelta(seconds=settings.Q_CLUSTER.get("retry", 60))
    return Q(status=Status.PROCESSING, shared_with__isnull=True) & (
        Q(heartbeat__lt=stale_before)
        | Q(heartbeat__isnull=True, queued__lt=lost_before)
        | Q(heartbeat__isnull=True, queued__isnull=True, created__lt=stale_before)
    )


def interrupted(now: datetime.datetime | None = None):
    """Leaders that nobody is working on (a selector, kept here beside its only user)."""
    return ConversionTask.objects.filter(interrupted_q(now or timezone.now()))


def recover_interrupted(now: datetime.datetime | None = None) -> dict[str, int]:
    cfg = get_config()
    counts = {"requeued": 0, "failed": 0}
    timeout = cfg.converter.timeout
    for task in interrupted(now).order_by("created"):
        ran_for = (task.heartbeat - task.started).total_seconds() if task.heartbeat and task.started else 0
        if task.started and ran_for >= timeout - 2 * settings.ACCELD_HEARTBEAT_INTERVAL:
            reason = f"conversion timed out after {timeout} s (converter.timeout)"
        elif task.attempts >= settings.ACCELD_MAX_ATTEMPTS:
            reason = (f"conversion was interrupted {task.attempts} times (worker crashed or was killed); "
                      "giving up")
        else:
            again = services.conversion_requeue(task_id=task.pk, token=task.run_token, heartbeat=task.heartbeat)
            if again is not None:
                log.warning("task %s (%s): run interrupted after %d attempt(s); re-queued",
                            task.pk, task.source, task.attempts)
                counts["requeued"] += 1
            continue
        if services.conversion_fail(task_id=task.pk, reason=reason, token=task.run_token,
                                    heartbeat=task.heartbeat) is not None:
            log.warning("task %s (%s): %s", task.pk, task.source, reason)
            counts["failed"] += 1
    return counts
