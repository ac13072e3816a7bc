"""``make run``: migrate, make the admin user, then run gunicorn and a qcluster until Ctrl-C.

``CONFIG=path`` (default ``config.yaml``, else ``config.example.yaml``) is handed to both as
``ACCELD_CONFIG``. gunicorn listens on ``server.host:server.port`` (or ``server.uds``). Each child runs
in its own session, so the terminal's Ctrl-C reaches only this runner, which stops them in order:
SIGTERM, up to ``ACCELD_STOP_TIMEOUT`` seconds (default 15) to finish, then SIGKILL. A conversion cut
off that way stays PROCESSING in the database and the next qcluster's reaper finishes it.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from acceld_project import runtime
from acceleration_sdk import __version__

ROOT = runtime.BASE_DIR
PR_SET_PDEATHSIG = 1  # linux/prctl.h: signal this child when its parent dies
# gunicorn's default access log format with the user column ("%(u)s") replaced by "-": gunicorn fills it
# from a Basic Authorization header, which is how Harbor may send its webhook secret (user "harbor" or a
# robot name) and how a mistyped login arrives; neither belongs in a log.
ACCESS_LOG_FORMAT = '%(h)s %(l)s - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def _own_session() -> None:
    """In the child: a session of its own (no terminal Ctrl-C), and SIGTERM if the runner dies."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the runner's own cleanup still applies
        pass


def _config_file() -> Path:
    explicit = os.environ.get("CONFIG", "").strip()
    if explicit:
        return Path(explicit).resolve()
    found = runtime.config_path({}, Path.cwd())
    if found is None:
        sys.exit("acceld: no config.yaml or config.example.yaml here; set CONFIG=path")
    return found.resolve()


def _bind(cfg) -> str:
    if cfg.server.uds:
        return f"unix:{cfg.server.uds}"
    host = cfg.server.host or "0.0.0.0"
    return f"[{host}]:{cfg.server.port}" if ":" in host else f"{host}:{cfg.server.port}"


def web_command(cfg, env: dict, stop_timeout: float = 15) -> list[str]:
    """gunicorn on the config's address; gthread, so ?sync=true can hold a thread for a whole conversion
    without tripping the worker timeout."""
    return [sys.executable, "-m", "gunicorn", "acceld_project.wsgi:application", "--bind", _bind(cfg),
            "--worker-class", "gthread", "--workers", env.get("ACCELD_WEB_WORKERS", "2"),
            "--threads", env.get("ACCELD_WEB_THREADS", "16"), "--timeout", "120",
            "--graceful-timeout", str(int(stop_timeout)), "--access-logfile", "-",
            "--access-logformat", ACCESS_LOG_FORMAT, "--no-control-socket",
            "--forwarded-allow-ips", env.get("ACCELD_FORWARDED_ALLOW_IPS", "127.0.0.1")]


def qcluster_command() -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), "qcluster"]


def _stop(procs: dict[str, subprocess.Popen], timeout: float) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"acceld: {name} did not stop within {timeout:.0f} s; killing it", file=sys.stderr, flush=True)
        try:  # whatever is left in its session (gunicorn workers, django-q2 workers)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def main() -> int:
    config = _config_file()  # CONFIG is relative to where make was started
    os.chdir(ROOT)
    env = dict(os.environ, ACCELD_CONFIG=str(config), DJANGO_SETTINGS_MODULE="acceld_project.settings")
    try:
        cfg = runtime.load_config(env)
    except Exception as exc:  # ConfigError (a bad key, an unknown driver or option): one line, with the key's path
        print(f"acceld: {config}: {exc}", file=sys.stderr)
        return 2
    py = sys.executable
    manage = [py, str(ROOT / "manage.py")]
    print(f"acceld {__version__}: config {config}", flush=True)
    subprocess.run(manage + ["migrate", "--noinput", "-v", "0"], check=True, env=env)
    subprocess.run(manage + ["acceld_admin"], check=True, env=env)

    stop_timeout = float(env.get("ACCELD_STOP_TIMEOUT", "15"))
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    procs = {
        "gunicorn": subprocess.Popen(web_command(cfg, env, stop_timeout), env=env, preexec_fn=_own_session),
        "qcluster": subprocess.Popen(qcluster_command(), env=env, preexec_fn=_own_session),
    }
    print(f"acceld: serving on http://{_bind(cfg)} (admin at /admin/); Ctrl-C stops", flush=True)
    code = 0
    while not stopping:
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        if dead:
            print(f"acceld: {dead[0]} exited with {procs[dead[0]].returncode}; stopping", file=sys.stderr, flush=True)
            code = 1
            break
        time.sleep(0.2)
    print("acceld: stopping", flush=True)
    _stop(procs, stop_timeout)
    print("acceld: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
