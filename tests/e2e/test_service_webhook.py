"""End to end: Harbor-shaped webhooks -> gunicorn -> a real qcluster -> the real engine -> a real registry."""
from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

from tests.service.images import push_image, random_files
from tests.service.stack import AUTH, ServiceStack, count_requests, manifest_exists

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(module_registry, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("images")
    for repo_tag in ("library/nginx:latest", "library/redis:7", "library/httpd:2", "library/event:1"):
        push_image(module_registry.host, repo_tag, workdir)
    return workdir


@pytest.fixture(scope="module")
def stack(module_stack, images):
    return module_stack()


def test_sync_conversion_pushes_the_esgz_tag(stack, module_registry):
    src = stack.source("library/nginx:latest")
    resp = stack.post(src, sync=True)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack.logs()
    task = next(t for t in stack.tasks() if t["source"] == src)
    assert task["status"] == "COMPLETED" and task["reason"] == ""
    assert task["source_size"] > 0 and task["target_size"] > 0
    assert task["target"] == src + "-esgz" and task["driver"] == "estargz" and task["attempts"] == 1
    assert task["progress"]["percent"] == 100 and task["progress"]["layers"]  # per-layer progress was kept
    assert manifest_exists(module_registry.host, "library/nginx:latest-esgz")
    assert count_requests(module_registry.log(), "PUT", "/v2/library/nginx/manifests/latest-esgz") == 1


def test_async_answers_at_once_and_completes(stack, module_registry):
    src = stack.source("library/redis:7")
    started = time.monotonic()
    resp = stack.post(src)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n')
    assert time.monotonic() - started < 5
    stack.wait_tasks(lambda ts: any(t["source"] == src and t["status"] == "COMPLETED" for t in ts),
                     what="redis:7 to complete")
    assert manifest_exists(module_registry.host, "library/redis:7-esgz")


def test_pushing_the_converted_tag_does_not_loop(stack, module_registry):
    stack.post(stack.source("library/nginx:latest"), sync=True)
    before = module_registry.log()
    resp = stack.post(stack.source("library/nginx:latest-esgz"), sync=True)
    assert resp.status_code == 200
    task = stack.tasks(source="latest-esgz")[0]
    assert task["status"] == "COMPLETED" and task["skipped"] is True and task["attempts"] == 0
    assert module_registry.log() == before  # nothing pulled, nothing pushed


def test_sync_failure_is_500_with_the_reason(stack):
    src = stack.source("library/missing:1")
    resp = stack.post(src, sync=True)
    assert resp.status_code == 500
    body = json.loads(resp.content)
    assert body["code"] == "ERR_CONVERT_FAILED" and "missing" in body["message"]
    task = next(t for t in stack.tasks() if t["source"] == src)
    assert task["status"] == "FAILED" and task["reason"] == body["message"]
    assert AUTH not in resp.text and "Traceback" not in resp.text


def test_auth_is_checked_before_anything_is_fetched(stack, module_registry):
    before, tasks_before = module_registry.log(), len(stack.tasks())
    for auth in (None, "", "Bearer wrong"):
        resp = stack.post(stack.source("library/nginx:latest"), auth=auth)
        assert resp.status_code == 401 and resp.json()["code"] == "ERR_UNAUTHORIZED"
    resp = stack.post("127.0.0.2:9/library/nginx:latest")  # not a configured source: no SSRF
    assert resp.status_code == 401
    assert module_registry.log() == before and len(stack.tasks()) == tasks_before


def test_cloudevents_and_redelivery(stack, module_registry):
    src = stack.source("library/event:1")
    event = {"specversion": "1.0", "type": "harbor.artifact.pushed", "source": "/projects/1", "id": "ev-e2e-1",
             "time": "2023-04-03T06:04:53Z", "datacontenttype": "application/json",
             "data": {"resources": [{"digest": "sha256:" + "f" * 64, "tag": "1", "resource_url": src}]}}
    import requests

    for _ in range(3):  # Harbor redelivers the same event
        resp = requests.post(stack.url + "/api/v1/conversions?sync=true", data=json.dumps(event), timeout=300,
                             headers={"Authorization": AUTH, "Content-Type": "application/cloudevents+json"})
        assert resp.status_code == 200, resp.text
    tasks = [t for t in stack.tasks() if t["source"] == src]
    assert len(tasks) == 1 and tasks[0]["event_id"] == "ev-e2e-1" and tasks[0]["trigger"] == "webhook"
    assert count_requests(module_registry.log(), "PUT", "/v2/library/event/manifests/1-esgz") == 1


def test_list_health_metrics_over_http(stack):
    import requests

    assert requests.get(stack.url + "/api/v1/conversions", timeout=10).status_code == 401
    listed = requests.get(stack.url + "/api/v1/conversions", headers={"Authorization": AUTH}, timeout=10).json()
    assert isinstance(listed, list) and list(listed[0]) == [
        "id", "created", "finished", "source", "source_size", "target_size", "status", "reason", "target", "route"]
    health = requests.get(stack.url + "/api/v1/health", timeout=10)
    assert (health.status_code, health.text) == (200, "Ok")
    assert 'acceld_tasks{status="COMPLETED"}' in requests.get(stack.url + "/metrics", timeout=10).text
    assert requests.get(stack.url + "/nowhere", timeout=10).json() == {
        "code": "ERR_INVALID_ENDPOINT", "message": "Endpoint not found"}


# ------------------------------------------------------------ ten requests, one conversion


def test_ten_concurrent_requests_share_one_conversion(module_registry, tmp_path):
    push_image(module_registry.host, "library/shared:1", tmp_path, random_files(8, 1 << 20))
    stack = ServiceStack(tmp_path, module_registry.host, worker=4).start(qcluster=False)
    try:
        src = stack.source("library/shared:1")
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            # sync=true: every request waits; the cluster starts only once all ten are in.
            futures = [pool.submit(stack.post, src, sync=True) for _ in range(10)]
            stack.wait_tasks(lambda ts: len(ts) == 10, timeout=60, what="ten tasks")
            tasks = stack.tasks()
            leaders = [t for t in tasks if not t["shared_with"]]
            assert len(leaders) == 1 and all(t["shared_with"] == leaders[0]["id"] for t in tasks if t["shared_with"])
            stack.start_qcluster()
            answers = [f.result(timeout=300) for f in futures]
        assert [(a.status_code, a.content) for a in answers] == [(200, b'"Ok"\n')] * 10
        tasks = stack.tasks()
        assert [t["status"] for t in tasks] == ["COMPLETED"] * 10
        assert len({t["finished"] for t in tasks}) == 1  # they ended together
        assert len({(t["source_size"], t["target_size"]) for t in tasks}) == 1
        log = module_registry.log()
        assert count_requests(log, "GET", "/v2/library/shared/manifests/1") == 1  # one pull
        assert count_requests(log, "PUT", "/v2/library/shared/manifests/1-esgz") == 1  # one push
    finally:
        stack.stop()


def test_accelctl_task_create_and_list_like_acceld_scripts(stack, module_registry):
    import subprocess
    import sys

    addr = stack.url.removeprefix("http://")
    src = stack.source("library/httpd:2")
    accelctl = [sys.executable, "-m", "acceleration_sdk.cli", "task"]
    created = subprocess.run(accelctl + ["create", "--addr", addr, "--auth", AUTH, "--sync", src],
                             capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stderr
    listed = subprocess.run(accelctl + ["--addr", addr, "--auth", AUTH, "list"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    statuses = {row[4]: row[3] for row in rows}  # awk '{print $4}' is the STATUS
    assert statuses[src] == "COMPLETED"
    assert set(statuses.values()) <= {"COMPLETED", "FAILED", "PROCESSING"}
    assert manifest_exists(module_registry.host, "library/httpd:2-esgz")
