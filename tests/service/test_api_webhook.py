"""POST /api/v1/conversions: every status code and body, both Harbor formats, auth, loop, sync, redelivery."""
from __future__ import annotations

import json

import pytest
from django_q.models import OrmQ

from conversions.models import ConversionTask, Status, Trigger
from tests.service.conftest import AUTH, HOST, OPEN_HOST, post_webhook, push_payload

SRC = f"{HOST}/library/nginx:latest"
pytestmark = pytest.mark.django_db(transaction=True)


def error(resp) -> dict:
    assert resp["Content-Type"].startswith("application/json")
    body = json.loads(resp.content)
    assert set(body) == {"code", "message"}
    return body


def test_push_answers_ok_and_queues_one_task(acceld, api):
    resp = post_webhook(api, push_payload(SRC), headers={"X-Harbor-Event-Id": "ev-1"})
    assert resp.status_code == 200
    assert resp.content == b'"Ok"\n'  # acceld's bytes: a JSON string and the Go encoder's newline
    task = ConversionTask.objects.get()
    assert (task.source, task.status, task.target) == (SRC, Status.PROCESSING, f"{HOST}/library/nginx:latest-esgz")
    assert task.digest == "sha256:" + "c" * 64 and task.event_id == "ev-1" and task.trigger == Trigger.WEBHOOK
    assert OrmQ.objects.count() == 1  # queued on commit through the real ORM broker
    assert acceld.fake.calls == []  # nothing converts without a cluster


def test_other_event_types_are_ok_and_do_nothing(acceld, api):
    resp = post_webhook(api, {"type": "DELETE_ARTIFACT", "event_data": {"resources": [{"resource_url": SRC}]}})
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n')
    assert ConversionTask.objects.count() == 0 and OrmQ.objects.count() == 0


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"PUSH_ARTIFACT"', b" ",
                                 b'{"type": 5, "event_data": {"resources": []}}',
                                 b'{"type": "PUSH_ARTIFACT", "event_data": "x"}',
                                 b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": {"resource_url": "a"}}}',
                                 b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": ["a/b:c"]}}',
                                 b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": 7}]}}',
                                 b'{"type": "PUSH_ARTIFACT"}'])
def test_bad_payloads_are_400(acceld, api, raw):
    resp = post_webhook(api, None, raw=raw)
    assert resp.status_code == 400
    body = error(resp)
    assert body["code"] == "ERR_ILLEGAL_PARAMETER"
    assert body["message"].startswith("invalid webhook payload")
    assert ConversionTask.objects.count() == 0


@pytest.mark.parametrize("url", ["", "http://harbor.example.com/library/nginx:latest", "Harbor.example.com/UPPER:x",
                                 f"{HOST}/library/nginx:bad tag"])
def test_unparseable_resource_url_is_400(acceld, api, url):
    resp = post_webhook(api, push_payload(url))
    assert resp.status_code == 400
    body = error(resp)
    assert body["code"] == "ERR_ILLEGAL_PARAMETER" and body["message"].startswith("failed to parse resource url")
    assert ConversionTask.objects.count() == 0


@pytest.mark.parametrize("auth", [None, "", "Basic d3Jvbmc6d3Jvbmc=", AUTH + " ", AUTH.lower()])
def test_wrong_missing_or_empty_authorization_is_401(acceld, api, auth):
    resp = post_webhook(api, push_payload(SRC), auth=auth)
    assert resp.status_code == 401
    body = error(resp)
    assert body == {"code": "ERR_UNAUTHORIZED", "message": f"invalid auth config for host {HOST}"}
    assert AUTH not in resp.content.decode()  # the expected header is never echoed
    assert ConversionTask.objects.count() == 0 and OrmQ.objects.count() == 0


def test_unconfigured_host_is_401_and_nothing_is_fetched(acceld, api, q_sync):
    resp = post_webhook(api, push_payload("169.254.169.254/latest/meta-data:x"))
    assert resp.status_code == 401 and error(resp)["code"] == "ERR_UNAUTHORIZED"
    assert ConversionTask.objects.count() == 0
    assert acceld.fake.calls == []  # no outbound request: the converter was never called


def test_port_is_part_of_the_host(acceld, api):
    # open.example.com:5000 is configured, open.example.com is not.
    assert post_webhook(api, push_payload("open.example.com/library/nginx:latest"), auth=None).status_code == 401
    assert post_webhook(api, push_payload(f"{OPEN_HOST}/library/nginx:latest"), auth=None).status_code == 200


def test_one_bad_resource_creates_no_task_at_all(acceld, api):
    resp = post_webhook(api, push_payload(SRC, "evil.example.com/library/nginx:latest"))
    assert resp.status_code == 401
    assert ConversionTask.objects.count() == 0 and OrmQ.objects.count() == 0
    resp = post_webhook(api, push_payload(SRC, f"{HOST}/library/nginx:bad tag"))
    assert resp.status_code == 400 and ConversionTask.objects.count() == 0


def test_several_resources_make_several_tasks(acceld, api):
    resp = post_webhook(api, push_payload(SRC, f"{HOST}/library/redis:7"))
    assert resp.status_code == 200
    assert sorted(ConversionTask.objects.values_list("source", flat=True)) == [SRC, f"{HOST}/library/redis:7"]


# ------------------------------------------------------------ CloudEvents


def cloudevent(event_id="ce-1", ce_type="harbor.artifact.pushed", url=SRC) -> dict:
    return {"specversion": "1.0", "type": ce_type, "source": "/projects/1/webhook/policies/2", "id": event_id,
            "time": "2023-04-03T06:04:53Z", "datacontenttype": "application/json",
            "data": {"resources": [{"digest": "sha256:" + "d" * 64, "tag": "latest", "resource_url": url}],
                     "repository": {"name": "nginx", "namespace": "library"}}}


def test_cloudevents_structured(acceld, api):
    resp = post_webhook(api, cloudevent(), content_type="application/cloudevents+json")
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n')
    task = ConversionTask.objects.get()
    assert (task.source, task.event_id, task.digest) == (SRC, "ce-1", "sha256:" + "d" * 64)


def test_cloudevents_binary_mode(acceld, api):
    event = cloudevent(event_id="ce-bin")
    headers = {"ce-specversion": "1.0", "ce-type": "harbor.artifact.pushed", "ce-id": "ce-bin",
               "ce-source": event["source"]}
    resp = post_webhook(api, event["data"], headers=headers)
    assert resp.status_code == 200
    assert ConversionTask.objects.get().event_id == "ce-bin"


def test_cloudevents_other_types_and_bad_auth(acceld, api):
    assert post_webhook(api, cloudevent(ce_type="harbor.artifact.deleted")).status_code == 200
    assert ConversionTask.objects.count() == 0
    resp = post_webhook(api, cloudevent(), auth="nope")
    assert resp.status_code == 401 and ConversionTask.objects.count() == 0
    resp = post_webhook(api, {"specversion": "1.0", "type": "harbor.artifact.pushed", "id": "x", "data": "oops"})
    assert resp.status_code == 400


# ------------------------------------------------------------ loop prevention, redelivery, sharing


@pytest.mark.parametrize("tag", ["latest-esgz", "esgz-cache"])
def test_converted_or_cache_tag_completes_at_once(acceld, api, q_sync, tag):
    resp = post_webhook(api, push_payload(f"{HOST}/library/nginx:{tag}"), sync="true")
    assert resp.status_code == 200
    task = ConversionTask.objects.get()
    assert task.status == Status.COMPLETED and task.skipped and task.finished is not None
    assert acceld.fake.calls == [] and OrmQ.objects.count() == 0  # nothing pulled, nothing pushed


@pytest.mark.parametrize("header", ["X-Harbor-Event-Id", "ce-id"])
def test_redelivered_event_does_not_start_a_second_conversion(acceld, api, header):
    headers = {header: "delivery-42"}
    if header == "ce-id":
        headers.update({"ce-specversion": "1.0", "ce-type": "harbor.artifact.pushed"})
        payload = push_payload(SRC)["event_data"]
    else:
        payload = push_payload(SRC)
    for _ in range(3):
        assert post_webhook(api, payload, headers=headers).status_code == 200
    assert ConversionTask.objects.count() == 1 and OrmQ.objects.count() == 1


def test_redelivery_of_a_finished_sync_event_answers_like_the_first(acceld, api, q_sync):
    headers = {"X-Harbor-Event-Id": "ev-f"}
    first = post_webhook(api, push_payload(f"{HOST}/library/nginx:fail"), sync="true", headers=headers)
    again = post_webhook(api, push_payload(f"{HOST}/library/nginx:fail"), sync="true", headers=headers)
    assert first.status_code == again.status_code == 500
    assert error(again) == error(first)
    assert len(acceld.fake.calls) == 1


def test_requests_for_a_running_source_share_its_conversion(acceld, api):
    for _ in range(3):
        assert post_webhook(api, push_payload(SRC)).status_code == 200
    leader = ConversionTask.objects.get(shared_with=None)
    assert ConversionTask.objects.filter(shared_with=leader).count() == 2
    assert OrmQ.objects.count() == 1  # one queued conversion for three tasks


# ------------------------------------------------------------ sync


def test_sync_success_waits_for_completion(acceld, api, q_sync):
    resp = post_webhook(api, push_payload(SRC), sync="true")
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n')
    task = ConversionTask.objects.get()
    assert task.status == Status.COMPLETED and (task.source_size, task.target_size) == (1000, 1200)
    assert task.driver_version == "fake-1" and task.attempts == 1 and task.progress["percent"] == 100


def test_sync_failure_is_500_with_the_reason(acceld, api, q_sync):
    resp = post_webhook(api, push_payload(f"{HOST}/library/nginx:fail"), sync="true")
    assert resp.status_code == 500
    assert error(resp) == {"code": "ERR_CONVERT_FAILED",
                           "message": f"fake failure converting {HOST}/library/nginx:fail"}
    assert ConversionTask.objects.get().status == Status.FAILED


def test_sync_unexpected_error_hides_its_text(acceld, api, q_sync):
    resp = post_webhook(api, push_payload(f"{HOST}/library/nginx:boom"), sync="true")
    assert resp.status_code == 500
    assert error(resp) == {"code": "ERR_CONVERT_FAILED", "message": "internal error (RuntimeError)"}
    assert b"secret-token" not in resp.content and b"Traceback" not in resp.content


@pytest.mark.parametrize("value", ["false", "0", "garbage", ""])
def test_async_is_the_default_and_go_parses_sync(acceld, api, value):
    resp = post_webhook(api, push_payload(SRC), sync=value)
    assert resp.status_code == 200
    assert ConversionTask.objects.get().status == Status.PROCESSING  # answered before any conversion


def test_async_with_inline_queue_completes(acceld, api, q_sync):
    assert post_webhook(api, push_payload(SRC), sync="false").status_code == 200
    assert ConversionTask.objects.get().status == Status.COMPLETED
    assert acceld.fake.calls == [SRC]


def test_cli_and_plain_api_triggers(acceld, api):
    post_webhook(api, push_payload(SRC), headers={"X-Acceld-Client": "accelctl/1"})
    post_webhook(api, push_payload(f"{HOST}/library/redis:7"))
    assert dict(ConversionTask.objects.values_list("source", "trigger")) == {SRC: "cli", f"{HOST}/library/redis:7": "api"}
