"""Deployment hardening against the real service (gunicorn + qcluster, as `make run` starts them):

- django-q2's Schedule admin, which would run any dotted function, is gone for a superuser; our task views work;
- a Host the service does not answer to gets 400, and pagination links never point at it;
- every answer carries the Content-Security-Policy; `make run` defaults (no TLS proxy): plain cookies, no HSTS;
  with ``server.tls_proxy: true`` behind a trusted proxy: Secure cookies, HSTS, https links;
- 30 wrong admin passwords, then the right one, do not log in (locked, and the page says so); the lockout
  is logged, no password is; the lock ends after its time;
- gunicorn's access log keeps the path of a request with Basic credentials but not the user name.
"""
from __future__ import annotations

import base64
import http.cookies
import re
import secrets
import time

import pytest
import requests

from tests.service.stack import AUTH, ServiceStack
from tests.support.stackctl import admin_session, all_output, csrf_token, reconfigure, wait_for

pytestmark = pytest.mark.slow
ADMIN_PW = "hardening-admin-" + secrets.token_hex(6)
WRONG_PREFIX = "wrong-guess-" + secrets.token_hex(4) + "-"


@pytest.fixture(scope="module")
def stack(module_stack):
    """`make run`'s defaults: no TLS proxy, no extra host names."""
    s = module_stack(qcluster=False, extra_env={"ACCELD_ADMIN_PASSWORD": ADMIN_PW})
    s.manage("acceld_admin")
    for i in range(3):  # three queued tasks (no qcluster runs them), for pagination
        assert s.post(s.source(f"nowhere/img:{i}"), sync=False).status_code == 200
    return s


def login_attempt(stack, password: str, username: str = "admin", proxied: str = "") -> requests.Response:
    """One login through the real form; ``proxied``: as a TLS proxy for that public host forwards it
    (X-Forwarded-Proto: https, which gunicorn believes from 127.0.0.1). requests keeps a Secure cookie for
    https URLs only, so the CSRF cookie is handed back by hand, as the proxy's client (on https) would."""
    headers = {"Host": proxied, "X-Forwarded-Proto": "https", "Origin": f"https://{proxied}"} if proxied else {}
    page = requests.get(stack.url + "/admin/login/", headers=headers, timeout=30)
    cookie = http.cookies.SimpleCookie(page.headers["Set-Cookie"])["csrftoken"].value
    return requests.post(stack.url + "/admin/login/?next=/admin/", allow_redirects=False, timeout=30,
                         headers={**headers, "Cookie": f"csrftoken={cookie}"},
                         data={"csrfmiddlewaretoken": csrf_token(page.text), "username": username,
                               "password": password, "next": "/admin/"})


def test_django_q_schedule_admin_is_gone_for_a_superuser(stack):
    admin = admin_session(stack, "admin", ADMIN_PW)
    add = admin.get(stack.url + "/admin/django_q/schedule/add/", timeout=30)
    assert add.status_code == 404
    token = csrf_token(admin.get(stack.url + "/admin/", timeout=30).text)
    resp = admin.post(stack.url + "/admin/django_q/schedule/add/", timeout=30, allow_redirects=False, data={
        "csrfmiddlewaretoken": token, "func": "os.mkdir", "args": "'/tmp/acceld-pwned'", "schedule_type": "O"})
    assert resp.status_code in (403, 404)
    index = admin.get(stack.url + "/admin/", timeout=30).text
    assert "/admin/django_q/schedule/" not in index and "/admin/conversions/conversiontask/" in index
    tasks = admin.get(stack.url + "/admin/conversions/conversiontask/", timeout=30)
    assert tasks.status_code == 200 and "nowhere/img:0" in tasks.text
    assert admin.get(stack.url + "/admin/conversions/conversiontask/convert/", timeout=30).status_code == 200
    failures = admin.get(stack.url + "/admin/django_q/failure/", timeout=30)
    assert failures.status_code == 200 and "resubmit" not in failures.text.lower()


def test_a_foreign_host_header_is_refused_and_links_stay_ours(stack):
    for path in ("/api/v1/conversions?paginated=true&limit=1", "/api/v1/health", "/admin/login/"):
        resp = requests.get(stack.url + path, headers={"Host": "evil.example", "Authorization": AUTH}, timeout=30)
        assert resp.status_code == 400, (path, resp.status_code)
        assert "evil.example" not in resp.text and resp.json()["code"] == "ERR_ILLEGAL_PARAMETER"
    page = requests.get(stack.url + "/api/v1/conversions", params={"paginated": "true", "limit": 1},
                        headers={"Authorization": AUTH, "X-Forwarded-Host": "evil.example"}, timeout=30).json()
    assert page["next"].startswith(f"http://127.0.0.1:{stack.port}/api/v1/conversions?"), page
    assert "Invalid HTTP_HOST header" in all_output(stack)  # the refusal is logged for the operator


def test_csp_on_every_answer_and_no_tls_settings_by_default(stack):
    for path in ("/admin/login/", "/api/v1/health", "/api/v1/conversions", "/nowhere"):
        resp = requests.get(stack.url + path, timeout=30)
        csp = resp.headers.get("Content-Security-Policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, (path, resp.headers)
    login = requests.get(stack.url + "/admin/login/", headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert "Strict-Transport-Security" not in login.headers
    assert "secure" not in login.headers["Set-Cookie"].lower()  # `make run` on loopback is plain HTTP


def test_thirty_wrong_passwords_lock_the_login_and_no_password_is_logged(stack):
    wrong = [f"{WRONG_PREFIX}{i}" for i in range(30)]
    codes = [login_attempt(stack, pw).status_code for pw in wrong]
    assert codes[:9] == [200] * 9, codes  # the form again, "Please enter the correct username and password"
    assert set(codes[9:]) == {429}, codes  # the 10th failure locks
    locked = login_attempt(stack, ADMIN_PW)  # the right password, now
    assert locked.status_code == 429 and "sessionid" not in locked.cookies
    assert "Account locked" in locked.text and "Try again in 15 minutes" in locked.text
    # Another user from the same address is not locked: the count is per (user, address).
    assert login_attempt(stack, "nobody's password", username="someone-else").status_code == 200
    out = all_output(stack)
    assert re.search(r'AXES: Locking out \{username: "admin", ip_address: "127.0.0.1"', out), out[-3000:]
    # Each refused attempt while locked (20 more wrong ones and the right one) has its line.
    assert out.count("admin login refused: user 'admin' from 127.0.0.1 is locked out") >= 21
    for pw in [*wrong, ADMIN_PW]:
        assert pw not in out


def test_the_access_log_has_the_path_but_not_the_basic_user(stack):
    user = "harbor-robot-" + secrets.token_hex(4)
    marker = "marker-" + secrets.token_hex(4)
    basic = "Basic " + base64.b64encode(f"{user}:pw-{marker}".encode()).decode()
    requests.get(stack.url + f"/api/v1/health?{marker}", headers={"Authorization": basic}, timeout=30)
    wait_for(lambda: marker in all_output(stack), 10, "the access log line")
    line = next(ln for ln in all_output(stack).splitlines() if marker in ln)
    assert f"/api/v1/health?{marker}" in line and " - - [" in line
    assert user not in all_output(stack)


@pytest.fixture
def tls_stack(module_registry, tmp_path):
    """Behind a TLS proxy on loopback (gunicorn trusts 127.0.0.1 for X-Forwarded-Proto), a short lockout."""
    s = ServiceStack(tmp_path, module_registry.host, extra_env={
        "ACCELD_ADMIN_PASSWORD": ADMIN_PW, "ACCELD_LOGIN_FAILURE_LIMIT": "3", "ACCELD_LOGIN_LOCKOUT_SECONDS": "4"})
    reconfigure(s, lambda cfg: cfg["server"].update(tls_proxy=True, allowed_hosts=["acceld.example.com"]))
    s.start(qcluster=False)
    try:
        s.manage("acceld_admin")
        for i in range(2):
            assert s.post(s.source(f"nowhere/tls:{i}"), sync=False).status_code == 200
        yield s
    finally:
        s.stop()


def test_behind_a_tls_proxy_cookies_are_secure_with_hsts_and_the_lock_ends(tls_stack):
    proxied = {"Host": "acceld.example.com", "X-Forwarded-Proto": "https"}
    login = requests.get(tls_stack.url + "/admin/login/", headers=proxied, timeout=30)
    assert login.status_code == 200
    assert int(login.headers["Strict-Transport-Security"].split("=")[1].split(";")[0]) >= 31536000
    assert "; secure" in login.headers["Set-Cookie"].lower()
    page = requests.get(tls_stack.url + "/api/v1/conversions", params={"paginated": "true", "limit": 1},
                        headers={**proxied, "Authorization": AUTH}, timeout=30).json()
    assert page["next"].startswith("https://acceld.example.com/api/v1/conversions?"), page
    direct = requests.get(tls_stack.url + "/admin/login/", timeout=30)  # not through the proxy: plain HTTP
    assert "Strict-Transport-Security" not in direct.headers

    # A short lock (3 failures, 4 s): locked, then the right password works again.
    host = "acceld.example.com"
    assert [login_attempt(tls_stack, f"{WRONG_PREFIX}{i}", proxied=host).status_code for i in range(3)] == [200, 200, 429]
    assert login_attempt(tls_stack, ADMIN_PW, proxied=host).status_code == 429
    time.sleep(4.5)
    resp = login_attempt(tls_stack, ADMIN_PW, proxied=host)
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/", resp.text[:300]
    assert "; secure" in resp.headers["Set-Cookie"].lower() and "sessionid=" in resp.headers["Set-Cookie"]
