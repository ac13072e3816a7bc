"""The queue's side: what django-q2 is asked to run, and how it is asked.

The services call this module to enqueue; it never imports them back. A queued message names ``run``
below, and ``run`` reaches the service by its dotted name, the way django-q2 itself reaches ``run``:
so the import graph stays a tree (tests/test_import_graph.py).
"""
from __future__ import annotations

import logging
import os
import uuid

from django.utils.module_loading import import_string

log = logging.getLogger("acceld.tasks")

RUN = "conversions.tasks.run"
# What ``run`` calls: (task_id=UUID, token=UUID) -> ConversionTask | None.
RUNNER = "conversions.services.conversion_run"

_broker: tuple = ()  # (pid, broker)


def _queue():
    """django-q2's broker, built once per process (``async_task`` builds a new one for every message)."""
    global _broker
    if not _broker or _broker[0] != os.getpid():
        from django_q.brokers import get_broker

        _broker = (os.getpid(), get_broker())
    return _broker[1]


def queued_in_this_database() -> bool:
    """Whether a queued run is a row of our own database (django-q2's ORM broker, and not its sync mode).

    Then the services write it inside the task's transaction: both commit or neither does, as with
    ``on_commit``, and a webhook takes SQLite's write lock once instead of twice (bench/api.py).
    """
    from django.db import DEFAULT_DB_ALIAS
    from django_q.conf import Conf

    return Conf.ORM == DEFAULT_DB_ALIAS and not Conf.SYNC


def enqueue_run(task_id, token) -> None:
    """Queue one run of a task (called by the services inside the task's transaction, or on its commit)."""
    from django_q.tasks import async_task

    async_task(RUN, str(task_id), str(token), task_name=f"convert-{task_id}-{str(token)[:8]}",
               group="conversions", broker=_queue())


def run(task_id: str, token: str) -> str:
    """The worker's entry point; returns the task's final status for django-q2's result log."""
    task = import_string(RUNNER)(task_id=uuid.UUID(task_id), token=uuid.UUID(token))
    return task.status if task is not None else "SKIPPED (stale run)"
