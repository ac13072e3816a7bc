"""The admin dashboard (/admin/dashboard/) through Django's test client: each panel's numbers equal what a
plain Python reading of the task table says, who may see the page and its Retry buttons, one query per panel.

``DATABASE_URL`` unset: SQLite. The PostgreSQL run (test_the_same_on_postgresql) starts a real
PostgreSQL and runs this module again in a child pytest against it.
"""
from __future__ import annotations

import datetime
import os
import random
import re

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversions import admin_dashboard, dashboard
from conversions.models import ConversionTask, Status
from tests.service.conftest import HOST

DASH = "/admin/dashboard/"


def day_start(days_ago: int) -> datetime.datetime:
    return timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0) - datetime.timedelta(days=days_ago)


def task(name: str, status: str, *, created: datetime.datetime, took: float | None = None, **fields) -> ConversionTask:
    finished = created + datetime.timedelta(seconds=took) if took is not None else None
    return ConversionTask.objects.create(source=f"{HOST}/library/{name}:1", status=status, created=created,
                                         finished=finished, **fields)


def known_tasks() -> dict:
    """A week of tasks with hand-checked answers; returns them by name."""
    d1, d2, d3 = day_start(1), day_start(2), day_start(3)
    made = {}
    for i, took in enumerate((10, 20, 30)):
        made[f"e{i}"] = task(f"e{i}", Status.COMPLETED, created=d1 + datetime.timedelta(hours=2, minutes=i), took=took,
                             driver="estargz", source_size=1000 * (i + 1), target_size=1100 * (i + 1))
    made["f1"] = task("f1", Status.FAILED, created=d1 + datetime.timedelta(hours=5), took=3, driver="estargz",
                      reason="manifest unknown: library/f1:1 (registry said 404)")
    made["z0"] = task("z0", Status.COMPLETED, created=d2 + datetime.timedelta(hours=23), took=100,
                      driver="zstdchunked", source_size=5000, target_size=4000)
    made["z1"] = task("z1", Status.COMPLETED, created=d2 + datetime.timedelta(hours=1), took=40,
                      driver="zstdchunked", source_size=7000, target_size=6000)
    made["f2"] = task("f2", Status.FAILED, created=d2 + datetime.timedelta(hours=3), took=7,
                      reason="conversion timed out after 60 s (converter.timeout)")
    # Left out of durations and bytes: nothing converted (skipped) and a follower of another conversion.
    made["skip"] = task("skip", Status.COMPLETED, created=d3, took=900, driver="estargz", skipped=True,
                        source_size=10**9)
    made["follow"] = task("follow", Status.COMPLETED, created=d3, took=800, driver="estargz",
                          shared_with=made["z0"], source_size=10**9)
    made["old"] = task("old", Status.COMPLETED, created=day_start(9), took=5000, driver="estargz")
    now = timezone.now()
    made["run"] = task("run", Status.PROCESSING, created=d3, started=now, heartbeat=now, queued=now)
    made["dead"] = task("dead", Status.PROCESSING, created=d3, started=now - datetime.timedelta(hours=1),
                        heartbeat=now - datetime.timedelta(hours=1), queued=now - datetime.timedelta(hours=1))
    made["wait"] = task("wait", Status.PROCESSING, created=day_start(0), queued=now)
    return made


def python_per_day(start: datetime.datetime) -> dict:
    """The oracle: every task read back and counted in Python, no SQL grouping."""
    out: dict = {}
    for t in ConversionTask.objects.all():
        if t.created >= start:
            key = (timezone.localtime(t.created).date().isoformat(), t.status)
            out[key] = out.get(key, 0) + 1
    return out


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = -(-len(ordered) * round(p * 100) // 100)  # ceil(n * p) in integers
    return ordered[k - 1]


def user(name: str, *codenames: str, staff: bool = True) -> Client:
    u = User.objects.create_user(name, password="dash-pass-1", is_staff=staff)
    u.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    assert client.login(username=name, password="dash-pass-1")
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("own_sql", [True, False], ids=["own-sql", "portable"])
def test_panels_equal_the_database(acceld, monkeypatch, own_sql):
    # The PostgreSQL run says which database it expects, so a fallback to SQLite cannot pass for it.
    assert connection.vendor == os.environ.get("DASHBOARD_TEST_VENDOR", connection.vendor)
    if not own_sql:  # what a database without hand-written expressions (MySQL) runs: Django's portable ones
        monkeypatch.setattr(dashboard, "OWN_SQL", ())
    known_tasks()
    start, _ = admin_dashboard.window(timezone.now())

    counts = dashboard.timeline(start)
    days = {(row["day"].isoformat(), status): n for row in admin_dashboard.per_day(counts, start)
            for status, n in row["counts"] if n}
    assert days == python_per_day(start)
    assert days[(day_start(1).date().isoformat(), "COMPLETED")] == 3
    assert days[(day_start(2).date().isoformat(), "FAILED")] == 1
    assert sum(counts.values()) == ConversionTask.objects.filter(created__gte=start).count() == 12

    d = dashboard.durations(start)
    # 10, 20, 30, 40, 100 s: the 3rd and the 5th (ceil(5 * 0.95) = 5)
    assert (d.count, d.median, d.p95) == (5, datetime.timedelta(seconds=30), datetime.timedelta(seconds=100))

    assert dashboard.bytes_by_driver(start) == [
        {"driver": "zstdchunked", "n": 2, "source": 12000, "target": 10000},
        {"driver": "estargz", "n": 3, "source": 6000, "target": 6600},
    ]
    assert [t.source.split("/")[-1] for t in dashboard.slowest(start)] == ["z0:1", "z1:1", "e2:1", "e1:1", "e0:1"]
    assert [t.source.split("/")[-1] for t in dashboard.recent_failures()] == ["f1:1", "f2:1"]

    q = dashboard.queue()
    assert (q.waiting, q.running, q.stale, q.followers) == (1, 1, 1, 0)
    assert q.broker_ready == 0 and q.clusters is None  # ORM broker, per-process cache: not visible here


@pytest.mark.django_db
@pytest.mark.parametrize("own_sql", [True, False], ids=["own-sql", "portable"])
@pytest.mark.parametrize("n", [1, 2, 19, 20, 21, 37, 100, 101])
def test_percentiles_are_nearest_rank(acceld, monkeypatch, n, own_sql):
    if not own_sql:
        monkeypatch.setattr(dashboard, "OWN_SQL", ())
    rng = random.Random(n)
    base = day_start(1)
    took = [rng.randint(1, 5000) / 10 for _ in range(n)]
    for i, seconds in enumerate(took):
        task(f"p{i}", Status.COMPLETED, created=base + datetime.timedelta(seconds=i), took=seconds)
    d = dashboard.durations(day_start(6))
    assert d.count == n
    assert d.median.total_seconds() == pytest.approx(nearest_rank(took, 0.5))
    assert d.p95.total_seconds() == pytest.approx(nearest_rank(took, 0.95))


@pytest.mark.django_db
def test_empty_database(acceld):
    assert dashboard.durations(day_start(6)) == dashboard.Durations(0, None, None)
    assert dashboard.bytes_by_driver(day_start(6)) == [] and dashboard.timeline(day_start(6)) == {}
    page = user("viewer", "view_conversiontask").get(DASH)
    assert page.status_code == 200 and b"No failures." in page.content


def cell(html: str, day: str, status: str) -> int:
    row = re.search(rf'<tr data-day="{day}">(.*?)</tr>', html, re.S).group(1)
    return int(re.search(rf'data-status="{status}">(\d+)<', row).group(1))


@pytest.mark.django_db(transaction=True)
def test_page_for_a_viewer_and_a_converter(acceld):
    made = known_tasks()
    viewer = user("viewer", "view_conversiontask")
    with CaptureQueriesContext(connection) as queries:
        page = viewer.get(DASH)
    assert page.status_code == 200
    html = page.content.decode()
    start, _ = admin_dashboard.window(timezone.now())
    for (day, status), n in python_per_day(start).items():
        assert cell(html, day, status) == n, (day, status)
    assert 'id="duration-median">30.0 s<' in html and 'id="duration-p95">1 min 40 s<' in html
    assert re.search(r'<tr data-driver="estargz">.*?data-bytes="6000".*?data-bytes="6600"', html, re.S)
    assert "manifest unknown: library/f1:1 (registry said 404)" in html
    assert 'id="queue-running">1<' in html and 'id="queue-stale" class="warn">1<' in html
    assert "<svg" in html and 'class="bar-completed"' in html
    assert ' style="' not in html.split('id="content-main"', 1)[1]  # the CSP refuses inline styles
    assert "retry-button" not in html and 'name="action"' not in html  # a viewer starts nothing
    # One query per panel (timeline, durations, bytes, slowest, failures, queue, broker x2), plus the
    # session, the user and permission look-ups: a constant, however many tasks there are.
    panel_queries = [q for q in queries.captured_queries if "conversions_conversiontask" in q["sql"]
                     or "django_q_ormq" in q["sql"]]
    assert len(panel_queries) == 8, [q["sql"][:120] for q in panel_queries]
    assert 'id="dashboard-link"' in viewer.get("/admin/").content.decode()

    converter = user("converter", "view_conversiontask", "convert_image")
    html = converter.get(DASH).content.decode()
    form = re.search(rf'<form method="post" action="([^"]+)" class="retry-form">(.*?)</form>', html, re.S)
    assert form and str(made["f1"].pk) in html
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(2)))
    assert fields["action"] == "retry" and fields["_selected_action"] == str(made["f1"].pk)
    done = converter.post(form.group(1), fields, follow=True)
    assert "Re-queued 1 failed task(s)." in done.content.decode()
    assert ConversionTask.objects.get(pk=made["f1"].pk).status == Status.PROCESSING

    # The same post from the viewer does nothing (the action is not offered to it).
    viewer.post(form.group(1), {**fields, "_selected_action": str(made["f2"].pk)})
    assert ConversionTask.objects.get(pk=made["f2"].pk).status == Status.FAILED


@pytest.mark.django_db
def test_who_may_see_it(acceld):
    assert Client().get(DASH).status_code == 302  # to the login page
    assert user("nobody").get(DASH).status_code == 403  # staff without view_conversiontask
    assert 'id="dashboard-link"' not in user("nobody2").get("/admin/").content.decode()
    assert user("outsider", "view_conversiontask", staff=False).get(DASH).status_code == 302


@pytest.mark.slow
def test_the_same_on_postgresql():
    """Every test above again, in a child pytest whose database is a real PostgreSQL."""
    from tests.support.dbservers import outcomes, pytest_on_postgresql

    run = pytest_on_postgresql(__file__, deselect="postgresql", env={"DASHBOARD_TEST_VENDOR": "postgresql"})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    # Every test above (2 + 16 parametrized, 3 plain; count them again when adding one) passed, none skipped,
    # and only this one was left out.
    assert outcomes(run) == {"passed": 21, "deselected": 1}, run.stdout[-4000:]
