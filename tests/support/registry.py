"""A real Debian ``docker-registry`` (distribution 2.8) on a free loopback port, for tests.

``RegistryServer(tmp_path).start()`` writes a config (filesystem storage, deletes enabled), starts the
binary, waits for ``/v2/`` and returns itself; ``.host`` is ``127.0.0.1:PORT``; ``.log_path`` is the
request log, a witness of every request. Auth variants: ``htpasswd={"user": "password"}`` or
``token=TokenIssuer`` (see tests/support/token_issuer.py).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import requests
import yaml

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    def __init__(self, root, *, htpasswd: dict[str, str] | None = None, token=None, port: int | None = None):
        self.root = os.fspath(root)
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.htpasswd = htpasswd
        self.token = token
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.root, "registry.log")

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config(self) -> dict:
        cfg = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": os.path.join(self.root, "data")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "acceld-test-secret"},
        }
        if self.htpasswd:
            path = os.path.join(self.root, "htpasswd")
            with open(path, "w") as fh:
                for user, password in self.htpasswd.items():
                    fh.write(_htpasswd_line(user, password))
            cfg["auth"] = {"htpasswd": {"realm": "acceld-test", "path": path}}
        elif self.token is not None:
            cfg["auth"] = {"token": self.token.registry_auth_config()}
        return cfg

    def start(self) -> "RegistryServer":
        os.makedirs(self.root, exist_ok=True)
        cfg_path = os.path.join(self.root, "config.yml")
        with open(cfg_path, "w") as fh:
            yaml.safe_dump(self._config(), fh)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", cfg_path], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {open(self.log_path).read()[-2000:]}")
            try:
                r = requests.get(f"{self.url}/v2/", timeout=1)
                if r.status_code in (200, 401):
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not answer on /v2/ within 15 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _htpasswd_line(user: str, password: str) -> str:
    """distribution accepts only bcrypt entries; htpasswd from apache2-utils makes them."""
    out = subprocess.run(["htpasswd", "-nbB", user, password], check=True, capture_output=True, text=True)
    return out.stdout.strip() + "\n"
