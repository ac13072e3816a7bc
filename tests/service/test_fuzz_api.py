"""Hostile input against the API, in process: schemathesis from ``/api/v1/schema`` and hypothesis webhooks.

Whatever arrives, the answer is never a 5xx, an error is acceld's JSON ``{"code", "message"}``, and a
request without the configured ``Authorization`` never creates a task. Every source host here has a
webhook header, so "unauthenticated" means exactly "no task". The examples are derandomized: CI runs
the same few hundred cases every time (a failure is reproducible), and each run still covers the
schema's positive and negative space.
"""
from __future__ import annotations

import collections
import json

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conversions.models import ConversionTask
from tests.service.conftest import AUTH, HOST, post_webhook

pytestmark = pytest.mark.django_db(transaction=True)

OTHER_HOST = "other.example.com:5000"  # configured, with a different header
OTHER_AUTH = "Bearer other-host-secret"
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture
def locked_down(acceld, tmp_path):
    """Every configured host demands its own header: no unauthenticated request may create a task."""
    return acceld(provider={"work_dir": str(tmp_path / "work"), "source": {
        HOST: {"webhook": {"auth_header": AUTH}},
        OTHER_HOST: {"webhook": {"auth_header": OTHER_AUTH}},
    }})


def assert_error_body(status: int, content: bytes, content_type: str) -> None:
    assert content_type.startswith("application/json"), (status, content_type, content[:200])
    body = json.loads(content)
    assert isinstance(body, dict) and set(body) == {"code", "message"}, body
    assert body["code"].startswith("ERR_") and isinstance(body["message"], str)


# ------------------------------------------------------------------ schemathesis


@pytest.fixture
def api_schema(locked_down):
    """The live schema of the WSGI app (schemathesis' pytest plugin does not run on pytest 9: its strategies do)."""
    from acceld_project.wsgi import application

    return schemathesis.openapi.from_wsgi("/api/v1/schema", application)


def test_the_schema_describes_the_conversions_api(api_schema):
    ops = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert {("GET", "/api/v1/conversions"), ("POST", "/api/v1/conversions")} <= ops


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
@pytest.mark.parametrize("method", ["GET", "POST"])
@FUZZ
@given(data=st.data())
def test_schema_fuzz_no_5xx_no_unauthenticated_task(api_schema, method, mode, data):
    """Each generated request three times: anonymous, with a wrong header, with the right one."""
    case = data.draw(api_schema["/api/v1/conversions"][method].as_strategy(generation_mode=mode))
    for authorization in (None, "Bearer wrong", AUTH):
        query = dict(case.query or {})
        if method == "POST" and authorization == AUTH:
            # ?sync=true with a valid header would wait for a queue nobody runs here; the webhook fuzz
            # below and the e2e tests cover that path.
            query.pop("sync", None)
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if authorization is not None:
            headers["Authorization"] = authorization
        before = ConversionTask.objects.count()
        response = case.call(headers=headers, params=query)
        what = (authorization, method, query, case.body, response.status_code, response.text[:300])
        assert response.status_code < 500, what
        if response.status_code >= 400:
            assert_error_body(response.status_code, response.content, _content_type(response))
        if authorization != AUTH:
            assert ConversionTask.objects.count() == before, what
            if method == "GET":
                assert response.status_code == 401, what


def _content_type(response) -> str:
    value = response.headers.get("Content-Type") or response.headers.get("content-type") or [""]
    return value[0] if isinstance(value, list) else value


# ------------------------------------------------------------------ hypothesis webhooks

_text = st.text(max_size=40)
_ascii = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                     max_leaves=12)
_urls = st.one_of(
    st.sampled_from([f"{HOST}/library/nginx:latest", f"{HOST}/library/nginx:latest-esgz", f"{HOST}/a/b@sha256:" + "a" * 64,
                     f"{OTHER_HOST}/library/redis:7", "127.0.0.1:9/x:y", "nginx", "", "HOST/UPPER:case",
                     f"{HOST}/library/nginx:" + "t" * 200, f"{HOST}/" + "a/" * 300 + "x:1", "http://evil/x:1",
                     f"{HOST}/../../etc/passwd:1", f"{HOST}/library/nginx:latest\x00", f"{HOST}/lib rary/x:1"]),
    st.builds(lambda repo, tag: f"{HOST}/{repo}:{tag}", _ascii, _ascii),
    _text,
)
_resource = st.fixed_dictionaries({"resource_url": st.one_of(_urls, _urls, _urls, _json)},
                                  optional={"digest": st.one_of(_text, _text, _json), "tag": st.one_of(_text, _text, _json)})
# Mostly well-formed with one thing wrong here and there: that reaches the deep paths (auth, task creation).
_event_data = st.one_of(*[st.fixed_dictionaries({"resources": st.lists(_resource, min_size=1, max_size=3)},
                                                 optional={"repository": _json})] * 3,
                        st.fixed_dictionaries({"resources": st.lists(_resource | _json, max_size=4)}), _json)
_type = st.one_of(*[st.sampled_from(["PUSH_ARTIFACT", "harbor.artifact.pushed"])] * 3,
                  st.sampled_from(["DELETE_ARTIFACT", "", "push_artifact"]), _text)
harbor = st.fixed_dictionaries({"type": _type, "event_data": _event_data},
                               optional={"occur_at": _json, "operator": _json})
cloudevent = st.fixed_dictionaries({"specversion": st.just("1.0") | _json, "type": _type, "data": _event_data},
                                   optional={"id": _text | _json, "source": _json})
payloads = st.one_of(harbor, harbor, cloudevent, _json)
_json_body = payloads.map(lambda p: json.dumps(p).encode())
bodies = st.one_of(*[_json_body] * 6, st.binary(max_size=300),
                   _json_body.map(lambda b: b[:-1]))  # cut short
authorizations = st.one_of(st.sampled_from([None, "", "Bearer wrong", AUTH.lower(), AUTH + " ", " " + AUTH,
                                            AUTH + "\t", "Basic " + AUTH]), st.sampled_from([AUTH, OTHER_AUTH]))
extra_headers = st.dictionaries(
    st.sampled_from(["X-Harbor-Event-Id", "ce-specversion", "ce-type", "ce-id", "User-Agent", "X-Acceld-Client"]),
    _ascii, max_size=4)
content_types = st.sampled_from(["application/json", "application/cloudevents+json", "text/plain", "",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                 "application/json; charset=latin-1"])


def _push(url: str, cloudevents: bool = False) -> bytes:
    if cloudevents:
        return json.dumps({"specversion": "1.0", "type": "harbor.artifact.pushed", "id": "ev-1",
                           "data": {"resources": [{"resource_url": url}]}}).encode()
    return json.dumps({"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": url}]}}).encode()


def test_webhook_fuzz_no_5xx_no_unauthenticated_task(locked_down, api):
    seen: collections.Counter = collections.Counter()

    @settings(FUZZ, max_examples=300)
    @given(body=bodies, authorization=authorizations, headers=extra_headers, content_type=content_types)
    # Every outcome at least once, whatever the generator draws: a task on each host, a refusal, garbage.
    @example(body=_push(f"{HOST}/library/nginx:1"), authorization=AUTH, headers={}, content_type="application/json")
    @example(body=_push(f"{OTHER_HOST}/library/redis:7", cloudevents=True), authorization=OTHER_AUTH,
             headers={"X-Harbor-Event-Id": "ev-1"}, content_type="application/cloudevents+json")
    @example(body=_push(f"{HOST}/library/nginx:1"), authorization=OTHER_AUTH, headers={},
             content_type="application/json")
    @example(body=b"\xff{", authorization=AUTH, headers={}, content_type="application/json")
    def post(body, authorization, headers, content_type):
        before = ConversionTask.objects.count()
        resp = post_webhook(api, None, raw=body, auth=authorization, headers=headers, content_type=content_type)
        assert resp.status_code in (200, 400, 401, 415), (resp.status_code, resp.content[:300], body[:300])
        if resp.status_code != 200:
            assert_error_body(resp.status_code, resp.content, resp["Content-Type"])
        created = ConversionTask.objects.count() - before
        if authorization not in (AUTH, OTHER_AUTH):
            assert created == 0, (authorization, body[:300])
        if resp.status_code != 200:
            assert created == 0  # an error creates nothing: all resources or none
        seen[resp.status_code] += 1
        seen["tasks"] += created

    post()
    # The generator reached every outcome, task creation included (else the fuzz proved little).
    assert seen[200] and seen[400] and seen[401] and seen["tasks"], seen


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(urls=st.lists(st.sampled_from([f"{HOST}/library/nginx:1", f"{OTHER_HOST}/library/redis:7"]),
                     min_size=1, max_size=3),
       authorization=st.sampled_from([AUTH, OTHER_AUTH]))
def test_a_header_is_valid_only_for_its_own_host(locked_down, api, urls, authorization):
    """A resource on a host whose header differs makes the whole request 401 and creates nothing."""
    before = ConversionTask.objects.count()
    payload = {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": u} for u in urls]}}
    resp = post_webhook(api, payload, auth=authorization)
    own = HOST if authorization == AUTH else OTHER_HOST
    if all(u.startswith(own + "/") for u in urls):
        assert resp.status_code == 200 and ConversionTask.objects.count() - before == len(set(urls))
    else:
        assert resp.status_code == 401 and ConversionTask.objects.count() == before


@pytest.mark.parametrize("path", ["/api/v1/conversions", "/admin/login/", "/nowhere"])
def test_a_body_over_the_limit_is_413_before_anything_reads_it(locked_down, api, settings, path):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert limit == 1024 * 1024
    resp = api.generic("POST", path, b"{" + b" " * limit, content_type="application/json",
                       headers={"Authorization": AUTH})
    assert resp.status_code == 413 and int(resp["Content-Length"]) == len(resp.content)
    assert json.loads(resp.content) == {"code": "ERR_PAYLOAD_TOO_LARGE",
                                        "message": f"request body is larger than {limit} bytes"}
    assert ConversionTask.objects.count() == 0
    # At the limit it is read and judged like any other body.
    resp = api.generic("POST", "/api/v1/conversions", b"{" + b" " * (limit - 2) + b"}",
                       content_type="application/json", headers={"Authorization": AUTH})
    assert resp.status_code == 200
