"""No credential leaves the service: registry passwords (config ``auth``, docker ``config.json``), the bearer
tokens the registries' token service hands out, and the webhook ``Authorization`` values appear in no log
(gunicorn and qcluster stdout/stderr, Django logging at DEBUG), task reason, API answer, admin page or
``/metrics`` — also when conversions against a token-auth registry fail (404, wrong password, push denied).

Every secret is random per run, so a hit is a leak and not a coincidence; every output is checked to
hold what it should (the reasons, the sources), so an empty page cannot pass for a clean one.
"""
from __future__ import annotations

import base64
import json
import os
import secrets

import pytest
import requests

from tests.service.stack import AUTH, ServiceStack
from tests.support.quickpush import push_small_image
from tests.support.registry import RegistryServer
from tests.support.stackctl import admin_session, all_output, reconfigure
from tests.support.token_issuer import SERVICE, TokenIssuer

pytestmark = pytest.mark.slow

ROBOT, ROBOT_PW = "robot$acceld", "robot-pw-" + secrets.token_hex(8)
DOCKER_USER, DOCKER_PW = "dockeruser", "docker-pw-" + secrets.token_hex(8)
WRONG_PW = "wrong-pw-" + secrets.token_hex(8)
HOOK_B = "Bearer hook-b-" + secrets.token_hex(8)
HOOK_C_SECRET = "hook-c-" + secrets.token_hex(8)
HOOK_C = "Basic " + base64.b64encode(f"harbor:{HOOK_C_SECRET}".encode()).decode()
ADMIN_PW = "admin-pw-" + secrets.token_hex(8)


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def push_token(issuer: TokenIssuer, user: str, password: str, repo: str) -> str:
    resp = requests.get(issuer.realm, params={"service": SERVICE, "scope": f"repository:{repo}:pull,push"},
                        auth=(user, password), timeout=10)
    resp.raise_for_status()
    return resp.json()["token"]


@pytest.fixture
def world(tmp_path):
    """Three token-auth registries sharing one issuer, and a stack that knows them in three ways."""
    issuer = TokenIssuer(tmp_path / "issuer", users={ROBOT: ROBOT_PW, DOCKER_USER: DOCKER_PW},
                         grants={ROBOT: "*", DOCKER_USER: {"team/tool": "pull,push", "team/readonly": "pull"}}).start()
    regs = [RegistryServer(tmp_path / f"registry-{n}", token=issuer) for n in "abc"]
    stack = None
    try:
        for reg in regs:
            reg.start()
        a, b, c = regs
        files = {"etc/app.conf": b"setting=1\n", "bin/app": os.urandom(32 << 10)}
        push_small_image(a.host, "src/app:1", files, bearer=push_token(issuer, ROBOT, ROBOT_PW, "src/app"))
        push_small_image(b.host, "team/tool:1", files, bearer=push_token(issuer, ROBOT, ROBOT_PW, "team/tool"))
        push_small_image(b.host, "team/readonly:1", files,
                         bearer=push_token(issuer, ROBOT, ROBOT_PW, "team/readonly"))
        push_small_image(c.host, "src/app:1", files, bearer=push_token(issuer, ROBOT, ROBOT_PW, "src/app"))
        issuer.issued.clear()  # from here on, every token issued went to acceld

        docker_config = tmp_path / "docker"
        docker_config.mkdir()
        (docker_config / "config.json").write_text(json.dumps({"auths": {b.host: {"auth": b64(DOCKER_USER, DOCKER_PW)}}}))
        stack = ServiceStack(tmp_path, a.host, extra_env={
            "DOCKER_CONFIG": str(docker_config), "ACCELD_LOG_LEVEL": "DEBUG", "ACCELD_ADMIN_PASSWORD": ADMIN_PW})
        reconfigure(stack, lambda cfg: cfg["provider"].update(source={
            a.host: {"auth": b64(ROBOT, ROBOT_PW), "webhook": {"auth_header": AUTH}},  # config auth
            b.host: {"webhook": {"auth_header": HOOK_B}},  # credentials from $DOCKER_CONFIG/config.json
            c.host: {"auth": b64(ROBOT, WRONG_PW), "webhook": {"auth_header": HOOK_C}},  # a wrong password
        }))
        stack.start()
        assert "superuser" in stack.manage("acceld_admin").stdout
        yield stack, issuer, regs
    finally:
        if stack is not None:
            stack.stop()
        for reg in regs:
            reg.stop()
        issuer.stop()


def test_no_secret_in_logs_reasons_api_admin_or_metrics(world):
    stack, issuer, (a, b, c) = world
    outputs: dict[str, str] = {}

    def keep(name: str, resp: requests.Response) -> requests.Response:
        outputs[name] = f"{resp.status_code} {dict(resp.headers)}\n{resp.text}"
        return resp

    def hook(url: str, auth: str | None, name: str, sync: bool = True) -> requests.Response:
        return keep(name, stack.post(url, sync=sync, auth=auth))

    # Conversions that succeed with each kind of credential, and three that fail against the token registries.
    assert hook(f"{a.host}/src/app:1", AUTH, "ok-config-auth").status_code == 200, stack.logs()
    assert hook(f"{b.host}/team/tool:1", HOOK_B, "ok-docker-config").status_code == 200, stack.logs()
    missing = hook(f"{a.host}/src/missing:1", AUTH, "fail-missing")
    wrong_pw = hook(f"{c.host}/src/app:1", HOOK_C, "fail-wrong-password")
    denied = hook(f"{b.host}/team/readonly:1", HOOK_B, "fail-push-denied")
    for resp in (missing, wrong_pw, denied):
        assert resp.status_code == 500 and resp.json()["code"] == "ERR_CONVERT_FAILED", resp.text
    # Webhooks with the wrong header, or another host's header: refused without echoing anything.
    for name, url, auth in (("401-none", f"{b.host}/team/tool:1", None),
                            ("401-other-host", f"{b.host}/team/tool:1", AUTH),
                            ("401-near-miss", f"{c.host}/src/app:1", HOOK_C[:-1]),
                            ("401-mixed", f"{a.host}/src/app:1", HOOK_B)):
        assert hook(url, auth, name, sync=False).status_code == 401
    assert issuer.issued, "acceld never fetched a token: the registries did not exercise token auth"

    admin = admin_session(stack, "admin", ADMIN_PW)  # a webhook header lists only its own host's tasks
    tasks = admin.get(stack.url + "/api/v1/conversions", params={"verbose": "true"}, timeout=30).json()
    reasons = {t["source"]: t["reason"] for t in tasks if t["status"] == "FAILED"}
    assert set(reasons) == {f"{a.host}/src/missing:1", f"{c.host}/src/app:1", f"{b.host}/team/readonly:1"}
    assert all(reasons.values()), reasons

    # Every read-only surface, with each way of asking.
    for params in ({}, {"verbose": "true"}, {"paginated": "true", "verbose": "true"}, {"status": "FAILED"}):
        keep(f"list-{params}", admin.get(stack.url + "/api/v1/conversions", params=params, timeout=30))
        keep(f"list-hook-b-{params}", requests.get(stack.url + "/api/v1/conversions", params=params,
                                                   headers={"Authorization": HOOK_B}, timeout=30))
    keep("list-anonymous", requests.get(stack.url + "/api/v1/conversions", timeout=30))
    for path in ("/metrics", "/api/v1/health", "/api/v1/schema", "/nowhere"):
        keep(path, requests.get(stack.url + path, timeout=30))
    admin_pages = ["/admin/", "/admin/conversions/conversiontask/", "/admin/conversions/conversiontask/?status__exact=FAILED",
                   "/admin/conversions/conversiontask/convert/", "/admin/django_q/success/", "/admin/django_q/failure/",
                   "/admin/django_q/ormq/", "/admin/auth/user/"]
    admin_pages += [f"/admin/conversions/conversiontask/{t['id']}/change/" for t in tasks]
    for path in admin_pages:
        resp = keep("admin " + path, admin.get(stack.url + path, timeout=30))
        assert resp.status_code == 200, (path, resp.status_code)
    outputs["processes"] = all_output(stack)
    outputs["migrate"] = (lambda r: r.stdout + r.stderr)(stack.manage("migrate", "--noinput"))

    # The outputs hold what they should: the failures are explained where an operator looks.
    verbose = outputs["list-{'verbose': 'true'}"]
    admin_list = outputs["admin /admin/conversions/conversiontask/?status__exact=FAILED"]
    for reason in reasons.values():
        assert json.dumps(reason)[1:-1] in verbose
    assert all(src in admin_list for src in reasons)
    assert f"{b.host}/team/readonly:1" in outputs["list-hook-b-{}"] and a.host not in outputs["list-hook-b-{}"]
    assert "acceld_tasks{status=\"FAILED\"} 3" in outputs["/metrics"]
    assert "DEBUG" in outputs["processes"] and "failed" in outputs["processes"]

    secret_values = {
        "robot password": ROBOT_PW, "docker-config password": DOCKER_PW, "wrong password": WRONG_PW,
        "config auth": b64(ROBOT, ROBOT_PW), "wrong config auth": b64(ROBOT, WRONG_PW),
        "docker-config auth": b64(DOCKER_USER, DOCKER_PW), "webhook header A": AUTH, "webhook header B": HOOK_B,
        "webhook header C": HOOK_C, "webhook secret B": HOOK_B.split()[1], "webhook secret C": HOOK_C_SECRET,
        "webhook header C base64": HOOK_C.split()[1], "admin password": ADMIN_PW,
    }
    secret_values.update({f"bearer token #{i}": token for i, token in enumerate(issuer.issued)})
    # A JWT's signature alone is enough to find one cut or re-wrapped.
    secret_values.update({f"bearer token #{i} signature": token.rsplit(".", 1)[1]
                          for i, token in enumerate(issuer.issued)})
    leaks = [(what, where) for where, text in outputs.items() for what, value in secret_values.items()
             if value in text]
    assert not leaks, f"secrets found: {leaks}"
