"""The services and ``conversions.counters`` under concurrent transactions on PostgreSQL (READ COMMITTED), where
two hosts' workers finish tasks, and webhooks arrive, at the same instant. SQLite lets one writer at a time, so these
interleavings cannot happen there.

Only for PostgreSQL, so this file's name is outside pytest's ``python_files`` (test_*.py): the main run does
not collect it (nothing to report as skipped), and test_races_on_postgresql.py runs it by name in a child
pytest against a real server (tests/support/dbservers.py), asserting every test here passed. Run by hand:
``DATABASE_URL=postgres://... pytest tests/service/pg_races.py``.

The interleaving that lost counts (tests/e2e/test_scaleout_hosts.py, once in ~8 runs): transaction T2's
UPDATE of the totals finds no row for a total nobody has added to yet, because T1 has just inserted it and
not committed; T1 commits; T2 then read the rows back, found them, and added nothing.
"""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection, connections, transaction

from conversions import counters, services
from conversions.models import ConversionTask, FinishedCount, Status
from tests.service.conftest import HOST


@pytest.fixture(autouse=True)
def on_postgresql():
    """Fails, never skips: run on SQLite (no DATABASE_URL) these tests would say nothing about PostgreSQL."""
    assert connection.vendor == "postgresql", f"needs DATABASE_URL=postgres://..., this run is on {connection.vendor}"


class FirstTransaction(threading.Thread):
    """Runs ``work`` in a transaction of its own connection and holds it open until ``let_commit`` is set,
    or until another transaction waits for one of its locks (whatever the code under test does, T1 then
    commits at the one moment that matters: while T2 is in the middle of its own addition)."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work = work
        self.did_work, self.let_commit, self.committed = threading.Event(), threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                self.work()
                self.did_work.set()
                cursor.execute("SELECT pg_backend_pid()")
                me = cursor.fetchone()[0]
                deadline = time.monotonic() + 20
                while not self.let_commit.wait(0.01) and time.monotonic() < deadline:
                    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                   [me])
                    if cursor.fetchone()[0]:
                        break
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
        finally:
            self.committed.set()
            connections.close_all()


def race(first, second) -> None:
    """``first`` in T1, then ``second`` in T2 on this thread; T1 commits right after T2's first UPDATE of
    the totals (or when T2 waits for T1), then T2 commits."""
    t1 = FirstTransaction(first)
    t1.start()
    assert t1.did_work.wait(20), "T1 did not get going"

    def commit_t1_after_first_update(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith("UPDATE") and FinishedCount._meta.db_table in sql:
            t1.let_commit.set()
            assert t1.committed.wait(20)
        return result

    with connection.execute_wrapper(commit_t1_after_first_update), transaction.atomic():
        second()
    t1.join(20)
    assert t1.error is None, t1.error
    assert t1.committed.is_set()


@pytest.mark.django_db(transaction=True)
def test_two_first_additions_to_a_total_both_count():
    name = f"probe_{uuid.uuid4().hex[:8]}"  # a total no row exists for yet
    race(lambda: counters.add(**{name: 1, counters.FAILED: 10}), lambda: counters.add(**{name: 2, counters.FAILED: 20}))
    assert dict(FinishedCount.objects.filter(name__in=[name, counters.FAILED]).values_list("name", "value")) == {
        name: 3, counters.FAILED: 30}


def blocking_others(cursor) -> bool:
    """Whether another backend waits for a lock this connection's transaction holds."""
    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))")
    return bool(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_an_addition_waiting_for_anothers_new_row_counts_both():
    """T1 has made a missing row and not yet added to it; T2 (adding to that row and to one that exists)
    waits for T1's row. Both additions count, nothing deadlocks (the old code lost T2's addition to the
    new row: its UPDATE did not see it, its read-back did)."""
    made, new = f"made_{uuid.uuid4().hex[:8]}", f"new_{uuid.uuid4().hex[:8]}"
    counters.add(**{made: 100})
    inserted, t2_waited = threading.Event(), threading.Event()

    def pause_after_making_the_row(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith("INSERT") and FinishedCount._meta.db_table in sql:
            inserted.set()
            with connection.cursor() as cursor:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    if blocking_others(cursor):
                        t2_waited.set()
                        break
                    time.sleep(0.01)
        return result

    def first():
        with connection.execute_wrapper(pause_after_making_the_row):
            counters.add(**{made: 1, new: 1})

    t1 = FirstTransaction(first)
    t1.start()
    assert inserted.wait(20)
    with transaction.atomic():
        counters.add(**{made: 2, new: 2})
    t1.join(20)
    assert t1.error is None, t1.error
    assert t2_waited.is_set(), "T2 never waited for T1's new row: the interleaving did not happen"
    assert dict(FinishedCount.objects.filter(name__in=[made, new]).values_list("name", "value")) == {
        made: 103, new: 3}


def leader_with_followers(repo: str, followers: int) -> ConversionTask:
    source = f"{HOST}/scale/{repo}:1"
    leader = ConversionTask.objects.create(source=source, target=f"{source}-esgz", status=Status.PROCESSING,
                                           run_token=uuid.uuid4())
    for _ in range(followers):
        ConversionTask.objects.create(source=source, target=leader.target, status=Status.PROCESSING,
                                      shared_with=leader)
    return leader


def complete(leader: ConversionTask):
    return lambda: services._finish(leader.pk, leader.run_token, status=Status.COMPLETED, reason="",
                                    source_size=1000, target_size=900, durations={"total": 1.5})


@pytest.mark.django_db(transaction=True)
def test_the_first_two_conversions_to_finish_on_two_hosts_both_count():
    """The scale-out incident: two shared sources' leaders finish at once on a fresh database; each
    conversion and each of its three followers is counted."""
    FinishedCount.objects.all().delete()  # as after migrate: nothing has finished yet
    one, two = leader_with_followers("img00", 3), leader_with_followers("img01", 3)
    race(complete(one), complete(two))
    assert set(ConversionTask.objects.values_list("status", flat=True)) == {Status.COMPLETED}
    totals = counters.totals()
    assert (totals[counters.COMPLETED], totals[counters.SHARED]) == (2, 6), totals
    assert (totals[counters.SOURCE_BYTES], totals[counters.DURATION_COUNT], totals[counters.DURATION_MS]) == (
        2000, 2, 3000)


@pytest.mark.django_db(transaction=True)
def test_a_finish_racing_its_own_takeover_counts_once():
    """A run that finishes while the reaper re-queues its task (host B's last breath vs host A): the
    loser's outcome is dropped, and only the winner's finish is counted."""
    FinishedCount.objects.all().delete()
    leader = leader_with_followers("img02", 3)
    stale_token = leader.run_token
    requeued = []
    t1 = FirstTransaction(lambda: requeued.append(services.conversion_requeue(task_id=leader.pk)))
    t1.start()
    assert t1.did_work.wait(20)
    # The old run's _finish waits for the re-queue's row lock, then finds its token stale.
    assert services._finish(leader.pk, stale_token, status=Status.COMPLETED, reason="") is None
    t1.join(20)
    assert t1.error is None and requeued[0] is not None
    leader.refresh_from_db()
    assert services._finish(leader.pk, leader.run_token, status=Status.COMPLETED, reason="") is not None
    totals = counters.totals()
    assert (totals[counters.COMPLETED], totals[counters.SHARED]) == (1, 3), totals


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_of_one_ignored_event_at_once_count_once():
    FinishedCount.objects.all().delete()
    image = f"{HOST}/other/app:v1"
    counted = []
    t1 = FirstTransaction(lambda: counted.append(counters.count_ignored([image], event_id="ev-1")))
    t1.start()
    assert t1.did_work.wait(20)
    # The redelivery waits for the first delivery's row, then finds it.
    counted.append(counters.count_ignored([image], event_id="ev-1"))
    t1.join(20)
    assert t1.error is None and counted == [1, 0]
    assert counters.totals()[counters.IGNORED] == 1


@pytest.mark.django_db(transaction=True)
def test_a_request_arriving_as_its_leader_finishes_leads_a_new_conversion(settings):
    """A request finds a conversion of its source running (the unique index refuses it as a leader), and the
    conversion finishes before the request looks it up to follow it: the request leads a conversion itself."""
    from tests.service.conftest import FAKE_CONVERTER, make_config

    settings.ACCELD = make_config(Path(settings.ACCELD_WORK_DIR))
    settings.ACCELD_CONVERTER = FAKE_CONVERTER
    leader = leader_with_followers("img03", 0)
    finisher = threading.Thread(target=lambda: (complete(leader)(), connections.close_all()))

    def finish_leader_after_the_refusal(execute, sql, params, many, context):
        try:
            return execute(sql, params, many, context)
        except Exception:
            if not finisher.is_alive() and finisher.ident is None:
                finisher.start()  # commits COMPLETED before this request's lookup of the running leader
                finisher.join(20)
            raise

    with connection.execute_wrapper(finish_leader_after_the_refusal):
        task = services.conversion_create(source=leader.source)
    assert finisher.ident is not None, "the leader was not finished in the window"
    leader.refresh_from_db()
    task.refresh_from_db()
    assert leader.status == Status.COMPLETED
    assert (task.status, task.shared_with_id, task.target) == (Status.PROCESSING, None, leader.target)
    assert task.run_token is not None

