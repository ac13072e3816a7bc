"""End to end: a qcluster killed mid-conversion; a new one finishes the task (acceld would delete it)."""
from __future__ import annotations

import pytest

from tests.service.images import push_image, random_files
from tests.service.stack import ServiceStack, count_requests, manifest_exists

pytestmark = pytest.mark.slow


def test_killed_qcluster_mid_conversion_is_finished_by_the_next(registry, tmp_path):
    # 96 MiB of incompressible files: a conversion of several seconds, long enough to be cut.
    push_image(registry.host, "library/big:1", tmp_path, random_files(96, 1 << 20))
    stack = ServiceStack(tmp_path, registry.host).start()
    try:
        src = stack.source("library/big:1")
        assert stack.post(src).status_code == 200
        running = stack.wait_tasks(
            lambda ts: bool(ts) and ts[0]["attempts"] == 1 and bool(ts[0]["progress"].get("layers")),
            timeout=60, what="the conversion to report progress")[0]
        assert running["status"] == "PROCESSING"
        stack.kill_qcluster()  # SIGKILL to the cluster and all its workers
        task = stack.tasks()[0]
        assert task["status"] == "PROCESSING" and task["attempts"] == 1
        assert not manifest_exists(registry.host, "library/big:1-esgz")  # it really was cut mid-way

        stack.start_qcluster()
        done = stack.wait_tasks(lambda ts: ts[0]["status"] != "PROCESSING", timeout=180,
                                what="the new qcluster to finish the task")[0]
        assert done["id"] == running["id"] and done["status"] == "COMPLETED", done
        assert done["attempts"] == 2 and done["reason"] == ""
        assert manifest_exists(registry.host, "library/big:1-esgz")
        assert count_requests(registry.log(), "PUT", "/v2/library/big/manifests/1-esgz") == 1
        assert "re-queued" in stack.logs(tail=100000)
    finally:
        stack.stop()


def test_sigterm_lets_the_cluster_stop_and_a_restart_keeps_the_tasks(registry, tmp_path):
    push_image(registry.host, "library/small:1", tmp_path)
    stack = ServiceStack(tmp_path, registry.host).start()
    try:
        assert stack.post(stack.source("library/small:1"), sync=True).status_code == 200
        stack.kill_qcluster(sig=15)  # a clean stop
        stack.start_qcluster()
        tasks = stack.tasks()
        assert [t["status"] for t in tasks] == ["COMPLETED"]  # persisted; nothing re-ran
        assert count_requests(registry.log(), "PUT", "/v2/library/small/manifests/1-esgz") == 1
    finally:
        stack.stop()
