"""The token-realm SSRF against the real service (gunicorn + qcluster): a configured registry answers with
``WWW-Authenticate: Bearer realm="http://127.0.0.2:8080/latest/meta-data/…"``; the worker must never connect
there and the task FAILs with a reason naming 127.0.0.2. A realm on a host listed in
``provider.source.<host>.token_realms`` (the real token issuer on 127.0.0.3, in front of a real registry) works.
"""
from __future__ import annotations

import base64
import os
import secrets
import time

import pytest
import requests

from tests.service.stack import AUTH, ServiceStack
from tests.support.quickpush import push_small_image
from tests.support.realm_trap import ChallengingRegistry, ConnectionWitness
from tests.support.registry import RegistryServer
from tests.support.stackctl import all_output, reconfigure, tag_pushes
from tests.support.token_issuer import SERVICE, TokenIssuer

pytestmark = pytest.mark.slow
ROBOT, ROBOT_PW = "robot$realm", "realm-pw-" + secrets.token_hex(8)
METADATA = "/latest/meta-data/iam/security-credentials/?anything=1"


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def world(tmp_path):
    witness = ConnectionWitness("127.0.0.2", 8080).start()
    trap = ChallengingRegistry(f"http://{witness.host}{METADATA}").start()
    issuer = TokenIssuer(tmp_path / "issuer", users={ROBOT: ROBOT_PW}, bind="127.0.0.3").start()
    registry = RegistryServer(tmp_path / "registry", token=issuer)
    stack = None
    try:
        registry.start()
        token = requests.get(issuer.realm, params={"service": SERVICE, "scope": "repository:src/app:pull,push"},
                             auth=(ROBOT, ROBOT_PW), timeout=10).json()["token"]
        push_small_image(registry.host, "src/app:1", {"bin/app": os.urandom(16 << 10)}, bearer=token)
        stack = ServiceStack(tmp_path, trap.host)
        reconfigure(stack, lambda cfg: cfg["provider"].update(source={
            trap.host: {"auth": b64(ROBOT, ROBOT_PW), "webhook": {"auth_header": AUTH}},
            registry.host: {"auth": b64(ROBOT, ROBOT_PW), "webhook": {"auth_header": AUTH},
                            "token_realms": ["127.0.0.3"]},
        }))
        stack.start()
        yield stack, witness, trap, registry
    finally:
        if stack is not None:
            stack.stop()
        registry.stop()
        issuer.stop()
        trap.stop()
        witness.stop()


def test_a_foreign_token_realm_is_refused_and_a_listed_one_works(world):
    stack, witness, trap, registry = world
    resp = stack.post(f"{trap.host}/library/app:1", sync=True)
    assert resp.status_code == 500 and resp.json()["code"] == "ERR_CONVERT_FAILED", resp.text
    task = next(t for t in stack.tasks() if t["source"].startswith(trap.host))
    assert task["status"] == "FAILED"
    assert f"token service on {witness.host}" in task["reason"], task["reason"]
    assert "token_realms" in task["reason"] and ROBOT_PW not in task["reason"]
    assert trap.requests, "the worker never asked the registry: the attack did not run"
    time.sleep(0.5)
    assert witness.connections == 0, f"the worker connected to the realm: {witness.received[:200]!r}"
    assert ROBOT_PW not in all_output(stack) and b64(ROBOT, ROBOT_PW) not in all_output(stack)

    # The real token issuer on a host of its own (127.0.0.3), listed in token_realms: the conversion works.
    resp = stack.post(f"{registry.host}/src/app:1", sync=True)
    assert resp.status_code == 200, f"{resp.text}\n{stack.logs()}"
    assert tag_pushes(registry.log(), "src/app", "1-esgz") == 1  # the registry's log witnesses the push

