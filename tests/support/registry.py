"""A real Debian ``docker-registry`` (distribution 2.8) on a free loopback port, for tests.

``RegistryServer(tmp_path).start()`` writes a config (filesystem storage, deletes enabled), starts the
binary, waits for ``/v2/`` and returns itself; ``.host`` is ``127.0.0.1:PORT``; ``.log_path`` is the
request log, a witness of every request. Auth variants: ``htpasswd={"user": "password"}`` or
``token=TokenIssuer`` (see tests/support/token_issuer.py). ``tls=True`` serves HTTPS with a fresh
self-signed certificate (``.cert_path``), for the TLS and ``insecure`` policies.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import warnings

import requests
import yaml

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    def __init__(self, root, *, htpasswd: dict[str, str] | None = None, token=None, port: int | None = None,
                 tls: bool = False):
        self.root = os.fspath(root)
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.htpasswd = htpasswd
        self.token = token
        self.tls = tls
        self.cert_path = os.path.join(self.root, "tls.crt")
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.root, "registry.log")

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _config(self) -> dict:
        cfg = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": os.path.join(self.root, "data")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "acceld-test-secret"},
        }
        if self.tls:
            key_path = os.path.join(self.root, "tls.key")
            _write_self_signed(self.cert_path, key_path)
            cfg["http"]["tls"] = {"certificate": self.cert_path, "key": key_path}
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
                with warnings.catch_warnings():  # our own self-signed certificate
                    warnings.simplefilter("ignore")
                    r = requests.get(f"{self.url}/v2/", timeout=1, verify=False)
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


def _write_self_signed(cert_path: str, key_path: str) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acceld test registry")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
