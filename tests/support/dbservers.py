"""Real PostgreSQL and Redis servers for tests, from Debian's packages, on free loopback ports.

``PostgresServer().start()`` runs ``initdb`` and ``postgres`` in a fresh temp directory (as the ``postgres``
user when the tests run as root: PostgreSQL refuses to run as root), creates a database and gives its
``.url`` (``postgres://acceld:…@127.0.0.1:PORT/acceld``). ``RedisServer().start()`` runs ``redis-server``
with persistence off in its own temp directory; ``.url`` is ``redis://127.0.0.1:PORT/0``.

Both install their Debian package through ``scripts/system-deps.sh`` when the binary is missing, and
``stop()`` kills the server and removes its directory.
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.registry import free_port

ROOT = Path(__file__).resolve().parents[2]


def _install_system_deps() -> None:
    subprocess.run([str(ROOT / "scripts" / "system-deps.sh")], check=True, timeout=900)


def _postgres_bindir() -> Path:
    for attempt in range(2):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if found:
            return Path(found[-1]).parent
        if attempt == 0:
            _install_system_deps()
    raise AssertionError("PostgreSQL is not installed (Debian package postgresql) and system-deps.sh did not fix it")


def _redis_binary() -> str:
    for attempt in range(2):
        found = shutil.which("redis-server")
        if found:
            return found
        if attempt == 0:
            _install_system_deps()
    raise AssertionError("redis-server is not installed (Debian package redis-server)")


def _wait_port(port: int, proc: subprocess.Popen, log: Path, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


class PostgresServer:
    USER = "acceld"
    PASSWORD = "pg-test-pw"  # trust auth on loopback; the password only makes the URL realistic
    DATABASE = "acceld"

    def __init__(self):
        self.bindir = _postgres_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="acceld-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self._as_user: dict = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        return f"postgres://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/{self.DATABASE}"

    def _run(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd=self.root, **self._as_user)

    def start(self) -> "PostgresServer":
        try:
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.USER, "--auth=trust",
                      "-E", "UTF8", "--no-sync", "--no-instructions")
            log = open(self.log_path, "ab")
            try:
                # fsync off: a test database need not survive a power cut, and it makes migrate 5x faster
                self.proc = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                     "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                     "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                     "-c", "max_connections=200"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True, **self._as_user)
            finally:
                log.close()
            _wait_port(self.port, self.proc, self.log_path, "postgres")
            self._create_database()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname="postgres",
                                     autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'CREATE DATABASE "{self.DATABASE}"')
                return
            except psycopg.OperationalError:  # "the database system is starting up"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown; SIGTERM ("smart") waits for clients
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def pytest_on_postgresql(test_file: str, *, deselect: str | None = None,
                         env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``test_file`` (named explicitly, so pytest collects it even when its name is outside
    ``python_files``) in a child pytest whose ``DATABASE_URL`` is a fresh PostgreSQL (stopped after), leaving
    out the tests ``-k`` matches with ``deselect`` (the caller, when it is in that file). Always a server of
    its own, even when this run already is on PostgreSQL: the child's result never depends on the parent's
    database, and nothing is skipped. The caller asserts on the returned run, e.g. with ``outcomes``."""
    server = PostgresServer().start()
    try:
        return subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
                               *(["-k", f"not {deselect}"] if deselect else [])],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, **(env or {}), "DATABASE_URL": server.url})
    finally:
        server.stop()


def outcomes(run: subprocess.CompletedProcess) -> dict[str, int]:
    """The counts of a child pytest's last line ("1 failed, 5 passed, 2 warnings in 3.1s"), warnings left
    out: e.g. ``{"failed": 1, "passed": 5}``. A caller compares the whole dict, so a test that failed,
    errored, was skipped or was never collected changes it."""
    lines = run.stdout.strip().splitlines()
    counts = {word: int(n) for n, word in re.findall(r"(\d+) ([a-z]+)", lines[-1] if lines else "")}
    return {word: n for word, n in counts.items() if word not in ("warning", "warnings")}


class RedisServer:
    def __init__(self):
        self.binary = _redis_binary()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="acceld-redis-"))
        self.log_path = self.root / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        """SIGKILL: the broker vanishes with whatever it held (persistence is off)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def start(self) -> "RedisServer":
        """Start (or start again, on the same port after ``kill()``)."""
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.root), "--protected-mode", "yes"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        finally:
            log.close()
        try:
            _wait_port(self.port, self.proc, self.log_path, "redis-server")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
