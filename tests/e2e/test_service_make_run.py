"""``make run`` on a fresh clone: healthy within 10 s, the admin user exists, Ctrl-C stops everything.

The clone gets its own virtualenv that reuses this one's installed packages (a ``.pth`` line), so the
test needs no network; the clone's Makefile, scripts, settings and migrations are the ones under test.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import requests

from acceld_project.runtime import BASE_DIR
from tests.support.registry import free_port

pytestmark = pytest.mark.slow
PASSWORD = "make-run-pass-1"


def fresh_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(BASE_DIR), str(clone)], check=True, timeout=120)
    return clone


def borrowed_venv(tmp_path: Path, clone: Path) -> Path:
    """A venv whose site-packages point at ours, marked installed after the clone's requirements."""
    venv = tmp_path / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    marker = venv / ".installed"
    marker.touch()
    later = max((clone / f).stat().st_mtime for f in ("requirements.txt", "pyproject.toml")) + 5
    os.utime(marker, (later, later))
    return venv


def processes_under(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if str(path) in cmdline or cwd.startswith(str(path)):
            found.append(f"{pid}: {cmdline}")
    return found


def test_make_run_on_a_fresh_clone(tmp_path):
    clone = fresh_clone(tmp_path)
    venv = borrowed_venv(tmp_path, clone)
    port = free_port()
    example = (clone / "config.example.yaml").read_text()
    # config.yaml (which `make run` prefers) = the example on a free port, so parallel runs do not collide.
    (clone / "config.yaml").write_text(re.sub(r"(?m)^  port: \d+$", f"  port: {port}", example))
    assert f"port: {port}" in (clone / "config.yaml").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELD_", "DJANGO_", "DATABASE_URL", "PYTEST_"))}
    env.update(ACCELD_ADMIN_PASSWORD=PASSWORD, ACCELD_STOP_TIMEOUT="10")
    log = open(tmp_path / "make-run.log", "wb")
    started = time.monotonic()
    make = subprocess.Popen(["make", f"VENV={venv}", "run"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        healthy_after = None
        while time.monotonic() - started < 30:
            assert make.poll() is None, (tmp_path / "make-run.log").read_text()
            try:
                resp = requests.get(url + "/api/v1/health", timeout=2)
                if (resp.status_code, resp.text) == (200, "Ok"):
                    healthy_after = time.monotonic() - started
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        assert healthy_after is not None and healthy_after <= 10, (
            f"healthy after {healthy_after}\n{(tmp_path / 'make-run.log').read_text()}")
        assert (clone / "work" / "acceld.sqlite3").is_file()  # migrated a fresh SQLite under work_dir

        session = requests.Session()
        session.get(url + "/admin/login/", timeout=10)
        resp = session.post(url + "/admin/login/?next=/admin/", timeout=10, allow_redirects=False,
                            data={"username": "admin", "password": PASSWORD,
                                  "csrfmiddlewaretoken": session.cookies["csrftoken"], "next": "/admin/"},
                            headers={"Referer": url + "/admin/login/"})
        assert resp.status_code == 302 and resp.headers["Location"] == "/admin/"  # the admin user works
        assert session.get(url + "/static/admin/css/base.css", timeout=10).status_code == 200
        assert processes_under(clone), "gunicorn and qcluster should be running from the clone"

        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        make.wait(40)
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/api/v1/health", timeout=2)
        deadline = time.monotonic() + 10
        while processes_under(clone) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_under(clone) == []
        assert "acceld: stopped" in (tmp_path / "make-run.log").read_text()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        for line in processes_under(clone):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        log.close()
