"""The admin through Django's test client: read-only list, filters, actions and the convert form."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django_q.models import OrmQ

from conversions import services
from conversions.models import ConversionTask, Status, Trigger
from tests.service.conftest import HOST

pytestmark = pytest.mark.django_db(transaction=True)
LIST = "/admin/conversions/conversiontask/"


@pytest.fixture
def staff(acceld):
    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pass-1")
    client = Client()
    assert client.login(username="admin", password="admin-pass-1")
    return client


def failed_task(source=f"{HOST}/library/nginx:latest", reason="blob unknown: sha256:abc\nsecond line"):
    return ConversionTask.objects.create(source=source, status=Status.FAILED, reason=reason,
                                         source_size=70254592, target_size=72351744)


def test_list_is_read_only_with_filters_and_search(staff):
    failed_task()
    ConversionTask.objects.create(source=f"{HOST}/library/redis:7", status=Status.COMPLETED)
    page = staff.get(LIST).content.decode()
    assert "67.0\xa0MB" in page and "69.0\xa0MB" in page  # human-readable sizes
    assert "blob unknown: sha256:abc\nsecond line" in page  # the reason, whole
    assert "Convert an image" in page and "conversiontask/add/" not in page
    failed_only = staff.get(LIST + "?status__exact=FAILED").content.decode()
    assert "library/nginx" in failed_only and "library/redis" not in failed_only
    assert "library/redis" in staff.get(LIST + "?q=redis").content.decode()
    assert staff.get(LIST + "?created__year=2999").status_code == 200  # date hierarchy


def test_no_add_no_edit(staff):
    task = failed_task()
    assert staff.get(LIST + "add/").status_code == 403
    change = reverse("admin:conversions_conversiontask_change", args=[task.pk])
    page = staff.get(change)
    assert page.status_code == 200 and b'name="source"' not in page.content  # shown, not editable
    assert staff.post(change, {"source": "evil/x:y", "status": "COMPLETED"}).status_code == 403
    assert ConversionTask.objects.get(pk=task.pk).status == Status.FAILED


def test_retry_action_requeues_only_failed(staff):
    failed = failed_task()
    done = ConversionTask.objects.create(source=f"{HOST}/library/redis:7", status=Status.COMPLETED)
    resp = staff.post(LIST, {"action": "retry", "_selected_action": [str(failed.pk), str(done.pk)]}, follow=True)
    text = resp.content.decode()
    assert "Re-queued 1 failed task(s)." in text and "Skipped 1 task(s) that had not failed" in text
    failed.refresh_from_db()
    done.refresh_from_db()
    assert failed.status == Status.PROCESSING and failed.reason == "" and failed.run_token is not None
    assert done.status == Status.COMPLETED
    assert OrmQ.objects.count() == 1


def test_convert_again_makes_a_new_task(staff):
    done = ConversionTask.objects.create(source=f"{HOST}/library/redis:7", status=Status.COMPLETED)
    resp = staff.post(LIST, {"action": "convert_again", "_selected_action": [str(done.pk)]}, follow=True)
    assert "Started 1 conversion(s)." in resp.content.decode()
    new = ConversionTask.objects.exclude(pk=done.pk).get()
    assert (new.source, new.status, new.trigger) == (done.source, Status.PROCESSING, Trigger.ADMIN)


def test_convert_form(staff):
    url = reverse("admin:conversions_conversiontask_convert")
    assert b'name="source"' in staff.get(url).content
    bad = staff.post(url, {"source": "Not A Reference!"})
    assert bad.status_code == 200 and b"invalid image reference" in bad.content
    assert ConversionTask.objects.count() == 0
    ok = staff.post(url, {"source": f"{HOST}/library/nginx"}, follow=True)
    assert f"Started the conversion of {HOST}/library/nginx:latest." in ok.content.decode()
    assert ConversionTask.objects.get().trigger == Trigger.ADMIN


def test_running_tasks_cannot_be_deleted(staff):
    running = services.conversion_create(source=f"{HOST}/library/nginx:latest")
    delete = reverse("admin:conversions_conversiontask_delete", args=[running.pk])
    assert staff.post(delete, {"post": "yes"}).status_code == 403
    finished = failed_task(source=f"{HOST}/library/old:1")
    assert staff.post(reverse("admin:conversions_conversiontask_delete", args=[finished.pk]),
                      {"post": "yes"}).status_code == 302
    assert list(ConversionTask.objects.values_list("pk", flat=True)) == [running.pk]


def test_admin_needs_login(acceld):
    resp = Client().get(LIST)
    assert resp.status_code == 302 and "/admin/login/" in resp["Location"]


def test_routes_show_route_and_target_and_convert_again_keeps_the_route(staff, acceld):
    acceld(converter={"routes": [
        {"name": "esgz-route", "target": "{host}/{path}:{tag}-esgz"},
        {"name": "accel-route", "target": "{host}/{project}-accel/{rest}:{tag}"}]})
    task = services.conversion_create(source=f"{HOST}/library/redis:7", route="accel-route")
    page = staff.get(LIST).content.decode()
    assert "accel-route" in page and f"{HOST}/library-accel/redis:7" in page
    only = staff.get(LIST + "?route=esgz-route").content.decode()  # the route filter
    assert "library/redis" not in only
    detail = staff.get(reverse("admin:conversions_conversiontask_change", args=[task.pk])).content.decode()
    assert "accel-route" in detail and f"{HOST}/library-accel/redis:7" in detail
    ConversionTask.objects.filter(pk=task.pk).update(status=Status.FAILED)
    staff.post(LIST, {"action": "convert_again", "_selected_action": [str(task.pk)]}, follow=True)
    new = ConversionTask.objects.exclude(pk=task.pk).get()
    assert (new.route, new.target) == ("accel-route", f"{HOST}/library-accel/redis:7")


def test_convert_form_with_routes_makes_a_task_per_matching_route(staff, acceld):
    acceld(converter={"routes": [
        {"name": "esgz-route", "target": "{host}/{path}:{tag}-esgz"},
        {"name": "releases", "match": {"tag": ["v*"]}, "target": "{host}/{project}-accel/{rest}:{tag}"}]})
    url = reverse("admin:conversions_conversiontask_convert")
    ok = staff.post(url, {"source": f"{HOST}/library/nginx:v1"}, follow=True)
    assert f"Started the conversion of {HOST}/library/nginx:v1 (routes: esgz-route, releases)." in ok.content.decode()
    assert sorted(ConversionTask.objects.values_list("route", flat=True)) == ["esgz-route", "releases"]
    out = staff.post(url, {"source": f"{HOST}/library/nginx:v1-esgz"})  # an output: refused, says why
    assert out.status_code == 200 and "output of route &#x27;esgz-route&#x27;" in out.content.decode()
