"""``/metrics``: Prometheus text through prometheus_client; gauges for now, counters that only go up."""
from __future__ import annotations

import uuid

import pytest
from django.db import transaction
from prometheus_client.parser import text_string_to_metric_families

from conversions import services
from conversions.models import ConversionTask, FinishedCount
from tests.service.conftest import HOST

pytestmark = pytest.mark.django_db(transaction=True)
NOT_FOUND = b'{"code":"ERR_INVALID_ENDPOINT","message":"Endpoint not found"}\n'


def scrape(api) -> dict[str, tuple[str, dict]]:
    """family name -> (type, {sample name + labels: value})."""
    resp = api.get("/metrics")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(resp.content.decode()):
        samples = {s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
                   for s in family.samples}
        out[family.name] = (family.type, samples)
    return out


def test_metrics_off_is_404(acceld, api):
    assert api.get("/metrics").content == NOT_FOUND


def test_counters_count_finishes_and_only_go_up(acceld, api, q_sync):
    acceld(metric={"enabled": True})
    assert scrape(api)["acceld_conversions_completed"] == ("counter", {"acceld_conversions_completed_total": 0})
    # q_sync: each queued run converts (FakeConverter: 1000 -> 1200 bytes, 0.01 s) when its transaction commits.
    services.conversion_create(source=f"{HOST}/library/nginx:1")
    services.conversion_create(source=f"{HOST}/library/nginx:fail")
    services.conversion_create(source=f"{HOST}/library/nginx:1-esgz")  # already converted: finished at once
    with transaction.atomic():  # the leader's run starts at commit, so the second task follows it
        leader = services.conversion_create(source=f"{HOST}/library/redis:7", trigger="api")
        follower = services.conversion_create(source=f"{HOST}/library/redis:7", trigger="api")
    assert follower.shared_with_id == leader.pk
    m = scrape(api)
    assert m["acceld_tasks"] == ("gauge", {"acceld_tasks{status=COMPLETED}": 4, "acceld_tasks{status=FAILED}": 1,
                                           "acceld_tasks{status=PROCESSING}": 0})
    assert m["acceld_conversions_running"] == ("gauge", {"acceld_conversions_running": 0})
    totals = {name: m[name][1][name + "_total"] for name in (
        "acceld_conversions_completed", "acceld_conversions_failed", "acceld_tasks_shared", "acceld_tasks_skipped",
        "acceld_source_bytes", "acceld_target_bytes")}
    assert all(m[name][0] == "counter" for name in totals)
    assert totals == {"acceld_conversions_completed": 2, "acceld_conversions_failed": 1, "acceld_tasks_shared": 1,
                      "acceld_tasks_skipped": 1, "acceld_source_bytes": 2000, "acceld_target_bytes": 2400}
    kind, summary = m["acceld_conversion_duration_seconds"]
    assert kind == "summary" and summary["acceld_conversion_duration_seconds_count"] == 2
    assert summary["acceld_conversion_duration_seconds_sum"] == pytest.approx(0.02)

    # A stale run changes nothing; deleting the history lowers the gauges, never the counters.
    task = ConversionTask.objects.filter(status="COMPLETED", skipped=False).first()
    assert services.conversion_run(task_id=task.pk, token=uuid.uuid4()) is None
    ConversionTask.objects.all().delete()
    after = scrape(api)
    assert after["acceld_tasks"][1]["acceld_tasks{status=COMPLETED}"] == 0
    assert after["acceld_conversions_completed"][1]["acceld_conversions_completed_total"] == 2
    assert after["acceld_source_bytes"][1]["acceld_source_bytes_total"] == 2000


def test_a_rolled_back_finish_counts_nothing(acceld):
    from django.db import transaction

    from conversions import counters

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        counters.add(**{counters.COMPLETED: 1})
        raise Rollback
    counters.add(**{counters.COMPLETED: 2, counters.FAILED: 1})
    counters.add(**{counters.COMPLETED: 3})
    assert dict(FinishedCount.objects.values_list("name", "value")) == {counters.COMPLETED: 5, counters.FAILED: 1}
