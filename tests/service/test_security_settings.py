"""The deployment hardening of acceld_project.security and queue_admin, through Django's test client: Host
names from the config, TLS-proxy settings, the Content-Security-Policy (and the one inline style it allows),
django-q2's admin without Schedule and read-only, login throttling settings. Over real gunicorn:
tests/e2e/test_security_hardening.py."""
from __future__ import annotations

import base64
import hashlib
import re
import socket
from pathlib import Path

import django.contrib.admin
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django_q.models import Failure, Schedule

from acceld_project import security
from acceleration_sdk import config as sdk_config
from acceleration_sdk.errors import ConfigError


def cfg(**server) -> sdk_config.Config:
    return sdk_config.from_dict({"server": server})


def test_allowed_hosts_are_loopback_the_listen_address_and_the_configured_names():
    assert security.allowed_hosts(cfg(host="127.0.0.1")) == ["localhost", "127.0.0.1", "[::1]"]
    assert security.allowed_hosts(cfg(host="10.1.2.3", allowed_hosts=["Acceld.Example.com", ".corp.example"])) == [
        "localhost", "127.0.0.1", "[::1]", "10.1.2.3", "acceld.example.com", ".corp.example"]
    assert security.allowed_hosts(cfg(host="::1"))[-1] == "[::1]"
    assert security.allowed_hosts(cfg(host="fd00::5"))[-1] == "[fd00::5]"
    assert security.allowed_hosts(cfg(host="0.0.0.0"))[-1] == socket.gethostname().lower()
    assert "*" not in security.allowed_hosts(cfg())
    for bad in ("acceld.example.com", [""], [3]):
        with pytest.raises(ConfigError, match="server.allowed_hosts"):
            cfg(allowed_hosts=bad)


def test_tls_proxy_turns_on_secure_cookies_and_hsts_and_is_off_by_default():
    assert security.tls_settings(cfg()) == {"SESSION_COOKIE_SECURE": False, "CSRF_COOKIE_SECURE": False,
                                            "SECURE_HSTS_SECONDS": 0}
    on = security.tls_settings(cfg(tls_proxy=True))
    assert on["SESSION_COOKIE_SECURE"] and on["CSRF_COOKIE_SECURE"] and on["SECURE_HSTS_SECONDS"] >= 31536000


def test_login_throttling_settings():
    axes = security.login_throttle_settings(env={})
    assert axes["AXES_FAILURE_LIMIT"] == 10 and axes["AXES_COOLOFF_TIME"].total_seconds() == 900
    assert axes["AXES_LOCKOUT_PARAMETERS"] == [["username", "ip_address"]]
    assert "Try again in 15 minutes" in axes["AXES_COOLOFF_MESSAGE"]
    short = security.login_throttle_settings(env={"ACCELD_LOGIN_FAILURE_LIMIT": "3", "ACCELD_LOGIN_LOCKOUT_SECONDS": "5"})
    assert short["AXES_FAILURE_LIMIT"] == 3 and short["AXES_COOLOFF_TIME"].total_seconds() == 5
    assert "Try again in 1 minute." in short["AXES_COOLOFF_MESSAGE"]


def test_the_csp_allows_no_inline_script_and_only_the_style_attributes_we_write():
    csp = security.CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in csp and "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    expected = "'sha256-" + base64.b64encode(hashlib.sha256(b"white-space: pre-wrap").digest()).decode() + "'"
    assert expected in csp
    # Every style="…" attribute the conversions app writes is one the policy allows by hash.
    root = Path(__file__).resolve().parents[2] / "conversions"
    written = {m for f in [*root.rglob("*.py"), *root.rglob("*.html")]
               for m in re.findall(r'style="([^"{]*)"', f.read_text())}
    assert written <= set(security.ADMIN_STYLE_ATTRIBUTES), written
    # Django's admin templates: no inline script, and no <style> outside the one unused case (see security.py).
    templates = Path(django.contrib.admin.__file__).parent / "templates"
    for f in templates.rglob("*.html"):
        text = f.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f
        assert "<style>" not in text or "if not actions_on_top and not actions_on_bottom" in text, f


@pytest.fixture
def superuser(acceld, db):
    get_user_model().objects.create_superuser("root", "root@example.com", "root-pass-1")
    client = Client()
    assert client.login(username="root", password="root-pass-1")
    return client


@pytest.mark.django_db
def test_django_q_schedule_admin_is_gone_and_its_task_admins_are_read_only(superuser):
    for path in ("/admin/django_q/schedule/", "/admin/django_q/schedule/add/"):
        assert superuser.get(path).status_code == 404, path
    resp = superuser.post("/admin/django_q/schedule/add/", {"func": "os.mkdir", "args": "'/tmp/pwned'",
                                                            "schedule_type": "O", "repeats": "-1"})
    assert resp.status_code == 404 and not Schedule.objects.exists()
    failure = Failure.objects.create(id="a" * 32, name="old", func="os.mkdir", args=("/tmp/pwned",), kwargs={},
                                     started="2026-01-01T00:00:00Z", stopped="2026-01-01T00:00:01Z", success=False)
    page = superuser.get("/admin/django_q/failure/")
    assert page.status_code == 200 and "old" in page.content.decode()
    assert "resubmit" not in page.content.decode() and 'name="action"' not in page.content.decode()
    resp = superuser.post("/admin/django_q/failure/", {"action": "resubmit_task", "_selected_action": [failure.pk]})
    assert Failure.objects.filter(pk=failure.pk).exists()  # nothing resubmitted (a FailAdmin resubmit deletes it)
    assert superuser.get(f"/admin/django_q/failure/{failure.pk}/change/").status_code == 200  # a view page
    assert superuser.post(f"/admin/django_q/failure/{failure.pk}/delete/").status_code == 403
    assert superuser.get("/admin/django_q/ormq/").status_code == 200
    # acceld's own task views still work.
    assert superuser.get("/admin/conversions/conversiontask/").status_code == 200
    assert superuser.get("/admin/conversions/conversiontask/convert/").status_code == 200
    assert "/admin/django_q/schedule/" not in superuser.get("/admin/").content.decode()


@pytest.mark.django_db
def test_an_unknown_host_is_a_json_400_and_every_answer_has_the_csp(acceld):
    client = Client()
    resp = client.get("/api/v1/health", HTTP_HOST="evil.example")
    assert resp.status_code == 400 and resp.json()["code"] == "ERR_ILLEGAL_PARAMETER"
    assert "server.allowed_hosts" in resp.json()["message"]
    for path in ("/api/v1/health", "/admin/login/"):
        resp = client.get(path, HTTP_HOST="127.0.0.1:2077")
        assert resp.status_code == 200
        assert resp.headers["Content-Security-Policy"] == security.CONTENT_SECURITY_POLICY
