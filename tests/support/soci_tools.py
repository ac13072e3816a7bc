"""Upstream soci-snapshotter's own checker and builder (``soci-verify``, ``soci-build``), built once per session.

``../shared/tools/soci-verify/build.sh`` beside the checkout (or ``$SOCI_VERIFY_DIR/build.sh``) builds both offline from the
vendored upstream sources into ``tests/interop/bin/soci/`` (git-ignored); it is idempotent (a stamp of its
inputs), so a second session reuses the binaries. A missing tool directory is an error, not a skip.
"""
from __future__ import annotations

import functools
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]
# The project's shared/ lies beside the checkout (CI clones main into another folder with a copy of shared/
# beside it); $SOCI_VERIFY_DIR overrides.
TOOL_DIR = pathlib.Path(os.environ.get("SOCI_VERIFY_DIR") or REPO.parent / "shared" / "tools" / "soci-verify")
BIN_DIR = REPO / "tests" / "interop" / "bin" / "soci"
# ztoc mod_time is written in the builder's local zone (time.MarshalText); ours is UTC
ENV = {**os.environ, "TZ": "UTC"}


@functools.lru_cache(maxsize=1)
def build() -> pathlib.Path:
    script = TOOL_DIR / "build.sh"
    assert script.exists(), f"{script} is missing: set SOCI_VERIFY_DIR to the soci-verify tool directory"
    proc = subprocess.run([str(script), str(BIN_DIR)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"building soci-verify failed:\n{proc.stderr[-4000:]}"
    return BIN_DIR


def soci_verify(ref: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(build() / "soci-verify"), *args, ref], capture_output=True, text=True,
                          timeout=900, env=ENV)


def soci_build(src: str, dst: str, *, span_size: int, min_layer_size: int = 0,
               optimizations: str = "") -> subprocess.CompletedProcess:
    args = [str(build() / "soci-build"), "-span-size", str(span_size), "-min-layer-size", str(min_layer_size)]
    if optimizations:
        args += ["-optimizations", optimizations]
    proc = subprocess.run([*args, src, dst], capture_output=True, text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, f"soci-build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    out = [ln for ln in proc.stdout.strip().splitlines()]
    return (out or lines or [""])[-1]
