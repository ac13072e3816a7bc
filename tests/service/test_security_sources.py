"""Only images of configured hosts are converted, whoever asks (issue 12.1 in the service layer), and
one event cannot become thousands of tasks or one long transaction (issue 12.3).

The attack: the service pulls from a source's host and pushes to it with its robot credentials, so a
task for ``127.0.0.2:8080/x:1`` makes the worker connect anywhere (a port scanner with reasons) and a
task for a configured host it was never meant to convert pushes a tag there. Every path that makes or
restarts a task must refuse such a source, not only the webhook's header check.
"""
from __future__ import annotations

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from django.urls import reverse

from acceleration_sdk import cli_task
from conversions import services
from conversions.errors import SourceNotAllowed
from conversions.models import ConversionTask, Status, Trigger
from tests.service.conftest import AUTH, HOST, post_webhook, push_payload

pytestmark = pytest.mark.django_db(transaction=True)
ELSEWHERE = "127.0.0.2:8080/latest/meta-data:1"  # a host nobody configured
CHANGELIST = "/admin/conversions/conversiontask/"
REFUSED = "127.0.0.2:8080 is not a configured registry (provider.source)"


@pytest.fixture
def superuser(acceld):
    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pass-1")
    client = Client()
    assert client.login(username="admin", password="admin-pass-1")
    return client


def test_create_refuses_an_unconfigured_host(acceld):
    with pytest.raises(SourceNotAllowed) as info:
        services.conversion_create(source=ELSEWHERE, trigger=Trigger.API)
    assert str(info.value).startswith(REFUSED)
    with pytest.raises(SourceNotAllowed):  # one bad source refuses the whole event, before any task
        services.conversions_create(sources=[(f"{HOST}/library/a:1", ""), (ELSEWHERE, "")], trigger="webhook")
    assert ConversionTask.objects.count() == 0 and acceld.fake.calls == []


def test_retry_after_the_host_left_the_config_is_refused(acceld, tmp_path):
    failed = ConversionTask.objects.create(source=f"{HOST}/library/old:1", status=Status.FAILED, reason="x")
    acceld(provider={"work_dir": str(tmp_path / "work"), "source": {"other.example.com": {}}})
    with pytest.raises(SourceNotAllowed):
        services.conversion_retry(task_id=failed.pk)
    failed.refresh_from_db()
    assert (failed.status, failed.reason, failed.run_token) == (Status.FAILED, "x", None)


def test_a_run_queued_before_the_host_left_fails_without_converting(acceld, tmp_path):
    task = services.conversion_create(source=f"{HOST}/library/queued:1")
    acceld(provider={"work_dir": str(tmp_path / "work"), "source": {"other.example.com": {}}})
    services.conversion_run(task_id=task.pk, token=task.run_token)
    task.refresh_from_db()
    assert task.status == Status.FAILED and task.reason.startswith(f"{HOST} is not a configured registry")
    assert acceld.fake.calls == []


def test_admin_form_and_convert_again_refuse_an_unconfigured_host(superuser, acceld, tmp_path):
    page = superuser.post(reverse("admin:conversions_conversiontask_convert"), {"source": ELSEWHERE})
    assert page.status_code == 200 and REFUSED in page.content.decode()
    assert ConversionTask.objects.count() == 0

    old = ConversionTask.objects.create(source=f"{HOST}/library/old:1", status=Status.FAILED, reason="x")
    acceld(provider={"work_dir": str(tmp_path / "work"), "source": {"other.example.com": {}}})
    for action in ("convert_again", "retry"):
        page = superuser.post(CHANGELIST, {"action": action, "_selected_action": [str(old.pk)]}, follow=True)
        assert f"{HOST} is not a configured registry" in page.content.decode(), action
    assert list(ConversionTask.objects.values_list("pk", "status")) == [(old.pk, Status.FAILED)]


def test_accelctl_task_create_for_an_unconfigured_host_is_refused(live_server, acceld, capsys):
    addr = live_server.url.removeprefix("http://")
    assert cli_task.main(["create", "--addr", addr, "--auth", AUTH, ELSEWHERE]) == 1
    err = capsys.readouterr().err
    assert "invalid auth config for host 127.0.0.2:8080 (401)" in err and "provider.source" in err
    assert cli_task.main(["create", "--addr", addr, "--auth", AUTH, f"{HOST}/library/app\n:1"]) == 1
    assert "bad repository component 'app\\n'" in capsys.readouterr().err  # refused before a request
    assert ConversionTask.objects.count() == 0


# ------------------------------------------------------------------ one event, many resources


def test_duplicates_in_one_event_are_one_task(acceld, api):
    resp = post_webhook(api, push_payload(*[f"{HOST}/library/nginx:1"] * 100))
    assert resp.status_code == 200
    assert ConversionTask.objects.count() == 1 and ConversionTask.objects.get().source == f"{HOST}/library/nginx:1"


def test_more_than_100_resources_is_400_that_says_the_limit(acceld, api):
    resp = post_webhook(api, push_payload(*[f"{HOST}/library/app:{i}" for i in range(101)]))
    assert resp.status_code == 400
    assert resp.json() == {"code": "ERR_ILLEGAL_PARAMETER", "message": "invalid webhook payload: "
                           "event_data.resources has 101 entries; at most 100 are accepted per event"}
    assert ConversionTask.objects.count() == 0
    assert post_webhook(api, push_payload(*[f"{HOST}/library/app:{i}" for i in range(100)])).status_code == 200
    assert ConversionTask.objects.count() == 100
    with pytest.raises(Exception, match="at most 100"):  # the service holds the same line for other callers
        services.conversions_create(sources=[(f"{HOST}/library/app:{i}", "") for i in range(101)], trigger="api")


def test_each_task_of_an_event_commits_on_its_own(acceld, monkeypatch):
    """While an event's later tasks are written, its earlier ones are already visible to other connections:
    nobody waits for the whole event (one transaction for all held SQLite's write lock for 36 s)."""
    seen = []
    original = services._lead_or_follow

    def look_from_elsewhere(task):
        def other_connection():
            try:
                seen.append(ConversionTask.objects.count())
            finally:
                connections.close_all()

        thread = threading.Thread(target=other_connection)
        thread.start()
        thread.join(30)
        original(task)

    monkeypatch.setattr(services, "_lead_or_follow", look_from_elsewhere)
    services.conversions_create(sources=[(f"{HOST}/library/app:{i}", "") for i in range(4)], trigger="api")
    assert seen == [0, 1, 2, 3]
