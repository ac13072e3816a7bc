"""The admin dashboard's reads (selectors, HackSoftware style): one aggregate query per panel.

Every panel is computed by the database, so the page costs the same with 100 or 100,000 tasks in the
window: the timeline groups by hour and status, the percentiles pick two rows by rank with window
functions, the bytes are sums per driver, the lists are LIMITed. Everything here runs unchanged on
SQLite (>= 3.25, for window functions) and PostgreSQL.

Two expressions are written for SQLite and PostgreSQL (other databases get Django's portable ones): Django's
hour truncation and datetime subtraction call a Python function for every row on SQLite, which made the
page five times slower with 20,000 tasks in the window than SQLite's own ``substr`` and ``julianday``.

A conversion's *duration* is ``finished - created``: what the person who pushed waits for, queue wait
and retries included. Only COMPLETED leaders count (not ``skipped`` ones, which did no work, nor
followers, which shared another task's conversion), as for ``/metrics``' counters.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.db.models import (CharField, Count, DurationField, ExpressionWrapper, F, FloatField, Func, IntegerField, Q,
                              QuerySet, Sum)
from django.db.models.expressions import Window
from django.db.models.functions import Floor, RowNumber, TruncHour
from django.utils import timezone

from .models import ConversionTask, Status
from .recovery import interrupted_q

WINDOW_DAYS = 7
LIST_LENGTH = 10  # rows in "slowest" and "recent failures": enough to spot a pattern, short enough to read


OWN_SQL = ("sqlite", "postgresql")  # the databases with hand-written expressions below


class HourOf(Func):
    """The UTC hour of a datetime as text, ``YYYY-MM-DD HH`` (settings.TIME_ZONE is UTC)."""

    output_field = CharField()

    def as_postgresql(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, **extra,
                              template="to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')")

    def as_sqlite(self, compiler, connection, **extra):
        # Django stores an aware datetime on SQLite as UTC text, "YYYY-MM-DD HH:MM:SS[.ffffff]".
        return super().as_sql(compiler, connection, template="substr(%(expressions)s, 1, 13)", **extra)


class SecondsBetween(Func):
    """``end - start`` in seconds (a float)."""

    output_field = FloatField()

    def __init__(self, end, start):
        super().__init__(end, start)

    def as_postgresql(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, template="EXTRACT(EPOCH FROM (%(expressions)s))",
                              arg_joiner=" - ", **extra)

    def as_sqlite(self, compiler, connection, **extra):
        # julianday() is a double of days: ~50 us resolution today, rounded to milliseconds by the callers.
        return super().as_sql(compiler, connection, template="((julianday(%(expressions)s)) * 86400.0)",
                              arg_joiner=") - julianday(", **extra)


def hour_created():
    return HourOf("created") if connection.vendor in OWN_SQL else TruncHour("created")


def duration():
    """``finished - created``: seconds on SQLite and PostgreSQL, a timedelta elsewhere."""
    if connection.vendor in OWN_SQL:
        return SecondsBetween("finished", "created")
    return ExpressionWrapper(F("finished") - F("created"), output_field=DurationField())


class Unindexed(Func):
    """A column compared without its index on SQLite (its documented unary ``+``).

    Without ANALYZE statistics SQLite prefers the ``status`` (or ``shared_with``) index, though
    ``COMPLETED`` (or "no leader") is most of a big table, over the ``created`` index that narrows to the
    window: 5x slower at 100,000 tasks. PostgreSQL keeps statistics and chooses well by itself.
    """

    template = "%(expressions)s"

    def as_sqlite(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, template="+%(expressions)s", **extra)


def as_timedelta(value) -> datetime.timedelta | None:
    if value is None or isinstance(value, datetime.timedelta):
        return value
    return datetime.timedelta(seconds=round(float(value), 3))


def as_hour(value) -> datetime.datetime:
    if isinstance(value, datetime.datetime):  # TruncHour's answer
        return value
    return datetime.datetime.strptime(value, "%Y-%m-%d %H").replace(tzinfo=datetime.timezone.utc)


def _conversions(since: datetime.datetime) -> QuerySet[ConversionTask]:
    """Completed conversions that did work, requested since ``since`` (``created`` is indexed)."""
    return (ConversionTask.objects.alias(state=Unindexed("status"), leader=Unindexed("shared_with_id"))
            .filter(state=Status.COMPLETED, skipped=False, leader__isnull=True, created__gte=since,
                    finished__isnull=False))


def timeline(since: datetime.datetime) -> dict[tuple[datetime.datetime, str], int]:
    """Tasks created since ``since`` by (hour, status now). One GROUP BY query."""
    # GROUP BY hour first, then status (both annotations, so in this order): grouped by status first,
    # SQLite (without ANALYZE statistics) walks the status index over the whole table, 5x slower at 100k.
    rows = (ConversionTask.objects.filter(created__gte=since).order_by()
            .annotate(hour=hour_created(), state=F("status")).values("hour", "state")
            .annotate(n=Count("pk")))
    return {(as_hour(row["hour"]), row["state"]): row["n"] for row in rows}


@dataclass(frozen=True, slots=True)
class Durations:
    count: int
    median: datetime.timedelta | None
    p95: datetime.timedelta | None


def durations(since: datetime.datetime) -> Durations:
    """Median and p95 (nearest rank: the ceil(n * p)-th shortest) of conversions requested since ``since``.

    One query: each row numbered by duration beside the row count, and only the two ranked rows returned
    (Django filters window functions in an outer query), so no duration list crosses the wire.
    """
    ranked = (_conversions(since).order_by()
              .annotate(duration=duration(),
                        rank=Window(RowNumber(), order_by=[duration().asc()]),  # ties: the same value either way
                        total=Window(Count("pk")))
              .filter(Q(rank=_rank_sql(50)) | Q(rank=_rank_sql(95)))
              .values_list("rank", "total", "duration"))
    rows = list(ranked)
    if not rows:
        return Durations(0, None, None)
    total = rows[0][1]
    by_rank = {rank: as_timedelta(seconds) for rank, _, seconds in rows}
    return Durations(total, by_rank[_rank(total, 50)], by_rank[_rank(total, 95)])


# Nearest rank ceil(n * p / 100) in integer arithmetic, the same in SQL and Python: a float product could
# round differently in each and miss the row. SQLite and PostgreSQL divide integers to an integer; other
# databases (MySQL answers a decimal) get FLOOR.
def _rank(n: int, percent: int) -> int:
    return (n * percent + 99) // 100


def _rank_sql(percent: int):
    quotient = (F("total") * percent + 99) / 100
    if connection.vendor not in OWN_SQL:
        quotient = Floor(quotient)
    return ExpressionWrapper(quotient, output_field=IntegerField())


def bytes_by_driver(since: datetime.datetime) -> list[dict]:
    """Source bytes pulled and target bytes pushed per driver (format), biggest first. One query."""
    rows = (_conversions(since).values("driver")
            .annotate(n=Count("pk"), source=Sum("source_size"), target=Sum("target_size"))
            .order_by("-source", "driver"))
    return [{"driver": r["driver"] or "(unknown)", "n": r["n"], "source": r["source"] or 0,
             "target": r["target"] or 0} for r in rows]


def slowest(since: datetime.datetime, limit: int = LIST_LENGTH) -> list[ConversionTask]:
    tasks = list(_conversions(since).annotate(took=duration()).order_by("-took", "pk")[:limit])
    for task in tasks:
        task.duration = as_timedelta(task.took)
    return tasks


def recent_failures(limit: int = LIST_LENGTH) -> list[ConversionTask]:
    """The newest FAILED tasks, whenever they were requested (an old failure nobody retried is still news).

    Newest by ``created``, which is indexed: the database walks back from the newest task and stops at the
    ``limit``-th failure, where ordering by ``finished`` would sort every failure ever recorded.
    """
    return list(ConversionTask.objects.alias(state=Unindexed("status")).filter(state=Status.FAILED)
                .order_by("-created", "-pk")[:limit])


@dataclass(frozen=True, slots=True)
class Queue:
    waiting: int        # PROCESSING leaders no worker has started yet
    running: int        # started leaders whose worker wrote a heartbeat within ACCELD_STALE_AFTER
    stale: int          # leaders the reaper will re-queue or fail (conversions.recovery.interrupted)
    followers: int      # tasks waiting on another task's conversion
    broker_ready: int | None    # messages in the queue no worker holds (None: the broker cannot say)
    broker_taken: int | None    # messages a worker holds and has not acknowledged
    clusters: list[dict] | None  # django-q2's cluster reports (None: not visible from this process)


def queue(now: datetime.datetime | None = None) -> Queue:
    """Queue depth and live workers, from the task table (one query) and the broker.

    A worker is alive while it writes its conversion's heartbeat; a PROCESSING leader without a fresh one
    is what the reaper picks up (``conversions.recovery``). django-q2's own cluster reports (``Stat``)
    live in the broker's cache: Redis, or the Django cache, which is per process unless configured shared.
    """
    now = now or timezone.now()
    fresh_after = now - datetime.timedelta(seconds=settings.ACCELD_STALE_AFTER)
    leaders = Q(status=Status.PROCESSING, shared_with__isnull=True)
    stale = interrupted_q(now)
    counts = ConversionTask.objects.filter(status=Status.PROCESSING).aggregate(  # status is indexed
        waiting=Count("pk", filter=leaders & Q(started__isnull=True) & ~stale),
        running=Count("pk", filter=leaders & Q(started__isnull=False, heartbeat__gte=fresh_after)),
        stale=Count("pk", filter=stale),
        followers=Count("pk", filter=Q(status=Status.PROCESSING, shared_with__isnull=False)),
    )
    ready, taken, clusters = _broker_state()
    return Queue(broker_ready=ready, broker_taken=taken, clusters=clusters, **counts)


def _broker_state() -> tuple[int | None, int | None, list[dict] | None]:
    from django.core.cache.backends.locmem import LocMemCache
    from django_q.brokers import Broker, get_broker
    from django_q.status import Stat

    broker = get_broker()
    try:
        ready = broker.queue_size()
    except Exception:  # a broker that is down: the page still shows what the task table knows
        ready = None
    try:
        taken = broker.lock_size()
    except Exception:
        taken = None
    # Redis keeps the cluster reports itself; the ORM broker keeps them in the Django cache, which by
    # default is per process, where the web server never sees the qcluster's report. Say "not visible"
    # then, rather than "no workers".
    in_broker = type(broker).get_stats is not Broker.get_stats
    cache = getattr(broker, "cache", None)
    if not in_broker and (cache is None or isinstance(cache, LocMemCache)):
        return ready, taken, None
    try:
        stats = Stat.get_all(broker)
    except Exception:
        return ready, taken, None
    return ready, taken, [{"host": s.host, "cluster": str(s.cluster_id), "status": s.status,
                           "workers": len(s.workers)} for s in stats]
