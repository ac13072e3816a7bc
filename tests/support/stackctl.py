"""What the reliability, security, burst and scale-out tests do to a ``tests.service.stack.ServiceStack``
besides starting it: change its config, crash its processes, read everything it printed, count pushes.

``reconfigure(stack, fn)`` rewrites the YAML the processes read at start (call it before ``start()``
or before starting a process again). ``crash(proc)`` is ``kill -9`` of a process group: gunicorn with
its workers, or a qcluster with its sentinel, pusher, monitor and workers.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import yaml

from acceld_project import run as acceld_run
from acceld_project import runtime

FAST_RECOVERY_ENV = {
    # A message taken by a killed cluster runs elsewhere after converter.timeout + 5 s, not + 60 s.
    "ACCELD_RETRY_MARGIN": "5",
}


def reconfigure(stack, fn: Callable[[dict], None]) -> dict:
    data = yaml.safe_load(stack.config_path.read_text())
    fn(data)
    stack.config_path.write_text(yaml.safe_dump(data))
    return data


def crash(proc: subprocess.Popen | None) -> None:
    """SIGKILL the whole process group (nothing gets to clean up), then reap the leader."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(30)


def group_gone(proc: subprocess.Popen, timeout: float = 10) -> bool:
    """True once no process of ``proc``'s group is left (the workers die with their leader's group)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def restart_web(stack) -> subprocess.Popen:
    cfg = runtime.load_config(stack.env)
    stack.web = stack._spawn("gunicorn", acceld_run.web_command(cfg, stack.env, stop_timeout=5))
    stack.wait_healthy()
    return stack.web


def all_output(stack) -> str:
    """Everything every process of the stack printed (stdout and stderr, whole files)."""
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(Path(stack.root).glob("*.log")))


def tag_pushes(registry_log: str, repo: str, tag: str) -> int:
    """Manifest PUTs of ``repo:tag`` that the registry logged (each one a push of the tag)."""
    return registry_log.count(f'"PUT /v2/{repo}/manifests/{tag} HTTP/')


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2,
             on_timeout: Callable[[], str] = lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")
        time.sleep(interval)


def csrf_token(html: str) -> str:
    marker = 'name="csrfmiddlewaretoken" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


def admin_session(stack, username: str, password: str):
    """A ``requests.Session`` logged in to the admin through its real login form (CSRF token and all)."""
    import requests

    session = requests.Session()
    page = session.get(stack.url + "/admin/login/", timeout=30)
    resp = session.post(stack.url + "/admin/login/?next=/admin/", timeout=30, allow_redirects=False, data={
        "csrfmiddlewaretoken": csrf_token(page.text), "username": username, "password": password, "next": "/admin/"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/", (resp.status_code, resp.text[:500])
    return session
