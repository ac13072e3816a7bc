"""Requests that were a 500 (with a traceback in the log) or a wrong answer (issue 12, items 4-7), in process.

The same requests over real sockets to gunicorn are in tests/e2e/test_security_input.py.
"""
from __future__ import annotations

import json
import logging

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.authtoken.models import Token

from acceleration_sdk.errors import RegistryError
from conversions import services, webhook
from conversions.models import ConversionTask, Status
from tests.service.conftest import AUTH, HOST, OPEN_HOST, post_webhook, push_payload

pytestmark = pytest.mark.django_db(transaction=True)
OTHER_HOST = "other.example.com:5000"
OTHER_AUTH = "Bearer other-host-secret"
DEEP = b"[" * 100_000 + b"]" * 100_000  # 200 KB, nested far past the JSON decoder's recursion limit


@pytest.fixture
def two_hosts(acceld, tmp_path):
    """Each host demands its own header (no open host): a stranger's request is refused before parsing."""
    return acceld(provider={"work_dir": str(tmp_path / "work"), "source": {
        HOST: {"webhook": {"auth_header": AUTH}}, OTHER_HOST: {"webhook": {"auth_header": OTHER_AUTH}}}})


@pytest.fixture
def no_traceback(caplog):
    caplog.set_level(logging.ERROR)
    yield
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def error(resp) -> dict:
    assert resp["Content-Type"].startswith("application/json"), resp["Content-Type"]
    body = json.loads(resp.content)
    assert set(body) == {"code", "message"}, body
    return body


# ------------------------------------------------------------------ 4: unauthenticated 500s, auth before parsing


def test_json_nested_deeply_is_400_not_500(two_hosts, api, no_traceback):
    resp = post_webhook(api, None, raw=DEEP, auth=AUTH)
    assert resp.status_code == 400
    assert error(resp) == {"code": "ERR_ILLEGAL_PARAMETER", "message": "invalid webhook payload: nested too deeply"}
    assert post_webhook(api, None, raw=DEEP, auth=None).status_code == 401  # a stranger: refused before parsing


def test_djangos_own_404_and_403_map_to_json():
    from django.core.exceptions import PermissionDenied
    from django.http import Http404

    from conversions.errors import error_body

    assert error_body(Http404("no such task")) == (404, {"code": "ERR_INVALID_ENDPOINT", "message": "Endpoint not found"})
    assert error_body(PermissionDenied()) == (403, {"code": "ERR_FORBIDDEN", "message": "permission denied"})


@pytest.mark.parametrize("path", ["/api/v1/conversions", "/api/v1/schema"])
def test_an_unknown_format_is_404_json(two_hosts, api, path, no_traceback):
    resp = api.get(path + "?format=xml", headers={"Authorization": AUTH})
    assert resp.status_code == 404
    assert error(resp) == {"code": "ERR_INVALID_ENDPOINT",
                           "message": "Endpoint not found: unknown ?format= for this path"}
    assert api.get(path + "?format=json", headers={"Authorization": AUTH}).status_code == 200


def test_a_stranger_body_is_refused_before_it_is_parsed(two_hosts, api, monkeypatch):
    parsed = []
    real_parse = webhook.parse
    monkeypatch.setattr(webhook, "parse", lambda body, headers: parsed.append(len(body)) or real_parse(body, headers))
    body = json.dumps(push_payload(*[f"{HOST}/library/app:{i}" for i in range(100)])).encode()
    for auth in (None, "Bearer wrong", AUTH + " "):
        resp = post_webhook(api, None, raw=body, auth=auth)
        assert resp.status_code == 401 and error(resp)["code"] == "ERR_UNAUTHORIZED"
    assert parsed == []
    assert post_webhook(api, None, raw=body, auth=OTHER_AUTH).status_code == 401  # a header, for another host
    assert parsed == [len(body)] and ConversionTask.objects.count() == 0


def test_an_open_host_still_lets_unauthenticated_webhooks_through(acceld, api):
    """A configured host without an auth_header (acceld's default) needs no header: the early check waits."""
    assert post_webhook(api, push_payload(f"{OPEN_HOST}/library/app:1"), auth=None).status_code == 200
    assert post_webhook(api, push_payload(f"{HOST}/library/app:1"), auth=None).status_code == 401


@pytest.mark.parametrize("auth", [None, AUTH])
def test_an_empty_body_is_ok_like_acceld(two_hosts, api, auth):
    """Harbor's "Test endpoint" posts nothing (and no header): acceld answers "Ok", and nothing happens."""
    resp = post_webhook(api, None, raw=b"", auth=auth)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n')
    assert ConversionTask.objects.count() == 0


# ------------------------------------------------------------------ 5, 6: references, digests, surrogates


@pytest.mark.parametrize("url", [f"{HOST}/library/plain\n:latest", f"{HOST}/library/app:lat\u00e9st\u0661",
                                 f"{HOST}/library/app@sha256:" + "a" * 200_000, f"{HOST}/library/app@sha256:\ud800",
                                 f"{HOST}/library/app:\ud800", f"{HOST}/library/app@md5:" + "a" * 32])
def test_loose_references_are_400(acceld, api, url, no_traceback):
    resp = post_webhook(api, {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": url}]}})
    assert resp.status_code == 400 and error(resp)["code"] == "ERR_ILLEGAL_PARAMETER"
    assert len(resp.content) < 1000  # the message quotes a bounded part of what it refuses
    assert ConversionTask.objects.count() == 0


@pytest.mark.parametrize("digest", ["\ud800", "sha256:\ud800", "sha256:" + "a" * 200_000, "sha256:abc"])
def test_bad_webhook_digests_are_400(acceld, api, digest, no_traceback):
    resp = post_webhook(api, push_payload(f"{HOST}/library/app:1", digest=digest))
    assert resp.status_code == 400 and error(resp)["code"] == "ERR_ILLEGAL_PARAMETER"
    assert ConversionTask.objects.count() == 0


def test_a_sha512_digest_fits(acceld, api):
    digest = "sha512:" + "b" * 128
    assert post_webhook(api, push_payload(f"{HOST}/library/app:1", digest=digest)).status_code == 200
    assert ConversionTask.objects.get().digest == digest


def test_a_cloudevents_id_with_a_lone_surrogate_is_400(acceld, api, no_traceback):
    body = {"specversion": "1.0", "type": "harbor.artifact.pushed", "id": "\ud800",
            "data": {"resources": [{"resource_url": f"{HOST}/library/app:1"}]}}
    resp = post_webhook(api, body)
    assert resp.status_code == 400 and error(resp)["message"] == "invalid webhook payload: the event id is not valid text"


def test_a_lone_surrogate_in_the_registry_error_fails_the_task_with_that_reason(acceld, monkeypatch):
    def converter(cfg, source, *, progress=None):
        raise RegistryError("fetch manifest: registry answered manifest \ud800unknown (MANIFEST_UNKNOWN)")

    monkeypatch.setattr(services, "_converter", lambda: converter)
    task = services.conversion_create(source=f"{HOST}/library/app:1")
    done = services.conversion_run(task_id=task.pk, token=task.run_token)
    assert done is not None
    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.reason == "fetch manifest: registry answered manifest ?unknown (MANIFEST_UNKNOWN)"


def test_a_non_uuid_selected_action_is_400(acceld):
    get_user_model().objects.create_superuser("admin", "admin@example.com", "admin-pass-1")
    client = Client()
    assert client.login(username="admin", password="admin-pass-1")
    for action in ("retry", "convert_again", "delete_selected"):
        resp = client.post("/admin/conversions/conversiontask/", {"action": action, "_selected_action": ["x'--"]})
        assert resp.status_code == 400, action


# ------------------------------------------------------------------ 7: who may list what


def test_a_user_token_needs_the_view_permission(acceld, api):
    ConversionTask.objects.create(source=f"{HOST}/library/hidden:1", status=Status.FAILED)
    user = get_user_model().objects.create_user("nobody", password="nobody-pass-1")
    token = Token.objects.create(user=user)
    resp = api.get("/api/v1/conversions", headers={"Authorization": f"Token {token.key}"})
    assert resp.status_code == 403 and b"hidden" not in resp.content
    assert error(resp) == {"code": "ERR_FORBIDDEN",
                           "message": "listing tasks needs the conversions.view_conversiontask permission"}
    user.user_permissions.add(Permission.objects.get(codename="view_conversiontask"))
    resp = api.get("/api/v1/conversions", headers={"Authorization": f"Token {token.key}"})
    assert resp.status_code == 200 and b"hidden" in resp.content


@pytest.mark.parametrize("query", ["", "?verbose=true", "?paginated=true", "?status=FAILED", "?source=library"])
def test_a_webhook_header_lists_only_its_own_hosts_tasks(two_hosts, api, query):
    ConversionTask.objects.create(source=f"{HOST}/library/mine:1", status=Status.FAILED)
    ConversionTask.objects.create(source=f"{OTHER_HOST}/library/theirs:1", status=Status.FAILED)
    ConversionTask.objects.create(source=f"{HOST}.evil.example/library/lookalike:1", status=Status.FAILED)
    for auth, mine, theirs in ((AUTH, "mine", "theirs"), (OTHER_AUTH, "theirs", "mine")):
        resp = api.get("/api/v1/conversions" + query, headers={"Authorization": auth})
        assert resp.status_code == 200
        text = resp.content.decode()
        assert mine in text and theirs not in text and "lookalike" not in text, (auth, query)
