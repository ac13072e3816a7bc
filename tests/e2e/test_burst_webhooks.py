"""A burst: 1,000 webhook POSTs for 50 images from 20 concurrent clients (loopback only, bounded count).

Every POST is answered 200; the 20 requests for one image elect one leader among them (the partial unique
index settles the race), so exactly 50 conversions run, each image is pulled once and its tag pushed once
(the registry's log is the witness), and all 1,000 tasks end COMPLETED.

The burst arrives before the qcluster starts: a request that comes after its image's conversion finished
is a new conversion by design (the tag may point at a new image), so only a burst that lands while the
conversions are pending can promise exactly 50. Harbor's real bursts (a project-wide push, redeliveries)
are that case: many events while the first conversions are still queued.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import time

import pytest
import requests

from tests.service.stack import AUTH, ServiceStack
from tests.support.quickpush import push_small_image
from tests.support.stackctl import tag_pushes

pytestmark = pytest.mark.slow

IMAGES, PER_IMAGE, CLIENTS = 50, 20, 20


def test_1000_webhooks_for_50_images_make_50_conversions(registry, tmp_path):
    repos = [f"burst/img{i:02d}" for i in range(IMAGES)]
    with requests.Session() as session:
        for repo in repos:
            push_small_image(registry.host, f"{repo}:1", {"app/bin": os.urandom(16 << 10)}, session=session)
    stack = ServiceStack(tmp_path, registry.host, worker=2, timeout=60).start(qcluster=False)
    try:
        sources = [stack.source(f"{repo}:1") for repo in repos]
        # The 20 requests for one image side by side: the 20 clients post the same source at the same
        # moment and race to create its leader.
        order = [sources[i // PER_IMAGE] for i in range(IMAGES * PER_IMAGE)]
        local = threading.local()

        def post(source: str) -> tuple[int, bytes]:
            if not hasattr(local, "session"):
                local.session = requests.Session()  # one keep-alive connection per client
            resp = local.session.post(f"{stack.url}/api/v1/conversions", timeout=120, headers={"Authorization": AUTH},
                                      json={"type": "PUSH_ARTIFACT", "event_data": {"resources": [
                                          {"resource_url": source, "tag": "1"}]}})
            return resp.status_code, resp.content

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(post, order))
        burst_seconds = time.monotonic() - started
        assert collections.Counter(answers) == {(200, b'"Ok"\n'): IMAGES * PER_IMAGE}, \
            collections.Counter(answers).most_common(5)

        tasks = stack.tasks(limit=1000)
        assert len(tasks) == IMAGES * PER_IMAGE
        leaders = [t for t in tasks if not t["shared_with"]]
        assert sorted(t["source"] for t in leaders) == sorted(sources)  # one per image, none twice
        leader_of = {t["id"]: t["source"] for t in leaders}
        assert all(leader_of[t["shared_with"]] == t["source"] for t in tasks if t["shared_with"])

        stack.start_qcluster()
        deadline = time.monotonic() + 240
        while stack.tasks(status="PROCESSING", limit=1) and time.monotonic() < deadline:
            time.sleep(0.5)  # a cheap poll: listing all 1000 each time would compete with the workers
        converted_seconds = time.monotonic() - started - burst_seconds
        done = stack.tasks(limit=1000)
        assert collections.Counter(t["status"] for t in done) == {"COMPLETED": IMAGES * PER_IMAGE}, stack.logs()
        assert sum(t["attempts"] for t in done if not t["shared_with"]) == IMAGES  # each leader ran once
        log = registry.log()
        assert {repo: tag_pushes(log, repo, "1-esgz") for repo in repos} == {repo: 1 for repo in repos}
        assert {repo: log.count(f'"GET /v2/{repo}/manifests/1 HTTP/') for repo in repos} == {r: 1 for r in repos}
        print(f"burst of {IMAGES * PER_IMAGE} webhooks: {burst_seconds:.1f} s, then {IMAGES} conversions: "
              f"{converted_seconds:.1f} s")
    finally:
        stack.stop()
