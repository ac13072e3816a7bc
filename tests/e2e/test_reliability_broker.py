"""The Redis broker goes away (SIGKILL, nothing persisted) and comes back: webhooks answered meanwhile, and
messages it held, are not lost. The task row is the truth; the reaper re-queues a PROCESSING task whose
message never started after ``retry`` (``converter.timeout`` + ``ACCELD_RETRY_MARGIN``)."""
from __future__ import annotations

import os

import pytest

from tests.service.stack import ServiceStack
from tests.support.dbservers import RedisServer
from tests.support.quickpush import push_small_image
from tests.support.registry import RegistryServer
from tests.support.stackctl import FAST_RECOVERY_ENV, reconfigure, tag_pushes

pytestmark = pytest.mark.slow


def test_webhooks_during_a_broker_outage_complete_when_it_returns(tmp_path):
    reg = RegistryServer(tmp_path / "registry").start()
    redis = RedisServer().start()
    stack = ServiceStack(tmp_path, reg.host, worker=1, timeout=5, extra_env=FAST_RECOVERY_ENV)
    try:
        for n in (1, 2):
            push_small_image(reg.host, f"outage/app:{n}", {"bin/app": os.urandom(64 << 10)})
        reconfigure(stack, lambda cfg: cfg["server"].update(redis=redis.url))
        stack.start(qcluster=False)
        # Queued while the broker is up, taken by no one, then the broker dies with the message in it.
        assert stack.post(stack.source("outage/app:1")).status_code == 200
        redis.kill()
        # Accepted while the broker is down: the row is written, the enqueue fails (and is logged).
        resp = stack.post(stack.source("outage/app:2"))
        assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack.logs()
        assert [t["status"] for t in stack.tasks()] == ["PROCESSING", "PROCESSING"]

        redis.start()
        stack.start_qcluster()
        tasks = stack.wait_tasks(lambda ts: all(t["status"] != "PROCESSING" for t in ts), timeout=90,
                                 what="both tasks to complete once the broker is back")
        assert [(t["status"], t["attempts"]) for t in tasks] == [("COMPLETED", 1), ("COMPLETED", 1)], tasks
        log = reg.log()
        assert [tag_pushes(log, "outage/app", f"{n}-esgz") for n in (1, 2)] == [1, 1]
        assert stack.logs(tail=100000).count("re-queued") >= 2
    finally:
        stack.stop()
        redis.stop()
        reg.stop()
