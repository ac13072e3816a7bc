"""Who may see and change what, over HTTP against gunicorn: the admin needs a login (and shows nothing
before it), its POSTs need the CSRF token, the task list needs credentials unless ``server.public_list``."""
from __future__ import annotations

import pytest
import requests

from tests.service.stack import AUTH, ServiceStack
from tests.support.stackctl import admin_session, csrf_token, reconfigure

pytestmark = pytest.mark.slow
ADMIN_PW = "access-admin-pw-1"
CHANGELIST = "/admin/conversions/conversiontask/"


@pytest.fixture(scope="module")
def stack(module_stack):
    s = module_stack(extra_env={"ACCELD_ADMIN_PASSWORD": ADMIN_PW})
    s.manage("acceld_admin")
    # A task with a recognisable source, FAILED at once (the image does not exist).
    assert s.post(s.source("secret-project/hidden-image:7"), sync=True).status_code == 500
    return s


def failed_task(stack) -> dict:
    return next(t for t in stack.tasks() if "hidden-image" in t["source"])


@pytest.mark.parametrize("path", ["/admin/", CHANGELIST, CHANGELIST + "?status__exact=FAILED", CHANGELIST + "convert/",
                                  "/admin/django_q/ormq/", "/admin/auth/user/", "{task}"])
@pytest.mark.parametrize("authorization", [None, AUTH], ids=["anonymous", "webhook-header"])
def test_admin_pages_redirect_to_login_and_show_nothing(stack, path, authorization):
    task = failed_task(stack)
    path = path.replace("{task}", f"{CHANGELIST}{task['id']}/change/")
    headers = {"Authorization": authorization} if authorization else {}
    resp = requests.get(stack.url + path, headers=headers, allow_redirects=False, timeout=30)
    assert resp.status_code == 302, (path, resp.status_code)
    assert resp.headers["Location"].startswith("/admin/login/?next=")
    assert "hidden-image" not in resp.text and task["id"] not in resp.text
    followed = requests.get(stack.url + path, headers=headers, timeout=30)
    assert followed.url.startswith(stack.url + "/admin/login/") and 'name="password"' in followed.text
    assert "hidden-image" not in followed.text


def test_a_wrong_password_does_not_log_in(stack):
    session = requests.Session()
    page = session.get(stack.url + "/admin/login/", timeout=30)
    resp = session.post(stack.url + "/admin/login/?next=/admin/", allow_redirects=False, timeout=30, data={
        "csrfmiddlewaretoken": csrf_token(page.text), "username": "admin", "password": ADMIN_PW + "x",
        "next": "/admin/"})
    assert resp.status_code == 200 and "Please enter the correct username and password" in resp.text
    assert session.get(stack.url + CHANGELIST, allow_redirects=False, timeout=30).status_code == 302


def test_admin_posts_need_the_csrf_token(stack):
    admin = admin_session(stack, "admin", ADMIN_PW)
    task = failed_task(stack)
    page = admin.get(stack.url + CHANGELIST, timeout=30)
    assert page.status_code == 200 and "hidden-image" in page.text  # logged in, the data is there
    action = {"action": "retry", "_selected_action": task["id"], "index": "0"}

    refused = admin.post(stack.url + CHANGELIST, data=action, allow_redirects=False, timeout=30)
    assert refused.status_code == 403 and "CSRF" in refused.text
    again = failed_task(stack)
    assert (again["status"], again["attempts"]) == ("FAILED", task["attempts"])  # the action did not run

    before = len(stack.tasks())
    refused = admin.post(stack.url + CHANGELIST + "convert/", data={"source": stack.source("csrf/probe:1")},
                         allow_redirects=False, timeout=30)
    assert refused.status_code == 403 and len(stack.tasks()) == before  # no task from a forged form

    # The same POSTs with the token go through: it was the token that was missing, nothing else.
    accepted = admin.post(stack.url + CHANGELIST, allow_redirects=False, timeout=30,
                          data={**action, "csrfmiddlewaretoken": csrf_token(page.text)})
    assert accepted.status_code == 302
    def rerun(ts):  # queued again: running now, or already finished a second time
        t = next(t for t in ts if t["id"] == task["id"])
        return t["status"] == "PROCESSING" or t["finished"] != task["finished"]

    stack.wait_tasks(rerun, timeout=60, what="the retried task to run again")
    form = admin.get(stack.url + CHANGELIST + "convert/", timeout=30)
    accepted = admin.post(stack.url + CHANGELIST + "convert/", allow_redirects=False, timeout=30,
                          data={"source": stack.source("csrf/probe:1"), "csrfmiddlewaretoken": csrf_token(form.text)})
    assert accepted.status_code == 302 and any(t["source"] == stack.source("csrf/probe:1") for t in stack.tasks())


def test_an_admin_session_does_not_authorize_webhooks(stack):
    admin = admin_session(stack, "admin", ADMIN_PW)
    before = len(stack.tasks())
    resp = admin.post(stack.url + "/api/v1/conversions", timeout=30,
                      json={"type": "PUSH_ARTIFACT", "event_data": {"resources": [
                          {"resource_url": stack.source("session/only:1")}]}})
    assert resp.status_code == 401 and resp.json()["code"] == "ERR_UNAUTHORIZED"
    assert len(stack.tasks()) == before


def test_the_list_needs_credentials(stack):
    url = stack.url + "/api/v1/conversions"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ""}, {"Authorization": "Token nope"}):
        resp = requests.get(url, headers=headers, timeout=30)
        assert resp.status_code == 401 and resp.json()["code"] == "ERR_UNAUTHORIZED", headers
        assert "hidden-image" not in resp.text
    token = stack.manage("drf_create_token", "admin").stdout.split()[2]
    admin = admin_session(stack, "admin", ADMIN_PW)
    for resp in (requests.get(url, headers={"Authorization": AUTH}, timeout=30),  # a webhook header
                 requests.get(url, headers={"Authorization": f"Token {token}"}, timeout=30),  # a DRF token
                 admin.get(url, timeout=30)):  # an admin session
        assert resp.status_code == 200 and "hidden-image" in resp.text


def test_public_list_opens_the_list_and_nothing_else(module_registry, tmp_path):
    stack = ServiceStack(tmp_path, module_registry.host, public_list=True)
    reconfigure(stack, lambda cfg: cfg["server"].update(public_list=True))
    stack.start(qcluster=False)
    try:
        assert stack.post(stack.source("public/app:1")).status_code == 200
        resp = requests.get(stack.url + "/api/v1/conversions", timeout=30)
        assert resp.status_code == 200 and resp.json()[0]["source"] == stack.source("public/app:1")
        assert stack.post(stack.source("public/app:2"), auth=None).status_code == 401  # webhooks still need it
        assert requests.get(stack.url + CHANGELIST, allow_redirects=False, timeout=30).status_code == 302
    finally:
        stack.stop()


def test_a_token_of_a_user_without_the_view_permission_lists_nothing(stack):
    stack.manage("shell", "-c", "from django.contrib.auth.models import User; "
                                "User.objects.create_user('nobody', password='nobody-pass-1')")
    token = stack.manage("drf_create_token", "nobody").stdout.split()[2]
    resp = requests.get(stack.url + "/api/v1/conversions", headers={"Authorization": f"Token {token}"}, timeout=30)
    assert resp.status_code == 403 and resp.json()["code"] == "ERR_FORBIDDEN"
    assert "hidden-image" not in resp.text
