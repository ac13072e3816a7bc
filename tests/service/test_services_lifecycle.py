"""The services' guarded state changes: create, share, run, retry, recover; progress and heartbeat."""
from __future__ import annotations

import datetime
import threading
import time
import uuid

import pytest
from django.db import connections
from django.utils import timezone
from django_q.models import OrmQ

from acceleration_sdk.errors import ReferenceError_
from conversions import services
from conversions.errors import InvalidState
from conversions.models import ConversionTask, Status, Trigger
from conversions.progress import ProgressReporter, percent
from conversions.recovery import recover_interrupted
from tests.service.conftest import HOST
from tests.service.fake_converter import FakeProgressEvent

pytestmark = pytest.mark.django_db(transaction=True)
SRC = f"{HOST}/library/nginx:latest"


def run_queued() -> None:
    """Play the worker: run every queued message in order, as the cluster would."""
    from django_q.signing import SignedPackage

    for message in OrmQ.objects.order_by("id"):
        pack = SignedPackage.loads(message.payload)
        module, func = pack["func"].rsplit(".", 1)
        getattr(__import__(module, fromlist=[func]), func)(*pack["args"])
        message.delete()


def test_create_normalises_and_records_origin(acceld):
    acceld(provider={"source": {"docker.io": {}}})
    task = services.conversion_create(source="nginx", trigger=Trigger.ADMIN)
    assert task.source == "docker.io/library/nginx:latest"
    assert task.target == "docker.io/library/nginx:latest-esgz"
    assert (task.trigger, task.driver, task.status) == ("admin", "estargz", Status.PROCESSING)
    with pytest.raises(ReferenceError_):
        services.conversion_create(source="not a reference")


def test_digest_only_source_targets_latest_suffix(acceld):
    digest = "sha256:" + "e" * 64
    task = services.conversion_create(source=f"{HOST}/library/nginx@{digest}")
    assert task.target == f"{HOST}/library/nginx:latest-esgz"


def test_followers_end_with_their_leader(acceld):
    tasks = [services.conversion_create(source=SRC) for _ in range(4)]
    leader = tasks[0]
    assert all(t.shared_with_id == leader.pk for t in tasks[1:])
    run_queued()
    assert acceld.fake.calls == [SRC]
    done = ConversionTask.objects.filter(pk__in=[t.pk for t in tasks])
    assert {(t.status, t.source_size, t.target_size, t.finished) for t in done} == {
        (Status.COMPLETED, 1000, 1200, ConversionTask.objects.get(pk=leader.pk).finished)}


def test_a_failed_leader_fails_its_followers_with_its_reason(acceld):
    src = f"{HOST}/library/nginx:fail"
    tasks = [services.conversion_create(source=src) for _ in range(3)]
    run_queued()
    rows = ConversionTask.objects.filter(pk__in=[t.pk for t in tasks])
    assert {(t.status, t.reason) for t in rows} == {(Status.FAILED, f"fake failure converting {src}")}


def test_a_new_request_after_completion_converts_again(acceld):
    services.conversion_create(source=SRC)
    run_queued()
    second = services.conversion_create(source=SRC)
    assert second.shared_with_id is None and second.run_token is not None
    run_queued()
    assert acceld.fake.calls == [SRC, SRC]


def test_concurrent_creates_elect_one_leader(acceld):
    """Ten threads, ten connections to the SQLite file: one leader, nine followers, one queued run."""
    barrier = threading.Barrier(10)
    errors = []

    def create():
        try:
            barrier.wait(10)
            services.conversion_create(source=SRC)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=create) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert ConversionTask.objects.filter(shared_with=None).count() == 1
    assert ConversionTask.objects.exclude(shared_with=None).count() == 9
    assert OrmQ.objects.count() == 1


def test_run_is_idempotent_and_token_guarded(acceld):
    task = services.conversion_create(source=SRC)
    assert services.conversion_run(task_id=task.pk, token=uuid.uuid4()) is None  # a stale message
    assert acceld.fake.calls == []
    done = services.conversion_run(task_id=task.pk, token=task.run_token)
    assert done.status == Status.COMPLETED and done.attempts == 1
    assert services.conversion_run(task_id=task.pk, token=task.run_token) is None  # redelivered message
    assert acceld.fake.calls == [SRC]


def test_retry_only_failed_tasks(acceld):
    task = services.conversion_create(source=f"{HOST}/library/nginx:fail")
    with pytest.raises(InvalidState):
        services.conversion_retry(task_id=task.pk)  # still PROCESSING
    run_queued()
    failed = ConversionTask.objects.get(pk=task.pk)
    assert failed.status == Status.FAILED
    old_token = failed.run_token
    again = services.conversion_retry(task_id=task.pk)
    assert again.status == Status.PROCESSING and again.reason == "" and again.finished is None
    assert again.run_token != old_token and OrmQ.objects.count() == 1
    assert services.conversion_run(task_id=task.pk, token=old_token) is None  # the old run stays dead


def test_retry_joins_a_running_conversion(acceld):
    first = services.conversion_create(source=f"{HOST}/library/nginx:fail")
    run_queued()
    running = services.conversion_create(source=f"{HOST}/library/nginx:fail")
    retried = services.conversion_retry(task_id=first.pk)
    assert retried.shared_with_id == running.pk and retried.run_token is None


def test_progress_is_throttled_and_written(acceld):
    task = services.conversion_create(source=SRC)
    services.conversion_run(task_id=task.pk, token=task.run_token)  # claims the task
    task.refresh_from_db()
    task.status, task.run_token = Status.PROCESSING, uuid.uuid4()
    task.save()
    reporter = ProgressReporter(task.pk, task.run_token, progress_interval=0.2, heartbeat_interval=0.5)
    reporter.start()
    try:
        for i in range(1000):  # a flood of events
            reporter.on_event(FakeProgressEvent("pull", "sha256:l1", i, 1000, "pulling"))
        time.sleep(0.6)
        reporter.on_event(FakeProgressEvent("convert", "sha256:l1", 10, 20, "converting"))
        time.sleep(0.6)
    finally:
        reporter.stop()
        connections.close_all()
    row = ConversionTask.objects.get(pk=task.pk)
    assert row.progress["layers"]["sha256:l1"] == {"phase": "convert", "done": 10, "total": 20}
    assert row.progress["percent"] == 50 and row.heartbeat is not None
    assert 1 <= reporter.writes <= 8  # throttled: not one write per event


def test_percent_counts_phases():
    assert percent({}) == 0
    assert percent({"a": {"phase": "push", "done": 1, "total": 1}}) == 100
    assert percent({"a": {"phase": "pull", "done": 0, "total": 0},
                    "b": {"phase": "convert", "done": 5, "total": 10}}) == 25


def _age(task, **fields):
    ConversionTask.objects.filter(pk=task.pk).update(**fields)


def test_reaper_requeues_a_dead_run(acceld, settings):
    settings.ACCELD_STALE_AFTER = 5
    task = services.conversion_create(source=SRC)
    long_ago = timezone.now() - datetime.timedelta(seconds=30)
    _age(task, attempts=1, started=long_ago, heartbeat=long_ago + datetime.timedelta(seconds=2))
    OrmQ.objects.all().delete()  # the dead cluster's message is gone with it
    assert recover_interrupted() == {"requeued": 1, "failed": 0}
    assert recover_interrupted() == {"requeued": 0, "failed": 0}  # fresh token, not stale any more
    run_queued()
    row = ConversionTask.objects.get(pk=task.pk)
    assert row.status == Status.COMPLETED and row.attempts == 2


def test_reaper_leaves_live_runs_alone(acceld, settings):
    settings.ACCELD_STALE_AFTER = 60
    task = services.conversion_create(source=SRC)
    _age(task, attempts=1, started=timezone.now(), heartbeat=timezone.now())
    assert recover_interrupted() == {"requeued": 0, "failed": 0}


def test_reaper_gives_up_after_max_attempts_and_on_timeout(acceld, settings):
    settings.ACCELD_STALE_AFTER, settings.ACCELD_MAX_ATTEMPTS = 5, 3
    long_ago = timezone.now() - datetime.timedelta(seconds=300)
    crashed = services.conversion_create(source=SRC)
    follower = services.conversion_create(source=SRC)
    _age(crashed, attempts=3, started=long_ago, heartbeat=long_ago + datetime.timedelta(seconds=1))
    slow = services.conversion_create(source=f"{HOST}/library/redis:7")
    _age(slow, attempts=1, started=long_ago, heartbeat=long_ago + datetime.timedelta(seconds=59))  # timeout 60
    assert recover_interrupted() == {"requeued": 0, "failed": 2}
    rows = {t.pk: t for t in ConversionTask.objects.all()}
    assert "interrupted 3 times" in rows[crashed.pk].reason
    assert rows[follower.pk].status == Status.FAILED and rows[follower.pk].reason == rows[crashed.pk].reason
    assert rows[slow.pk].reason == "conversion timed out after 60 s (converter.timeout)"
