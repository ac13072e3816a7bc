"""GET /api/v1/conversions, health, schema, unknown paths (metrics: test_metrics.py)."""
from __future__ import annotations

import datetime
import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone
from rest_framework.authtoken.models import Token

from conversions.models import ConversionTask, Status
from conversions.serializers import rfc3339
from tests.service.conftest import AUTH, HOST

pytestmark = pytest.mark.django_db
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
NOT_FOUND = b'{"code":"ERR_INVALID_ENDPOINT","message":"Endpoint not found"}\n'


def make(source=f"{HOST}/library/nginx:latest", status=Status.COMPLETED, minutes_ago=0, **kw):
    created = timezone.now() - datetime.timedelta(minutes=minutes_ago)
    finished = None if status == Status.PROCESSING else created + datetime.timedelta(seconds=3)
    return ConversionTask.objects.create(source=source, status=status, created=created, finished=finished, **kw)


def test_list_needs_credentials(acceld, api):
    resp = api.get("/api/v1/conversions")
    assert resp.status_code == 401
    assert json.loads(resp.content)["code"] == "ERR_UNAUTHORIZED"
    assert api.get("/api/v1/conversions", headers={"Authorization": "Basic bm9wZTpub3Bl"}).status_code == 401
    assert api.get("/api/v1/conversions", headers={"Authorization": "Token not-a-token"}).status_code == 401


def test_list_with_webhook_header_token_or_session(acceld, api):
    assert api.get("/api/v1/conversions", headers={"Authorization": AUTH}).status_code == 200
    user = get_user_model().objects.create_user("reader", password="reader-pass-1")
    user.user_permissions.add(Permission.objects.get(codename="view_conversiontask"))
    token = Token.objects.create(user=user)
    assert api.get("/api/v1/conversions", headers={"Authorization": f"Token {token.key}"}).status_code == 200
    assert api.login(username="reader", password="reader-pass-1")
    assert api.get("/api/v1/conversions").status_code == 200


def test_public_list(acceld, api):
    acceld(server={"public_list": True})
    resp = api.get("/api/v1/conversions")
    assert (resp.status_code, resp.content) == (200, b"[]\n")


def test_list_shape_is_acceld(acceld, api):
    acceld(server={"public_list": True})
    done = make(source_size=70254592, target_size=72351744, minutes_ago=5)
    failed = make(f"{HOST}/library/redis:7", Status.FAILED, minutes_ago=3, reason="registry said no")
    running = make(f"{HOST}/library/httpd:2", Status.PROCESSING, minutes_ago=1)
    body = json.loads(api.get("/api/v1/conversions").content)
    assert [t["id"] for t in body] == [str(running.pk), str(failed.pk), str(done.pk)]  # newest first
    # acceld's fields in acceld's order; then ours: where it goes and which converter.routes entry made it
    assert list(body[2]) == ["id", "created", "finished", "source", "source_size", "target_size", "status", "reason",
                             "target", "route"]
    assert body[2]["source_size"] == 70254592 and isinstance(body[2]["target_size"], int)
    assert all(RFC3339.match(t["created"]) and RFC3339.match(t["finished"]) for t in body)
    assert body[0]["finished"] == "0001-01-01T00:00:00Z"  # Go's zero time until it finishes
    assert body[1]["status"] == "FAILED" and body[1]["reason"] == "registry said no"


def test_rfc3339_drops_trailing_zeros():
    t = datetime.datetime(2022, 4, 6, 6, 45, 11, 832260, tzinfo=datetime.timezone.utc)
    assert rfc3339(t) == "2022-04-06T06:45:11.83226Z"
    assert rfc3339(t.replace(microsecond=0)) == "2022-04-06T06:45:11Z"


def test_filters_limit_offset_and_pages(acceld, api):
    acceld(server={"public_list": True})
    for i in range(5):
        make(f"{HOST}/library/app{i}:1", Status.FAILED if i % 2 else Status.COMPLETED, minutes_ago=10 - i)
    get = lambda q: json.loads(api.get("/api/v1/conversions" + q).content)  # noqa: E731
    assert [t["source"] for t in get("?status=failed")] == [f"{HOST}/library/app3:1", f"{HOST}/library/app1:1"]
    assert [t["source"] for t in get("?source=app2")] == [f"{HOST}/library/app2:1"]
    assert [t["source"][-6:] for t in get("?limit=2&offset=1")] == ["app3:1", "app2:1"]
    page = get("?paginated=true&limit=2")
    assert page["count"] == 5 and len(page["results"]) == 2 and page["previous"] is None
    assert "offset=2" in page["next"]
    assert get("?paginated=true&limit=2&offset=4")["next"] is None
    for bad in ("?status=DONE", "?limit=0", "?offset=-1", "?limit=x"):
        resp = api.get("/api/v1/conversions" + bad)
        assert resp.status_code == 400 and json.loads(resp.content)["code"] == "ERR_ILLEGAL_PARAMETER"


def test_verbose_shows_shared_progress(acceld, api):
    acceld(server={"public_list": True})
    leader = make(status=Status.PROCESSING, progress={"phase": "pull", "percent": 10})
    make(status=Status.PROCESSING, shared_with=leader)
    body = json.loads(api.get("/api/v1/conversions?verbose=true").content)
    follower = next(t for t in body if t["shared_with"])
    assert follower["shared_with"] == str(leader.pk) and follower["progress"]["phase"] == "pull"


def test_unknown_paths_are_json_404(acceld, api):
    for path in ("/nope", "/api/v1/conversions/", "/api/v2/conversions", "/api/v1/health/"):
        resp = api.get(path)
        assert (resp.status_code, resp.content) == (404, NOT_FOUND), path
    assert api.post("/api/v1/whatever", {}, format="json").content == NOT_FOUND


def test_wrong_method_is_json_405(acceld, api):
    resp = api.delete("/api/v1/conversions")
    assert resp.status_code == 405 and json.loads(resp.content)["code"] == "ERR_METHOD_NOT_ALLOWED"
    assert api.post("/api/v1/health").status_code == 405


def test_health(acceld, api, tmp_path):
    resp = api.get("/api/v1/health")
    assert (resp.status_code, resp.content) == (200, b"Ok") and resp["Content-Type"].startswith("text/plain")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    acceld(provider={"work_dir": str(blocker / "work")})
    resp = api.get("/api/v1/health")
    assert resp.status_code == 500
    assert json.loads(resp.content) == {"code": "ERR_UNHEALTHY", "message": "work_dir not writable"}


def test_openapi_schema(acceld, api):
    resp = api.get("/api/v1/schema", headers={"Accept": "application/json"})
    assert resp.status_code == 200
    text = resp.content.decode()
    assert "/api/v1/conversions" in text and "openapi" in text


def test_pages_link_to_each_other_like_drf(acceld, api):
    acceld(server={"public_list": True})
    for i in range(5):
        make(f"{HOST}/library/app{i}:1", minutes_ago=10 - i)
    get = lambda q: json.loads(api.get("/api/v1/conversions" + q).content)  # noqa: E731
    first = get("?paginated=true&limit=2&status=completed")
    assert list(first) == ["count", "next", "previous", "results"]
    assert (first["count"], first["previous"]) == (5, None)
    assert [t["source"][-6:] for t in first["results"]] == ["app4:1", "app3:1"]
    second = get(first["next"].split("/api/v1/conversions", 1)[1])
    assert "status=completed" in first["next"] and [t["source"][-6:] for t in second["results"]] == ["app2:1", "app1:1"]
    third = get(second["next"].split("/api/v1/conversions", 1)[1])
    assert [t["source"][-6:] for t in third["results"]] == ["app0:1"] and third["next"] is None
    back = get(third["previous"].split("/api/v1/conversions", 1)[1])
    assert back["results"] == second["results"]
    assert len(get("?paginated=true")["results"]) == 5  # default page: 100
