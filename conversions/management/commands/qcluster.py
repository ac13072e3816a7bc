"""``manage.py qcluster``: django-q2's cluster, plus acceld's reaper in the cluster's main process.

The stock command starts the cluster and leaves the main process idle; here that process runs
:func:`conversions.recovery.recover_interrupted` every ``ACCELD_REAPER_INTERVAL`` seconds, so a
conversion whose worker (or whole previous cluster) died is picked up again. The reaper lives in the
main process, not in a thread of the sentinel, because the sentinel forks workers and SQLite
connections must not cross a fork.

Stopping: SIGTERM/SIGINT ask the sentinel to stop (workers finish their task first). When the whole
process group gets SIGTERM (systemd's control-group kill, ``kill -- -PGID``) the sentinel dies at once,
possibly holding the lock of the stop event; the stock handler then blocks forever in ``stop_event.set()``.
Here the stop runs in a thread and the command returns as soon as the sentinel is gone.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from django import db
from django.conf import settings
from django_q.management.commands.qcluster import Command as StockCommand

log = logging.getLogger("acceld.qcluster")


class Command(StockCommand):
    help = "Starts the django-q2 cluster that runs conversions, and re-queues interrupted ones."

    def handle(self, *args, **options):
        from django_q.cluster import Cluster

        from conversions.recovery import recover_interrupted

        settings.SECRET_KEY  # noqa: B018 - signing needs it; fail here, not in a worker
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        db.connections.close_all()  # nothing open may be inherited by the forked sentinel
        cluster = Cluster()
        cluster.start()
        if options.get("run_once"):
            cluster.stop()
            return
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
        signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
        interval = settings.ACCELD_REAPER_INTERVAL
        next_sweep = 0.0
        while cluster.sentinel.is_alive() and not stopping.is_set():
            if time.monotonic() >= next_sweep:
                try:
                    counts = recover_interrupted()
                    if any(counts.values()):
                        log.info("reaper: %s", counts)
                except Exception:  # a busy or missing database now must not stop the cluster
                    log.exception("reaper sweep failed")
                finally:
                    db.close_old_connections()
                next_sweep = time.monotonic() + interval
            time.sleep(0.2)
        db.connections.close_all()
        if cluster.sentinel.is_alive():
            stopper = threading.Thread(target=cluster.stop, name="qcluster-stop", daemon=True)
            stopper.start()
            while stopper.is_alive() and cluster.sentinel.is_alive():
                stopper.join(0.2)
