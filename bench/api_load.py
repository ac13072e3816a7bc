"""The load of ``make bench-api``: webhook POSTs from threads, sequential GETs of the list and the dashboard.

stdlib ``http.client`` on keep-alive connections, one per thread (cheaper per request than requests.Session,
so less of the shared CPU goes to the client).
"""
from __future__ import annotations

import http.client
import itertools
import json
import threading
import time

from bench.api_service import AUTH, OK, PATH, Service, session_cpu


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
