"""Hostile requests over real sockets to gunicorn: huge bodies get 413 before they are read, malformed
HTTP gets a 4xx, nothing creates a task without the header, and the service stays healthy.

(The in-process fuzzing of payloads and the schema is tests/service/test_fuzz_api.py.)
"""
from __future__ import annotations

import json
import socket
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.stack import AUTH, ServiceStack
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.slow
LIMIT = 1024 * 1024  # settings.DATA_UPLOAD_MAX_MEMORY_SIZE


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reg = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    # No qcluster: tasks stay queued, so the task count is exactly what the requests created.
    s = ServiceStack(tmp_path_factory.mktemp("stack"), reg.host)
    try:
        s.start(qcluster=False)
        yield s
    finally:
        s.stop()
        reg.stop()


def raw_request(stack, data: bytes, read_timeout: float = 10) -> bytes:
    """Send bytes as they are; return what the server answered before closing or going quiet."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=read_timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


def _complete(answer: bytes) -> bool:
    """A whole response is in (gunicorn keeps the connection open after it)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return body.endswith(b"0\r\n\r\n")  # chunked


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1])


def webhook(source: str, pad: int = 0) -> bytes:
    return json.dumps({"type": "PUSH_ARTIFACT", "operator": "x" * pad,
                       "event_data": {"resources": [{"resource_url": source}]}}).encode()


def count(stack) -> int:
    return len(stack.tasks())


def test_a_body_over_1_mib_is_413_json_and_one_at_the_limit_is_served(stack):
    url = stack.url + "/api/v1/conversions"
    src = stack.source("limits/app:1")
    base = len(webhook(src))
    at_limit = webhook(src, pad=LIMIT - base)
    assert len(at_limit) == LIMIT
    before = count(stack)
    resp = requests.post(url, data=at_limit, headers={"Authorization": AUTH, "Content-Type": "application/json"},
                         timeout=30)
    assert resp.status_code == 200 and count(stack) == before + 1  # a big but allowed webhook works

    over = webhook(stack.source("limits/app:2"), pad=LIMIT - base + 1)
    for auth in (AUTH, None):
        resp = requests.post(url, data=over, timeout=30,
                             headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})})
        assert resp.status_code == 413, resp.text
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.json() == {"code": "ERR_PAYLOAD_TOO_LARGE", "message": f"request body is larger than {LIMIT} bytes"}
    assert count(stack) == before + 1


def test_413_comes_before_the_body_is_read(stack):
    """A client announces 1 GiB and sends 1 KiB: the answer comes at once, so the body was never awaited."""
    head = (f"POST /api/v1/conversions HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\nAuthorization: {AUTH}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {1 << 30}\r\n\r\n").encode()
    started = time.monotonic()
    answer = raw_request(stack, head + b"{" + b" " * 1023, read_timeout=10)
    assert time.monotonic() - started < 5
    assert status_of(answer) == 413 and b'"code":"ERR_PAYLOAD_TOO_LARGE"' in answer
    for path in ("/admin/login/", "/nowhere"):  # the one limit holds for every path
        answer = raw_request(stack, head.replace(b"/api/v1/conversions", path.encode()) + b"x" * 1024)
        assert status_of(answer) == 413


def test_a_chunked_body_of_any_size_is_not_a_5xx(stack):
    before = count(stack)

    def chunks():
        for _ in range(48):  # 3 MiB, no Content-Length
            yield b" " * 65536

    resp = requests.post(stack.url + "/api/v1/conversions", data=chunks(), timeout=60,
                         headers={"Authorization": AUTH, "Content-Type": "application/json"})
    assert 400 <= resp.status_code < 500, resp.status_code
    assert set(resp.json()) == {"code", "message"}
    assert count(stack) == before


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"POST /api/v1/conversions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /api/v1/conversions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /api/v1/conversions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    # request smuggling: both framings at once
    b"POST /api/v1/conversions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    b"GET /api/v1/health HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST /api/v1/conversions HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH.encode() + b"\r\nContent-Length: 4\r\n"
    b"Content-Type: application/json\r\n\r\n\xff\xfe\x00\x01",
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_http_is_a_4xx_and_the_service_stays_up(stack, data):
    before = count(stack)
    answer = raw_request(stack, data)
    if answer:  # gunicorn may also just close a connection it cannot parse
        assert 400 <= status_of(answer) < 500, answer[:300]
    assert requests.get(stack.url + "/api/v1/health", timeout=10).text == "Ok"
    assert count(stack) == before


# requests refuses a value with leading whitespace; anything else in latin-1 goes on the wire as it is
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80).map(str.lstrip)


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=2000) | st.text(max_size=400).map(str.encode),
       headers=st.dictionaries(st.sampled_from(["Authorization", "Content-Type", "X-Harbor-Event-Id", "ce-specversion",
                                                "ce-type", "ce-id", "User-Agent", "Cookie", "X-Forwarded-For"]),
                               header_values, max_size=5),
       query=st.dictionaries(st.sampled_from(["sync", "verbose", "offset", "limit", "status"]),
                             st.text(max_size=30), max_size=3),
       method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]))
def test_random_requests_over_the_wire_are_never_5xx(stack, body, headers, query, method):
    """Random methods, queries, headers and bodies; the valid header is never among them, so no task."""
    headers = {k: v for k, v in headers.items() if not (k == "Authorization" and v.strip() == AUTH)}
    before = count(stack)
    resp = requests.request(method, stack.url + "/api/v1/conversions", params=query, data=body,
                            headers=headers, timeout=30)
    assert resp.status_code < 500, (method, query, headers, body[:200], resp.status_code, resp.text[:300])
    if resp.status_code >= 400 and resp.headers.get("Connection") != "close":
        # The app's errors are acceld's JSON; only gunicorn's own refusal of invalid HTTP (a control
        # character in a header) is its HTML page, and it closes the connection.
        assert resp.headers.get("Content-Type", "").startswith("application/json"), (
            method, query, headers, body[:100], resp.status_code, resp.headers, resp.text[:300])
        assert set(resp.json()) == {"code", "message"}
    assert count(stack) == before


# ------------------------------------------------------------------ issue 12: attacks that were 500s or a DB lock


def push_body(urls) -> bytes:
    return json.dumps({"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": u} for u in urls]}}).encode()


def test_one_event_with_10000_resources_is_refused_at_once(stack):
    """10,000 identical resources made 10,000 tasks in 15 s; 20,000 held SQLite's write lock for 36 s."""
    before = count(stack)
    started = time.monotonic()
    resp = requests.post(stack.url + "/api/v1/conversions", data=push_body([stack.source("storm/app:1")] * 10_000),
                         headers={"Authorization": AUTH, "Content-Type": "application/json"}, timeout=60)
    assert time.monotonic() - started < 5
    assert resp.status_code == 400 and resp.json() == {
        "code": "ERR_ILLEGAL_PARAMETER",
        "message": "invalid webhook payload: event_data.resources has 10000 entries; at most 100 are accepted per event"}
    assert count(stack) == before
    resp = requests.post(stack.url + "/api/v1/conversions", data=push_body([stack.source("storm/app:1")] * 100),
                         headers={"Authorization": AUTH, "Content-Type": "application/json"}, timeout=60)
    assert resp.status_code == 200 and count(stack) == before + 1  # duplicates in one event: one task


def gunicorn_log(stack) -> str:
    return (stack.root / "gunicorn.log").read_text(errors="replace")


@pytest.mark.parametrize("auth, status", [(None, 401), (AUTH, 400)])
def test_json_nested_1000_deep_is_a_4xx_without_a_traceback(stack, auth, status):
    body = b'{"type": "PUSH_ARTIFACT", "event_data": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    resp = requests.post(stack.url + "/api/v1/conversions", data=body, timeout=30,
                         headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})})
    assert resp.status_code == status and set(resp.json()) == {"code", "message"}
    assert "Traceback" not in gunicorn_log(stack) and "RecursionError" not in gunicorn_log(stack)


@pytest.mark.parametrize("path", ["/api/v1/conversions", "/api/v1/schema"])
def test_format_xml_is_404_json_without_a_traceback(stack, path):
    resp = requests.get(stack.url + path, params={"format": "xml"}, headers={"Authorization": AUTH}, timeout=30)
    assert resp.status_code == 404 and resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["code"] == "ERR_INVALID_ENDPOINT"
    assert "Traceback" not in gunicorn_log(stack)


@pytest.mark.parametrize("url", ["{host}/forged/plain\n:latest", "{host}/app/x:lat\u00e9st\u0661",
                                 "{host}/app/x@sha256:" + "a" * 200_000, "{host}/app/x@sha256:\ud800"])
def test_loose_references_are_400_without_a_traceback(stack, url):
    before = count(stack)
    body = json.dumps({"type": "PUSH_ARTIFACT", "event_data": {"resources": [
        {"resource_url": url.format(host=stack.registry_host)}]}}).encode()  # ensure_ascii: "\ud800" travels
    resp = requests.post(stack.url + "/api/v1/conversions", data=body, timeout=30,
                         headers={"Authorization": AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["code"] == "ERR_ILLEGAL_PARAMETER"
    assert count(stack) == before and "Traceback" not in gunicorn_log(stack)
