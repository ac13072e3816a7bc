"""Builds the Go checker (the reference eStargz reader, Debian's stargz-snapshotter 0.12) once per session.

The binary lands in ``tests/interop/bin/`` (git-ignored) under a name carrying the hash of ``main.go``, so an
edited checker is rebuilt and an unchanged one is reused. A missing Go toolchain is an error, not a skip.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess

import pytest

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "checker" / "main.go"
BIN_DIR = HERE / "bin"
GOPATH = "/usr/share/gocode"  # Debian's golang-github-containerd-stargz-snapshotter-dev installs here


def build_checker() -> pathlib.Path:
    tag = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    binary = BIN_DIR / f"checker-{tag}"
    if binary.exists():
        return binary
    BIN_DIR.mkdir(exist_ok=True)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": str(BIN_DIR / "gocache"),
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run(["go", "build", "-o", str(tmp), SOURCE.name], cwd=SOURCE.parent, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"building the Go checker failed:\n{proc.stderr}"
    os.replace(tmp, binary)  # atomic: parallel sessions never run a half-written binary
    for stale in BIN_DIR.glob("checker-*"):
        if stale != binary and not stale.name.startswith(f"{binary.name}."):
            stale.unlink(missing_ok=True)
    return binary


class Checker:
    """Runs the checker on a blob; :meth:`check` returns its report, :meth:`reject` the reader's complaint."""

    def __init__(self, binary: pathlib.Path):
        self.binary = binary

    def run(self, blob: os.PathLike, toc_digest: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), "-blob", os.fspath(blob), "-toc-digest", toc_digest],
                              capture_output=True, text=True, timeout=600)

    def check(self, blob: os.PathLike, toc_digest: str) -> dict:
        proc = self.run(blob, toc_digest)
        assert proc.returncode == 0, f"the reference reader refused {blob}: {proc.stderr.strip()}"
        report = json.loads(proc.stdout)
        report["by_name"] = {e["name"]: e for e in report["entries"]}
        return report

    def reject(self, blob: os.PathLike, toc_digest: str) -> str:
        proc = self.run(blob, toc_digest)
        assert proc.returncode != 0, f"the reference reader accepted {blob}"
        return proc.stderr


@pytest.fixture(scope="session")
def checker() -> Checker:
    return Checker(build_checker())
