"""The real service for end-to-end tests: gunicorn and a qcluster as processes, the same commands as ``make run``.

``ServiceStack(tmp_path, registry.host).start()`` writes a config that trusts the registry (with a webhook
auth header), migrates a fresh SQLite file, starts gunicorn on a free port and one qcluster. The qcluster
can be killed (the whole process group, as a crash would) and started again. Every process logs to a file
under the stack's root; ``logs()`` returns their tails for assertion messages.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from acceld_project import run as acceld_run
from acceld_project import runtime
from tests.support.registry import free_port

ROOT = runtime.BASE_DIR
AUTH = "Bearer e2e-s3cret"


class ServiceStack:
    def __init__(self, tmp_path: Path, registry_host: str, *, worker: int = 2, timeout: int = 300,
                 public_list: bool = False, extra_env: dict | None = None, converter: dict | None = None):
        self.root = Path(tmp_path) / "acceld"
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry_host = registry_host
        self.port = free_port()
        self.config_path = self.root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "server": {"host": "127.0.0.1", "port": self.port, "public_list": public_list},
            "metric": {"enabled": True},
            "provider": {"work_dir": str(self.root / "work"),
                         "source": {registry_host: {"webhook": {"auth_header": AUTH}}}},
            # ``converter`` replaces keys of this section, e.g. another driver and its rules
            "converter": {"worker": worker, "timeout": timeout, "rules": [{"tag_suffix": "-esgz"}],
                          **(converter or {})},
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELD_", "DATABASE_URL", "PYTEST_"))}
        env.update({
            "ACCELD_CONFIG": str(self.config_path), "DJANGO_SETTINGS_MODULE": "acceld_project.settings",
            # Quick failure detection for tests: a run without a heartbeat for 4 s is dead.
            "ACCELD_STALE_AFTER": "4", "ACCELD_HEARTBEAT_INTERVAL": "0.5", "ACCELD_REAPER_INTERVAL": "1",
            "ACCELD_PROGRESS_INTERVAL": "0.3", "PYTHONUNBUFFERED": "1",
        })
        env.update(extra_env or {})
        self.env = env
        self.web: subprocess.Popen | None = None
        self.qclusters: list[subprocess.Popen] = []
        self.session = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ processes

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=120, check=check)

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        try:
            return subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            log.close()

    def start(self, *, qcluster: bool = True) -> "ServiceStack":
        try:
            self.manage("migrate", "--noinput", "-v", "0")
            cfg = runtime.load_config(self.env)
            self.web = self._spawn("gunicorn", acceld_run.web_command(cfg, self.env, stop_timeout=5))
            self.wait_healthy()
            if qcluster:
                self.start_qcluster()
        except BaseException:
            self.stop()  # a fixture whose setup fails gets no teardown
            raise
        return self

    def start_qcluster(self) -> subprocess.Popen:
        proc = self._spawn(f"qcluster-{len(self.qclusters)}", acceld_run.qcluster_command())
        self.qclusters.append(proc)
        return proc

    def kill_qcluster(self, proc: subprocess.Popen | None = None, sig: int = signal.SIGKILL) -> None:
        """Kill a qcluster and every worker it forked (its own process group): a crash, not a stop."""
        proc = proc or self.qclusters[-1]
        _signal_group(proc, sig)
        proc.wait(30)

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.web is not None and self.web.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.logs()}")
            try:
                if self.session.get(self.url + "/api/v1/health", timeout=5).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # still booting
                pass
            time.sleep(0.1)
        raise RuntimeError(f"acceld did not become healthy:\n{self.logs()}")

    def stop(self) -> None:
        """SIGTERM each process group, SIGKILL what is left after 10 s; never leaves a process behind."""
        for proc in [*self.qclusters, self.web]:
            if proc is None:
                continue
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # stragglers in the group (workers) too
            proc.wait(10)
        self.session.close()

    def logs(self, tail: int = 3000) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    # ------------------------------------------------------------ API

    def source(self, repo_tag: str) -> str:
        return f"{self.registry_host}/{repo_tag}"

    def post(self, *urls: str, sync: bool = False, auth: str | None = AUTH, headers: dict | None = None,
             timeout: float = 300) -> requests.Response:
        payload = {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": u} for u in urls]}}
        hdrs = dict(headers or {})
        if auth is not None:
            hdrs["Authorization"] = auth
        return requests.post(f"{self.url}/api/v1/conversions", params={"sync": str(sync).lower()}, json=payload,
                             headers=hdrs, timeout=timeout)

    def tasks(self, **params) -> list[dict]:
        resp = self.session.get(self.url + "/api/v1/conversions", params={"verbose": "true", **params},
                                headers={"Authorization": AUTH}, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def wait_tasks(self, predicate, timeout: float = 120, what: str = "tasks") -> list[dict]:
        deadline = time.monotonic() + timeout
        tasks: list[dict] = []
        while time.monotonic() < deadline:
            tasks = self.tasks()
            if predicate(tasks):
                return tasks
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last tasks: {tasks}\n{self.logs()}")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def manifest_exists(registry_host: str, repo_tag: str) -> bool:
    repo, tag = repo_tag.rsplit(":", 1)
    resp = requests.head(f"http://{registry_host}/v2/{repo}/manifests/{tag}", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"})
    return resp.status_code == 200


def count_requests(registry_log: str, method: str, path: str) -> int:
    """How many ``METHOD path`` requests the registry logged (its access log is the witness)."""
    return registry_log.count(f'"{method} {path} HTTP/')
