"""The service under ``make bench-api``: gunicorn + qcluster as ``make run`` starts them, and their CPU time.

Split from bench/api.py (the entry point) by noun: the service here, the load in bench/api_load.py, the
task table in bench/api_tasks.py.
"""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time

import yaml

from acceld_project import run as acceld_run
from acceld_project import runtime
from tests.support.registry import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTH = "Bearer bench-api-s3cret"
PATH = "/api/v1/conversions"
OK = b'"Ok"\n'
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Service:
    """gunicorn + qcluster exactly as ``make run`` builds their command lines, each in its own session."""

    def __init__(self, root: str, registry_host: str, web_env: dict):
        self.root = root
        self.port = free_port()
        self.registry_host = registry_host
        self.config_path = os.path.join(root, "config.yaml")
        with open(self.config_path, "w") as fh:
            yaml.safe_dump({
                "server": {"host": "127.0.0.1", "port": self.port},
                "metric": {"enabled": True},
                "provider": {"work_dir": os.path.join(root, "work"),
                             "source": {registry_host: {"webhook": {"auth_header": AUTH}}}},
                "converter": {"worker": 2, "timeout": 300, "rules": [{"tag_suffix": "-esgz"}]},
            }, fh)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELD_", "DATABASE_URL", "PYTEST_"))}
        env.update({"ACCELD_CONFIG": self.config_path, "DJANGO_SETTINGS_MODULE": "acceld_project.settings",
                    "ACCELD_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
        env.update(web_env)
        self.env = env
        self.web: subprocess.Popen | None = None
        self.qcluster: subprocess.Popen | None = None

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with open(os.path.join(self.root, f"{name}.log"), "ab") as log:
            return subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def start(self) -> "Service":
        subprocess.run([sys.executable, os.path.join(ROOT, "manage.py"), "migrate", "--noinput", "-v", "0"],
                       cwd=ROOT, env=self.env, check=True)
        cfg = runtime.load_config(self.env)
        cmd = acceld_run.web_command(cfg, self.env, stop_timeout=5)
        # The access log is part of what `make run` does per request; keep it, but in a file.
        self.web = self._spawn("gunicorn", cmd)
        self.qcluster = self._spawn("qcluster", acceld_run.qcluster_command())
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.web.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log('gunicorn')}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/api/v1/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"acceld did not become healthy:\n{self.log('gunicorn')}")

    def stop_qcluster(self) -> None:
        _stop_group(self.qcluster)

    def stop(self) -> None:
        _stop_group(self.qcluster)
        _stop_group(self.web)

    def log(self, name: str, tail: int = 3000) -> str:
        try:
            with open(os.path.join(self.root, f"{name}.log"), errors="replace") as fh:
                return fh.read()[-tail:]
        except OSError:
            return ""


def _stop_group(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # stragglers in the group (workers)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        break


def session_cpu(sid: int | None) -> float:
    """CPU seconds (user + system, with reaped children) of every live process in session ``sid``."""
    if sid is None:
        return 0.0
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after "comm)": state ppid pgrp session ...
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK
