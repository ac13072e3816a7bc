"""The hand-rendered task list (conversions.listing) is byte for byte what DRF's TaskSerializer wrote,
and the per-process copy of the full list is never stale."""
from __future__ import annotations

import datetime
import json

import pytest
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from conversions import listing, selectors
from conversions.models import ConversionTask, Status
from conversions.renderers import AcceldJSONRenderer
from conversions.serializers import TaskSerializer
from tests.service.conftest import HOST

AWKWARD = ['quote " and backslash \\', "tab\tnew\nline\x00\x1f", "ünïcödé ✓ 😀", "sep\u2028para\u2029end",
           "</script>"]


def drf_bytes(qs) -> bytes:
    return AcceldJSONRenderer().render(TaskSerializer(qs, many=True).data)


def make_tasks() -> None:
    base = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.timezone.utc)
    micro = [0, 1, 100000, 832260, 999999, 500000]
    for i in range(30):
        created = base + datetime.timedelta(seconds=i, microseconds=micro[i % len(micro)])
        status = [Status.COMPLETED, Status.FAILED, Status.PROCESSING][i % 3]
        later = datetime.timedelta(microseconds=micro[(i + 1) % len(micro)])
        finished = None if status == Status.PROCESSING else created + later
        ConversionTask.objects.create(
            source=f"{HOST}/library/app{i}:{AWKWARD[i % len(AWKWARD)][:3]}", status=status, created=created,
            finished=finished, source_size=i * 2**33, target_size=i, reason=AWKWARD[i % len(AWKWARD)])


@pytest.mark.django_db
def test_render_equals_drf_serializer(acceld):
    make_tasks()
    qs = selectors.conversion_list()
    assert listing.render(qs) == drf_bytes(qs)
    assert listing.task_list() == drf_bytes(qs)
    assert listing.render(qs.none()) == b"[]\n"


@pytest.mark.django_db
def test_other_databases_render_from_python_values(acceld, monkeypatch):
    # PostgreSQL and MySQL store times and UUIDs differently; their rows are formatted from Python objects.
    from django.db import connections

    make_tasks()
    monkeypatch.setattr(type(connections["default"]), "vendor", "postgresql")
    qs = selectors.conversion_list()
    assert listing.task_list() == drf_bytes(qs)


@pytest.mark.django_db
@pytest.mark.parametrize("kwargs", [{"status": Status.FAILED}, {"source": "APP1"}, {"offset": 4},
                                    {"limit": 3}, {"offset": 5, "limit": 7}, {"offset": 100}])
def test_filters_and_slices_equal_drf(acceld, kwargs):
    make_tasks()
    qs = selectors.conversion_list(status=kwargs.get("status", ""), source=kwargs.get("source", ""))
    offset, limit = kwargs.get("offset", 0), kwargs.get("limit")
    expected = drf_bytes(qs[offset:offset + limit] if limit else qs[offset:])
    assert listing.task_list(**kwargs) == expected


@pytest.mark.django_db
def test_api_list_uses_it_and_keeps_drf_for_other_shapes(acceld, api):
    acceld(server={"public_list": True})
    make_tasks()
    resp = api.get("/api/v1/conversions")
    assert resp.status_code == 200 and resp["Content-Type"] == "application/json"
    assert resp.content == drf_bytes(selectors.conversion_list())
    pretty = api.get("/api/v1/conversions?limit=2", headers={"Accept": "application/json; indent=2"}).content
    assert json.loads(pretty) == json.loads(api.get("/api/v1/conversions?limit=2").content) and b"\n  " in pretty
    assert len(json.loads(api.get("/api/v1/conversions?verbose=true").content)) == 30


@pytest.mark.django_db
def test_inside_a_transaction_nothing_is_reused(acceld):
    # A test's (or any caller's) open transaction sees rows no other connection does: no shared copy then.
    assert listing.task_list() == b"[]\n"
    ConversionTask.objects.create(source=f"{HOST}/library/a:1")
    assert len(json.loads(listing.task_list())) == 1


@pytest.mark.django_db(transaction=True)
def test_full_list_is_reused_until_anything_is_committed(acceld, monkeypatch):
    renders = []
    real = listing.render
    monkeypatch.setattr(listing, "render", lambda qs: renders.append(1) or real(qs))
    ConversionTask.objects.create(source=f"{HOST}/library/a:1")
    first = listing.task_list()
    assert listing.task_list() == first and len(renders) == 1  # nothing committed: the same bytes, no render
    task = ConversionTask.objects.create(source=f"{HOST}/library/b:1")
    assert [t["source"] for t in json.loads(listing.task_list())] == [f"{HOST}/library/b:1", f"{HOST}/library/a:1"]
    with transaction.atomic():  # an update of a listed field, committed by another connection's worth of code
        ConversionTask.objects.filter(pk=task.pk).update(status=Status.FAILED, reason="no", finished=timezone.now())
    assert json.loads(listing.task_list())[0]["status"] == "FAILED"
    ConversionTask.objects.filter(pk=task.pk).delete()
    assert len(json.loads(listing.task_list())) == 1
    assert len(renders) == 4
    assert listing.task_list(limit=1) and len(renders) == 5  # filtered and sliced lists are never kept


@pytest.fixture
def api():
    return APIClient()
