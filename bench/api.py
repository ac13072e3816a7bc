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

This file is the entry point and the report; the service is in bench/api_service.py, the load generators in
bench/api_load.py and the task table (filled through Django in this process) in bench/api_tasks.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.api_load import dashboard_latency, get_latency, post_load  # noqa: E402
from bench.api_service import PATH, Service  # noqa: E402
from bench.api_tasks import django_setup, fill_tasks, task_counts, tasks_in_window, touch_one_task  # noqa: E402
from tests.support.registry import RegistryServer  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results")


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
