"""A registry's error text that UTF-8 cannot encode, seen by a real worker (issue 12.6).

JSON's ``"\\ud800"`` decodes to a lone surrogate. Put in a task's reason it could not be stored: the worker
crashed while recording the failure, the reaper re-queued the task three times and it FAILED minutes later
as "interrupted 3 times (worker crashed...)" -- the registry's real answer was lost. The registry here is
the real ``docker-registry`` behind tests/support/faultproxy.py (a fake that only injects the one answer).
"""
from __future__ import annotations

import pytest

from tests.service.stack import ServiceStack
from tests.support.faultproxy import FaultProxy, status
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.slow


@pytest.fixture
def proxied(tmp_path):
    registry = RegistryServer(tmp_path / "registry").start()
    proxy = FaultProxy(registry.host).start()
    stack = ServiceStack(tmp_path, proxy.host)  # the configured source host is the proxy
    try:
        stack.start()
        yield stack, proxy
    finally:
        stack.stop()
        proxy.stop()
        registry.stop()


def test_a_lone_surrogate_in_a_registry_error_fails_the_task_with_the_real_reason(proxied):
    stack, proxy = proxied
    proxy.add("GET", r"/manifests/", status(404, registry_code="MANIFEST_UNKNOWN",
                                             message="manifest \ud800 unknown to this registry"))
    proxy.add("HEAD", r"/manifests/", status(404, registry_code="MANIFEST_UNKNOWN",
                                              message="manifest \ud800 unknown to this registry"))
    resp = stack.post(stack.source("library/ghost:1"), sync=True, timeout=120)
    assert resp.status_code == 500 and resp.json()["code"] == "ERR_CONVERT_FAILED"
    [task] = stack.tasks()
    assert task["status"] == "FAILED" and task["attempts"] == 1, task
    assert "manifest ? unknown to this registry" in task["reason"] and "interrupted" not in task["reason"]
    assert "manifest ? unknown to this registry" in resp.json()["message"]
