"""``make bench-api``: the webhook POST rate and the task list's latency of the real service.

What runs: the service as ``make run`` starts it (``acceld_project.run.web_command`` -> gunicorn gthread,
``manage.py qcluster``) on a fresh SQLite file under a temp work_dir and a free loopback port, plus a real
Debian ``docker-registry`` on loopback that the config trusts (with a webhook auth header). The posted images
do not exist in that registry, so each conversion fails fast on a manifest 404: the queue does real work
(claim, one registry round trip, record FAILED) without pulling anything.

What is measured (each phase bounded by a request count and a time limit):

1. ``post+queue``: async webhook POSTs (``?sync=false``), one resource each, every source distinct so the
   dedup (follow a running conversion) never hides the work, while the qcluster drains the queue beside it,
   all on the same cores as the load generator. This is the headline figure (the target is >= 400/s, 0 errors).
2. ``post``: the same with the qcluster stopped: the web tier alone (parse, auth, insert task, enqueue).
3. ``GET /api/v1/conversions`` with exactly ``--tasks`` tasks in the database (bulk_create through the ORM,
   a realistic mix of statuses), one keep-alive client, sequential: p50/p95 of the whole response read, for the
   default shape (acceld's array of every task) and ``?limit=100``. The qcluster is stopped (nothing writes),
   so the service answers the full list from the copy it keeps while nothing is committed
   (conversions/listing.py); ``(default, fresh)`` commits a change to one task before each GET, so every
   answer is rendered afresh: the price of the full list while conversions are finishing.
4. ``GET /admin/dashboard/`` with ``--dashboard-tasks`` tasks (default 100,000, the same mix, 30 s apart, so
   about 20,000 fall in its 7-day window), logged in as a superuser: p50/p95 of the whole page. Every panel
   is one aggregate query (conversions/dashboard.py), so this should not grow with the task count.

The load generator is stdlib ``http.client`` on keep-alive connections, one per thread (cheaper per request
than requests.Session, so less of the shared CPU goes to the client). An error is any connection failure or an
answer other than 200 ``"Ok"``. CPU seconds used by the web server, the qcluster and the client during a phase
come from /proc. Prints a table; writes JSON to bench/results/api-<stamp>.json and api-latest.json.
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import yaml  # noqa: E402

from acceld_project import run as acceld_run  # noqa: E402
from acceld_project import runtime  # noqa: E402
from tests.support.registry import RegistryServer, free_port  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results")
AUTH = "Bearer bench-api-s3cret"
PATH = "/api/v1/conversions"
OK = b'"Ok"\n'
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the service


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


# ---------------------------------------------------------------- load


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (seconds in, milliseconds out)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k] * 1000


def webhook_body(host: str, i: int, run: str) -> bytes:
    return json.dumps({"type": "PUSH_ARTIFACT", "occur_at": 1680501893, "operator": "admin",
                       "event_data": {"resources": [{"digest": "", "tag": "v1",
                                                     "resource_url": f"{host}/bench-{run}/app{i}:v1"}],
                                      "repository": {"name": f"app{i}", "namespace": f"bench-{run}"}}}).encode()


def post_load(svc: Service, *, run: str, count: int, duration: float, concurrency: int,
              sids: dict[str, int | None]) -> dict:
    """``count`` async webhook POSTs (or as many as fit in ``duration`` s) from ``concurrency`` threads."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    headers = {"Authorization": AUTH, "Content-Type": "application/json", "User-Agent": "Harbor"}
    bodies = [webhook_body(svc.registry_host, i, run) for i in range(count)]
    start_gate = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
        mine: list[float] = []
        bad: list[str] = []
        start_gate.wait()
        while True:
            i = next(counter)
            if i >= count or time.monotonic() >= deadline[0]:
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", PATH + "?sync=false", bodies[i], headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                bad.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
                continue
            mine.append(time.perf_counter() - t0)
            if resp.status != 200 or data != OK:
                bad.append(f"{resp.status} {data[:200]!r}")
            if resp.will_close:
                conn.close()
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    cpu0 = {name: session_cpu(sid) for name, sid in sids.items()}
    client0 = time.process_time()
    deadline[0] = time.monotonic() + duration
    t0 = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = {name: round(session_cpu(sid) - cpu0[name], 2) for name, sid in sids.items()}
    cpu["client"] = round(time.process_time() - client0, 2)
    latencies.sort()
    done = len(latencies)
    return {
        "requests": done, "errors": len(errors), "error_samples": sorted(set(errors))[:5],
        "seconds": round(elapsed, 2), "per_second": round(done / elapsed, 1) if elapsed else 0.0,
        "concurrency": concurrency,
        "latency_ms": {"p50": round(pct(latencies, 50), 2), "p95": round(pct(latencies, 95), 2),
                       "p99": round(pct(latencies, 99), 2)},
        "cpu_seconds": cpu,
        "cpu_ms_per_request": {k: round(1000 * v / done, 2) if done else None for k, v in cpu.items()},
    }


def get_latency(svc: Service, query: str, n: int, seconds: float, warmup: int = 5, label: str = "",
                before=None) -> dict:
    """``n`` sequential GETs after ``warmup`` uncounted ones, or as many as fit in ``seconds``.

    ``before()`` runs (untimed) before each GET: a commit there makes the service render the list afresh.
    """
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
    headers = {"Authorization": AUTH}
    samples: list[float] = []
    size, first = 0, b""
    deadline = time.monotonic() + seconds
    for i in range(warmup + n):
        if i > warmup and time.monotonic() >= deadline:
            break
        if before is not None:
            before()
        t0 = time.perf_counter()
        conn.request("GET", PATH + query, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        took = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"GET {PATH}{query}: {resp.status} {body[:300]!r}")
        if i >= warmup:
            samples.append(took)
        size, first = len(body), first or body
    conn.close()
    rows = json.loads(first)
    samples.sort()
    return {"query": label or query or "(default)", "requests": len(samples), "rows": len(rows), "bytes": size,
            "p50_ms": round(pct(samples, 50), 2), "p95_ms": round(pct(samples, 95), 2),
            "max_ms": round(samples[-1] * 1000, 2)}


def dashboard_latency(svc: Service, n: int, seconds: float, warmup: int = 2) -> dict:
    """Log in to the admin as a fresh superuser, then ``n`` sequential GETs of the dashboard."""
    import types

    from django.contrib.auth.models import User

    from tests.support.stackctl import admin_session

    User.objects.filter(username="bench").delete()
    User.objects.create_superuser("bench", password="bench-dashboard-pass-1")
    login = admin_session(types.SimpleNamespace(url=f"http://127.0.0.1:{svc.port}"), "bench", "bench-dashboard-pass-1")
    cookie = "; ".join(f"{c.name}={c.value}" for c in login.cookies)
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=120)
    samples: list[float] = []
    size = 0
    deadline = time.monotonic() + seconds
    for i in range(warmup + n):
        if i > warmup and time.monotonic() >= deadline:
            break
        t0 = time.perf_counter()
        conn.request("GET", "/admin/dashboard/", headers={"Cookie": cookie})
        resp = conn.getresponse()
        body = resp.read()
        took = time.perf_counter() - t0
        if resp.status != 200 or b'id="panel-timeline"' not in body:
            raise RuntimeError(f"GET /admin/dashboard/: {resp.status} {body[:300]!r}")
        if i >= warmup:
            samples.append(took)
        size = len(body)
    conn.close()
    samples.sort()
    return {"requests": len(samples), "bytes": size, "p50_ms": round(pct(samples, 50), 2),
            "p95_ms": round(pct(samples, 95), 2), "max_ms": round(samples[-1] * 1000, 2)}


# ---------------------------------------------------------------- the task table


def django_setup(config_path: str) -> None:
    for key in [k for k in os.environ if k.startswith(("ACCELD_", "DATABASE_URL"))]:
        del os.environ[key]
    os.environ["ACCELD_CONFIG"] = config_path
    os.environ["DJANGO_SETTINGS_MODULE"] = "acceld_project.settings"
    import django

    django.setup()


def fill_tasks(host: str, n: int) -> float:
    """Replace every task with ``n`` of them: 80% COMPLETED, 15% FAILED (with a reason), 5% PROCESSING."""
    from django.utils import timezone

    from conversions.models import ConversionTask, Status

    t0 = time.perf_counter()
    ConversionTask.objects.all().delete()
    now = timezone.now()
    rows = []
    for i in range(n):
        created = now - datetime.timedelta(seconds=30 * (n - i))
        kind = i % 20
        status = Status.PROCESSING if kind == 0 else Status.FAILED if kind <= 3 else Status.COMPLETED
        source = f"{host}/library/app{i}:v{i % 7}"
        rows.append(ConversionTask(
            source=source, target=source + "-esgz", status=status, created=created,
            finished=None if status == Status.PROCESSING else created + datetime.timedelta(seconds=41, microseconds=i),
            source_size=70254592 + i, target_size=72351744 + i if status == Status.COMPLETED else 0,
            reason=f"{source}: manifest unknown (registry said 404)" if status == Status.FAILED else "",
            driver="estargz", trigger="webhook",
            progress={"phase": "done", "percent": 100} if status != Status.PROCESSING else {},
        ))
    ConversionTask.objects.bulk_create(rows, batch_size=1000)
    assert ConversionTask.objects.count() == n
    return time.perf_counter() - t0


def touch_one_task() -> None:
    """Commit a change to one task (its reason), as a finishing conversion would."""
    from conversions.models import ConversionTask, Status

    task = ConversionTask.objects.filter(status=Status.FAILED).order_by("-created").first()
    ConversionTask.objects.filter(pk=task.pk).update(reason=f"touched at {time.time():.6f}")


def tasks_in_window() -> int:
    from django.utils import timezone

    from conversions import admin_dashboard
    from conversions.models import ConversionTask

    start, _ = admin_dashboard.window(timezone.now())
    return ConversionTask.objects.filter(created__gte=start).count()


def task_counts() -> dict:
    from django.db.models import Count

    from conversions.models import ConversionTask

    return {row["status"]: row["n"] for row in ConversionTask.objects.values("status").annotate(n=Count("pk"))}


# ---------------------------------------------------------------- report


def table(result: dict) -> str:
    m = result["machine"]
    out = [f"acceld API bench  {result['stamp']}  ({m['cpus']} CPUs, load {m['loadavg_before']:.1f} -> "
           f"{m['loadavg_after']:.1f}, gunicorn {result['web']['workers']}x{result['web']['threads']} gthread)", ""]
    out.append(f"{'phase':<12} {'reqs':>6} {'err':>4} {'secs':>6} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
               f"{'p99 ms':>7}  cpu ms/req (web / qcluster / client)")
    for name in ("post+queue", "post"):
        p = result.get(name)
        if not p:
            continue
        c = p["cpu_ms_per_request"]
        out.append(f"{name:<12} {p['requests']:>6} {p['errors']:>4} {p['seconds']:>6} {p['per_second']:>7} "
                   f"{p['latency_ms']['p50']:>7} {p['latency_ms']['p95']:>7} {p['latency_ms']['p99']:>7}  "
                   f"{c.get('web')} / {c.get('qcluster', '-')} / {c.get('client')}")
        if "drained" in p:
            out.append(f"    (the queue finished {p['drained']} conversions meanwhile)")
        for sample in p["error_samples"]:
            out.append(f"    error: {sample}")
    out.append("")
    out.append(f"GET {PATH} with {result['tasks']} tasks")
    out.append(f"{'query':<22} {'reqs':>5} {'rows':>6} {'bytes':>9} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}")
    for g in result["get"]:
        out.append(f"{g['query']:<22} {g['requests']:>5} {g['rows']:>6} {g['bytes']:>9} {g['p50_ms']:>7} "
                   f"{g['p95_ms']:>7} {g['max_ms']:>7}")
    d = result.get("dashboard")
    if d:
        out.append("")
        out.append(f"GET /admin/dashboard/ with {d['tasks']} tasks ({d['in_window']} in its 7 days)")
        out.append(f"{'':<22} {d['requests']:>5} {'':>6} {d['bytes']:>9} {d['p50_ms']:>7} {d['p95_ms']:>7} "
                   f"{d['max_ms']:>7}")
    out.append("")
    t = result["targets"]
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    out.append(f"targets: POST (async) >= 400/s with 0 errors: {verdict[t['post']]}; "
               f"GET list p50 <= 30 ms: {verdict[t['get']]}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000, help="POSTs per phase (default 5000)")
    ap.add_argument("--duration", type=float, default=30, help="time limit of a POST phase, s (default 30)")
    ap.add_argument("--concurrency", type=int, default=16, help="client threads for POSTs (default 16)")
    ap.add_argument("--tasks", type=int, default=10000, help="tasks in the database for GET (default 10000)")
    ap.add_argument("--get-requests", type=int, default=200, help="GETs per query (default 200)")
    ap.add_argument("--get-seconds", type=float, default=60, help="time limit per GET query, s (default 60)")
    ap.add_argument("--dashboard-tasks", type=int, default=100000,
                    help="tasks in the database for the admin dashboard (default 100000; 0: skip it)")
    ap.add_argument("--dashboard-requests", type=int, default=30, help="dashboard GETs (default 30)")
    ap.add_argument("--skip-post", action="store_true", help="only the GET phases")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="acceld-bench-api-")
    registry = RegistryServer(os.path.join(tmp, "registry")).start()
    web_env = {k: v for k, v in os.environ.items() if k in ("ACCELD_WEB_WORKERS", "ACCELD_WEB_THREADS")}
    svc = Service(tmp, registry.host, web_env)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result: dict = {
        "stamp": stamp, "tasks": args.tasks,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": os.getloadavg()[0]},
        "web": {"workers": int(web_env.get("ACCELD_WEB_WORKERS", "2")),
                "threads": int(web_env.get("ACCELD_WEB_THREADS", "16"))},
        "git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip(),
    }
    try:
        svc.start()
        django_setup(svc.config_path)
        sids = {"web": svc.web.pid, "qcluster": svc.qcluster.pid}
        if not args.skip_post:
            # Warm up: every gunicorn thread imports and connects once; not counted.
            post_load(svc, run="warmup", count=200, duration=10, concurrency=args.concurrency, sids={})
            before = task_counts()
            result["post+queue"] = post_load(svc, run="queue", count=args.requests, duration=args.duration,
                                             concurrency=args.concurrency, sids=sids)
            after = task_counts()
            # Conversions the queue finished while the webhooks came in (each fails fast: no such image).
            result["post+queue"]["drained"] = sum(after.values()) - after.get("PROCESSING", 0) - (
                sum(before.values()) - before.get("PROCESSING", 0))
        svc.stop_qcluster()
        if not args.skip_post:
            result["post"] = post_load(svc, run="web", count=args.requests, duration=args.duration,
                                       concurrency=args.concurrency, sids={"web": svc.web.pid})
        result["fill_seconds"] = round(fill_tasks(registry.host, args.tasks), 2)
        result["get"] = [get_latency(svc, q, args.get_requests, args.get_seconds) for q in ("", "?limit=100")]
        # The service keeps the full list while nothing is committed; this is the price after each write.
        result["get"].append(get_latency(svc, "", args.get_requests, args.get_seconds, label="(default, fresh)",
                                         before=touch_one_task))
        if args.dashboard_tasks:
            if args.dashboard_tasks != args.tasks:
                result["dashboard_fill_seconds"] = round(fill_tasks(registry.host, args.dashboard_tasks), 2)
            result["dashboard"] = {"tasks": args.dashboard_tasks, "in_window": tasks_in_window(),
                                   **dashboard_latency(svc, args.dashboard_requests, args.get_seconds)}
    finally:
        svc.stop()
        registry.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["machine"]["loadavg_after"] = os.getloadavg()[0]
    post = result.get("post+queue")
    result["targets"] = {
        "post": None if post is None else post["per_second"] >= 400 and post["errors"] == 0,
        "get": result["get"][0]["p50_ms"] <= 30,
    }
    print(table(result))
    os.makedirs(RESULTS, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    for name in (f"api-{stamp}.json", "api-latest.json"):
        with open(os.path.join(RESULTS, name), "w") as fh:
            fh.write(text)
    print(f"\nwrote bench/results/api-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
