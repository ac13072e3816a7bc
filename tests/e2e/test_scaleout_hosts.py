"""Scale-out: two "hosts" (each its own gunicorn, qcluster, config file and work_dir) on one PostgreSQL
(``DATABASE_URL``) and one Redis broker (``server.redis``), sharing only those and ``ACCELD_SECRET_KEY``.

- Webhooks sent to either host dedupe across both: a redelivered event is one task, and requests for a
  source already pending share its conversion (PostgreSQL's partial unique index settles each race).
- Both clusters take work from the one queue, and every conversion runs once.
- ``kill -9`` of one host's process groups (web and cluster) loses nothing: the other host's reaper
  re-queues the runs whose heartbeat stopped and the messages the dead cluster had taken off Redis.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import re
import secrets

import pytest
import requests

from tests.service.stack import AUTH, ServiceStack
from tests.support.dbservers import PostgresServer, RedisServer
from tests.support.quickpush import push_small_image
from tests.support.registry import RegistryServer
from tests.support.stackctl import FAST_RECOVERY_ENV, crash, group_gone, reconfigure, tag_pushes, wait_for

pytestmark = pytest.mark.slow

SHARED_SOURCES, EVENT_SOURCES, POSTS_PER_SOURCE = 10, 20, 4


@pytest.fixture
def backends(tmp_path):
    reg = RegistryServer(tmp_path / "registry").start()
    pg = redis = None
    try:
        pg = PostgresServer().start()
        redis = RedisServer().start()
        yield reg, pg, redis
    finally:
        for server in (redis, pg, reg):
            if server is not None:
                server.stop()


def make_host(name: str, tmp_path, reg, pg, redis, secret_key: str) -> ServiceStack:
    host = ServiceStack(tmp_path / name, reg.host, worker=2, timeout=10, extra_env={
        **FAST_RECOVERY_ENV, "DATABASE_URL": pg.url, "ACCELD_SECRET_KEY": secret_key})
    reconfigure(host, lambda cfg: cfg["server"].update(redis=redis.url))
    return host


def _cluster_log(host: ServiceStack) -> str:
    return "".join(p.read_text(errors="replace") for p in host.root.glob("qcluster-*.log"))


def conversions_started(host: ServiceStack) -> list[str]:
    """Task ids this host's qcluster started converting (its log says so once per run)."""
    return re.findall(r"task ([0-9a-f-]{36}): converting", _cluster_log(host))


def conversions_processed(host: ServiceStack) -> list[str]:
    """Task ids whose run this host's qcluster finished (django-q2 logs the task name, convert-<id>-<token>)."""
    return re.findall(r"Processed 'conversions\.tasks\.run' \(convert-([0-9a-f-]{36})-", _cluster_log(host))


def service_logs(hosts: dict[str, ServiceStack], pg: PostgresServer, tail: int = 60_000) -> str:
    """Every host's gunicorn and qcluster log and PostgreSQL's (deadlocks, lock waits): printed when the
    test fails, since the temp directory holding them is gone with a CI job."""
    out = [f"===== host {name} ({host.root})\n{host.logs(tail=tail)}" for name, host in hosts.items()]
    out.append(f"===== postgres\n{pg.log_path.read_text(errors='replace')[-tail:] if pg.log_path.exists() else ''}")
    return "\n".join(out)


def busy_after_some_work(host: ServiceStack) -> bool:
    """The host finished a conversion and has another one running."""
    done = conversions_processed(host)
    return bool(done) and bool(set(conversions_started(host)) - set(done))


def test_two_hosts_share_the_queue_dedupe_and_survive_losing_one(backends, tmp_path):
    reg, pg, redis = backends
    repos = [f"scale/img{i:02d}" for i in range(SHARED_SOURCES + EVENT_SOURCES)]
    with requests.Session() as session:
        for repo in repos:  # 1 MiB of its own random bytes each: distinct conversions of some length
            push_small_image(reg.host, f"{repo}:1", {"data/blob.bin": os.urandom(1 << 20)}, session=session)
    key = secrets.token_urlsafe(40)
    a = make_host("host-a", tmp_path, reg, pg, redis, key)
    b = make_host("host-b", tmp_path, reg, pg, redis, key)
    passed = False
    try:
        a.start(qcluster=False)
        b.start(qcluster=False)
        assert a.root != b.root and a.port != b.port

        # Webhooks to both hosts at once, before any cluster runs (so every one lands while its source is
        # pending): distinct events for the first sources, one event redelivered for the others.
        posts = []
        for i, repo in enumerate(repos):
            for n in range(POSTS_PER_SOURCE):
                event = f"ev-{repo}" if i >= SHARED_SOURCES else f"ev-{repo}-{n}"
                posts.append(((a, b)[n % 2], repo, event))

        def post(item):
            host, repo, event = item
            resp = requests.post(f"{host.url}/api/v1/conversions", timeout=60,
                                 headers={"Authorization": AUTH, "X-Harbor-Event-Id": event},
                                 json={"type": "PUSH_ARTIFACT", "event_data": {"resources": [
                                     {"resource_url": host.source(f"{repo}:1")}]}})
            return resp.status_code

        with concurrent.futures.ThreadPoolExecutor(POSTS_PER_SOURCE * 2) as pool:
            codes = list(pool.map(post, posts))
        assert collections.Counter(codes) == {200: len(posts)}
        tasks = a.tasks()
        assert tasks == b.tasks()  # one database behind both (and nothing runs yet)
        by_source = collections.defaultdict(list)
        for t in tasks:
            by_source[t["source"]].append(t)
        for i, repo in enumerate(repos):
            group = by_source[a.source(f"{repo}:1")]
            if i < SHARED_SOURCES:  # four events: four tasks, one leader
                assert len(group) == POSTS_PER_SOURCE and sum(not t["shared_with"] for t in group) == 1, group
            else:  # one event delivered four times: one task
                assert len(group) == 1 and group[0]["event_id"] == f"ev-{repo}", group
        leaders = [t for t in tasks if not t["shared_with"]]
        assert len(leaders) == len(repos)

        # Both clusters on the one Redis queue; host B dies with conversions in flight.
        a.start_qcluster()
        b.start_qcluster()
        wait_for(lambda: busy_after_some_work(b), 60, "host B to finish one conversion and be in another",
                 interval=0.02, on_timeout=b.logs)
        crash(b.web)
        crash(b.qclusters[-1])
        assert group_gone(b.web) and group_gone(b.qclusters[-1]), "a process of host B survived"
        cut_off = set(conversions_started(b))
        pending = [t for t in a.tasks() if t["status"] == "PROCESSING" and not t["shared_with"]]
        assert pending, "host B died after everything was done: the kill proved nothing"

        done = a.wait_tasks(lambda ts: all(t["status"] != "PROCESSING" for t in ts), timeout=120,
                            what="host A to finish every task, host B's included")
        assert collections.Counter(t["status"] for t in done) == {"COMPLETED": len(tasks)}, a.logs()
        started_on = collections.Counter(conversions_started(a) + conversions_started(b))
        leaders = {t["id"]: t for t in done if not t["shared_with"]}
        assert set(started_on) == set(leaders)  # every conversion ran, and only leaders ran
        assert conversions_started(a) and cut_off  # both hosts took work from the queue
        # Once each, but for the runs host B was cut off in (and had not finished): those ran again on A.
        twice = {tid for tid, n in started_on.items() if n > 1}
        assert all(n <= 2 for n in started_on.values()) and twice <= cut_off, started_on
        assert all(leaders[tid]["attempts"] == started_on[tid] for tid in leaders)
        log = reg.log()
        pushes = {repo: tag_pushes(log, repo, "1-esgz") for repo in repos}
        assert all(n >= 1 for n in pushes.values()), pushes
        assert sum(n - 1 for n in pushes.values()) <= 2, pushes  # only a run cut after its push may repeat it
        # /metrics on host A counts host B's finished conversions too, each once (the totals are in the database).
        metrics = requests.get(f"{a.url}/metrics", timeout=10).text
        assert f"acceld_conversions_completed_total {float(len(leaders))}" in metrics, metrics
        assert f"acceld_tasks_shared_total {float(len(tasks) - len(leaders))}" in metrics, metrics
        assert "acceld_conversions_failed_total 0.0" in metrics
        # No shared work_dir: each host converted in a content store of its own.
        for host in (a, b):
            assert any((host.root / "work" / "content" / "blobs" / "sha256").iterdir()), host.root
        passed = True
    finally:
        b.stop()
        a.stop()
        if not passed:  # pytest shows a failed test's captured output: the whole story of both hosts
            print(service_logs({"A": a, "B": b}, pg))
