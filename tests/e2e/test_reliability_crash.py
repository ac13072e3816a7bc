"""Faults on the service side: processes killed with SIGKILL lose no accepted webhook and push no tag twice.

A webhook answered 200 is a row in the database and a message in the queue; whatever dies after that
(a qcluster in the middle of a push, gunicorn and the qcluster at once), the next qcluster finishes it:
the reaper re-queues a run whose heartbeat stopped, and a message a dead cluster had taken comes back
after ``retry`` (``converter.timeout`` + ``ACCELD_RETRY_MARGIN``, 5 s here).
"""
from __future__ import annotations

import os

import pytest
import requests

from tests.service.images import push_image, random_files
from tests.service.stack import ServiceStack, manifest_exists
from tests.support.quickpush import push_small_image
from tests.support.stackctl import FAST_RECOVERY_ENV, crash, group_gone, restart_web, tag_pushes, wait_for

pytestmark = pytest.mark.slow

OCI_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def assert_image_whole(registry_host: str, repo: str, tag: str) -> None:
    """The tag's manifest names only blobs the registry has, at their full size (nothing half-pushed)."""
    resp = requests.get(f"http://{registry_host}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_ACCEPT},
                        timeout=10)
    assert resp.status_code == 200, resp.text
    manifest = resp.json()
    for desc in [manifest["config"], *manifest["layers"]]:
        head = requests.head(f"http://{registry_host}/v2/{repo}/blobs/{desc['digest']}", timeout=10)
        assert head.status_code == 200, desc
        assert int(head.headers["Content-Length"]) == desc["size"], desc


def test_qcluster_killed_during_the_push_finishes_with_one_push_of_the_tag(registry, tmp_path):
    # 24 MiB of incompressible files: the converted layer streams to the registry for a few seconds.
    push_image(registry.host, "library/big:1", tmp_path, random_files(24, 1 << 20))
    stack = ServiceStack(tmp_path, registry.host, worker=1, timeout=120, extra_env=FAST_RECOVERY_ENV).start()
    try:
        src = stack.source("library/big:1")
        seen = len(registry.log())  # skopeo's push of the source is in the log too
        assert stack.post(src).status_code == 200
        # The first upload of the target's blobs: the run is now writing to the registry.
        wait_for(lambda: '"POST /v2/library/big/blobs/uploads/' in registry.log()[seen:], 90,
                 "the push of the converted layer to start", interval=0.01, on_timeout=stack.logs)
        cluster = stack.qclusters[-1]
        crash(cluster)
        assert group_gone(cluster), "a worker of the killed cluster survived"
        assert tag_pushes(registry.log(), "library/big", "1-esgz") == 0  # cut before the tag was written
        assert not manifest_exists(registry.host, "library/big:1-esgz")
        task = stack.tasks()[0]
        assert (task["status"], task["attempts"]) == ("PROCESSING", 1), task

        stack.start_qcluster()
        done = stack.wait_tasks(lambda ts: ts[0]["status"] != "PROCESSING", timeout=180,
                                what="the next qcluster to finish the task")[0]
        assert (done["id"], done["status"], done["reason"]) == (task["id"], "COMPLETED", ""), done
        assert done["attempts"] == 2 and len(stack.tasks()) == 1
        assert tag_pushes(registry.log(), "library/big", "1-esgz") == 1
        assert_image_whole(registry.host, "library/big", "1-esgz")
    finally:
        stack.stop()


def test_server_and_worker_killed_together_with_20_queued_all_complete(registry, tmp_path):
    repos = [f"crash/app{i:02d}" for i in range(20)]
    with requests.Session() as session:
        for repo in repos:  # 2 MiB of its own random bytes each: twenty distinct conversions
            push_small_image(registry.host, f"{repo}:1", {"data/blob.bin": os.urandom(2 << 20)}, session=session)
    stack = ServiceStack(tmp_path, registry.host, worker=2, timeout=10, extra_env=FAST_RECOVERY_ENV)
    try:
        stack.start(qcluster=False)
        for repo in repos:  # all twenty queued before the cluster takes the first
            assert stack.post(stack.source(f"{repo}:1")).status_code == 200
        stack.start_qcluster()
        stack.wait_tasks(lambda ts: any(t["attempts"] for t in ts), timeout=60, what="a conversion to start")
        web, cluster = stack.web, stack.qclusters[-1]
        crash(web)
        crash(cluster)
        assert group_gone(web) and group_gone(cluster), "a process of the killed stack survived"

        restart_web(stack)
        before = stack.tasks()
        assert len(before) == 20
        unfinished = [t for t in before if t["status"] == "PROCESSING"]
        assert len(unfinished) >= 15, f"the kill came too late to prove anything: {before}"
        stack.start_qcluster()
        tasks = stack.wait_tasks(lambda ts: all(t["status"] != "PROCESSING" for t in ts), timeout=150,
                                 what="all 20 tasks to finish after the restart")
        assert len(tasks) == 20 and [t["status"] for t in tasks] == ["COMPLETED"] * 20, tasks
        assert sorted(t["source"] for t in tasks) == sorted(stack.source(f"{r}:1") for r in repos)
        log = registry.log()
        pushes = {repo: tag_pushes(log, repo, "1-esgz") for repo in repos}
        assert all(n >= 1 for n in pushes.values()), pushes
        # Only a run cut between writing its tag and recording COMPLETED may push again: at most one per worker.
        assert sum(n - 1 for n in pushes.values()) <= 2, pushes
        for repo in repos:
            assert_image_whole(registry.host, repo, "1-esgz")
    finally:
        stack.stop()
