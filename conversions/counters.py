"""Totals of finished work, kept in the database (``FinishedCount``) and read by ``/metrics``.

Why a table and not prometheus_client's in-process counters: tasks finish in qcluster workers (forked,
recycled, on any host), while ``/metrics`` is answered by whichever gunicorn worker on whichever host gets
the scrape. In-process counters would differ per process and vanish with it; the multiprocess mode only
joins the processes of one host sharing a directory. A row added to in the same transaction that marks a
task COMPLETED or FAILED counts each finish exactly once (a rolled-back finish counts nothing) and every
web process reports the same, ever-growing total.
"""
from __future__ import annotations

import datetime
from typing import Iterable

from django.db import IntegrityError, transaction
from django.db.models import Case, F, IntegerField, Value, When
from django.utils import timezone

from .models import ConversionTask, FinishedCount, IgnoredPush, Status

COMPLETED = "conversions_completed"  # leaders that pulled, converted and pushed an image
FAILED = "conversions_failed"  # leaders that ended FAILED (their followers fail with them)
SHARED = "tasks_shared"  # followers finished by the conversion they shared
SKIPPED = "tasks_skipped"  # tasks finished without a conversion (already converted, cache tag)
SOURCE_BYTES = "source_bytes"  # of completed conversions
TARGET_BYTES = "target_bytes"
DURATION_MS = "conversion_duration_ms"  # summed over completed conversions that reported a total time
DURATION_COUNT = "conversion_duration_count"
IGNORED = "pushes_ignored"  # pushed images no route converts (converter.routes), route outputs among them
# How long an ignored push's event id is remembered: a generous bound on how late a redelivery of one
# event comes (Harbor retries a failed delivery; an operator may resend one from its UI).
IGNORED_MEMORY = datetime.timedelta(days=7)


class _RowMissing(Exception):
    """Raised inside add()'s savepoint to undo an UPDATE that found only some of its rows."""


def add(**deltas: int) -> None:
    """Add to the totals, in the caller's transaction: one UPDATE once each total has a row.

    A total nobody has added to yet has no row. Reading back which rows exist and inserting the rest is a
    race on PostgreSQL (READ COMMITTED): another transaction may insert and commit the row between our
    UPDATE (which did not see it) and our read (which does), and the addition is lost -- the first two
    conversions to finish on a fresh database lost one conversion and its followers (tests/service/pg_races.py,
    run on PostgreSQL by test_races_on_postgresql.py). So a short UPDATE is undone, every row is made with
    INSERT ... ON CONFLICT DO NOTHING (which waits for a concurrent insert of the same name to commit or
    roll back), and the UPDATE is done again: it then finds every row, and F() adds to the newest value.
    """
    deltas = {name: int(n) for name, n in deltas.items() if n}
    if not deltas:
        return
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint, so that a partial UPDATE can be undone
                if _bump(deltas) == len(deltas):
                    return
                raise _RowMissing
        except _RowMissing:
            pass
        FinishedCount.objects.bulk_create([FinishedCount(name=name, value=0) for name in sorted(deltas)],
                                          ignore_conflicts=True)
        updated = _bump(deltas)
        if updated != len(deltas):  # cannot happen: the rows were just made or already there
            raise RuntimeError(f"counters: {updated} of {len(deltas)} totals found after creating them")


def _bump(deltas: dict[str, int]) -> int:
    bump = Case(*(When(name=name, then=Value(n)) for name, n in deltas.items()), output_field=IntegerField())
    return FinishedCount.objects.filter(name__in=deltas).update(value=F("value") + bump)


def count_finished(task: ConversionTask, *, followers: int = 0) -> None:
    """A leader's outcome was just recorded, and copied to ``followers`` tasks sharing its conversion."""
    deltas = {SHARED: followers}
    if task.status == Status.FAILED:
        deltas[FAILED] = 1
    elif task.skipped:
        deltas[SKIPPED] = 1
    else:
        deltas.update({COMPLETED: 1, SOURCE_BYTES: task.source_size, TARGET_BYTES: task.target_size})
        total = (task.durations or {}).get("total")
        if isinstance(total, (int, float)):
            deltas.update({DURATION_MS: round(total * 1000), DURATION_COUNT: 1})
    add(**deltas)


def count_skipped() -> None:
    """A task finished at creation: its source needs no conversion."""
    add(**{SKIPPED: 1})


def count_ignored(sources: Iterable[str], *, event_id: str = "") -> int:
    """Pushed images that made no task: no route matched them, or they were a route's output.

    With the delivery's ``event_id`` each image of an event counts once: a redelivery (same id) finds
    the :class:`IgnoredPush` rows of the first and adds nothing. A delivery without an id cannot be
    told from a new push (Harbor's own format sends none, FORMATS.md) and counts each time, as it
    would make a task each time. Returns how many were counted.
    """
    sources = sorted(set(sources))
    if not sources:
        return 0
    with transaction.atomic():
        new = len(sources)
        if event_id:
            now = timezone.now()
            IgnoredPush.objects.filter(seen__lt=now - IGNORED_MEMORY).delete()  # bounded: a week of events
            new = 0
            for source in sources:
                try:
                    with transaction.atomic():  # PostgreSQL: waits for a concurrent delivery's row, then refuses
                        IgnoredPush.objects.create(event_id=event_id, source=source, seen=now)
                except IntegrityError:  # an earlier delivery of this event counted it
                    continue
                new += 1
        add(**{IGNORED: new})
    return new


def totals() -> dict[str, int]:
    """Every total by name; 0 for the ones nothing has added to yet."""
    names = (COMPLETED, FAILED, SHARED, SKIPPED, SOURCE_BYTES, TARGET_BYTES, DURATION_MS, DURATION_COUNT, IGNORED)
    found = dict(FinishedCount.objects.values_list("name", "value"))
    return {name: found.get(name, 0) for name in names}
