"""Everything that changes a ConversionTask (HackSoftware style: views and admin call these, nothing else).

Every status change happens here inside ``transaction.atomic`` on a locked row, and the queue is told
only with ``transaction.on_commit`` (or, when the queue is a table of the same database, in the same
transaction), so a worker never sees a task its creator rolled back.

A task either *leads* (it owns ``run_token`` and a queued run does the work) or *follows* a leader
converting the same source (``shared_with``): one pull, one push, and the leader's outcome is copied
to its followers in the same transaction that records it.

Every way a task starts (webhook, API, ``accelctl task``, the admin's actions and form, a retry, a queued
run) converts only images of a host in ``provider.source``: the service pulls from that host and
pushes to it with its own credentials, so nobody may point it at another one (:func:`allowed_source`).

With ``converter.routes`` a push makes one task per matching route (``task.route``, ``task.target``), each
with its own dedup, retry and status; a push no route matches, or a push of some route's output, makes none
and is counted as ignored (:func:`conversions.routing.routes_for`).
"""
from __future__ import annotations

import logging
import uuid
from typing import Callable, Iterable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from acceleration_sdk import reference, routes
from acceleration_sdk.config import Config
from acceleration_sdk.engine import skip_reason
from acceleration_sdk.errors import AccelError, ReferenceError_

from . import counters, routing
from .conf import get_config
from .errors import IllegalParameter, InvalidState, SourceNotAllowed
from .models import ConversionTask, Status, Trigger
from .progress import ProgressReporter
from .webhook import MAX_RESOURCES

log = logging.getLogger("acceld.services")
SOURCE_COLUMN = ConversionTask._meta.get_field("source").max_length
DIGEST_COLUMN = ConversionTask._meta.get_field("digest").max_length


def encodable(text: str) -> str:
    """Text from outside (a registry's message in an error) as UTF-8 can store and log it."""
    return text.encode("utf-8", "replace").decode("utf-8")


def allowed_source(cfg: Config, source: str | reference.Reference) -> reference.Reference:
    """The parsed ``source`` if acceld may convert it; raises ``ReferenceError_`` or :class:`SourceNotAllowed`."""
    ref = reference.parse(source) if isinstance(source, str) else source
    if cfg.provider.source_for(ref.host) is None:
        raise SourceNotAllowed(f"{ref.host} is not a configured registry (provider.source): acceld converts "
                               f"only images of the registries it is configured for")
    if len(str(ref)) > SOURCE_COLUMN:
        raise IllegalParameter(f"image reference longer than {SOURCE_COLUMN} characters")
    return ref


def _running_leader(source: str, target: str, exclude=None) -> ConversionTask | None:
    qs = ConversionTask.objects.select_for_update().filter(source=source, target=target, status=Status.PROCESSING,
                                                            shared_with__isnull=True)
    if exclude is not None:
        qs = qs.exclude(pk=exclude)
    return qs.first()


def _enqueue_on_commit(task: ConversionTask) -> None:
    from . import tasks  # the queue module imports django_q, which needs the app registry

    task_id, token = task.pk, task.run_token
    if tasks.queued_in_this_database():  # the message commits or rolls back with the task
        tasks.enqueue_run(task_id, token)
        return
    transaction.on_commit(lambda: tasks.enqueue_run(task_id, token), robust=True)


# Tries to lead or follow: each failed one saw a conversion of the source finish in between; three in a
# row would take three conversions finishing within milliseconds, or another constraint refusing the task.
LEAD_ATTEMPTS = 3


def _lead_or_follow(task: ConversionTask) -> None:
    """Save ``task`` as PROCESSING: lead a new conversion of its source, else follow the one already running.

    Call inside ``transaction.atomic``. The partial unique index (one running leader per source) decides on
    every database: the task is saved as a leader first, and only when the index refuses it is the running
    leader looked up and followed. A lookup before every save cost a webhook more CPU than the rest of its
    database work together (bench/api.py); following is the rare case.
    """
    for attempt in range(LEAD_ATTEMPTS):
        task.status = Status.PROCESSING
        task.shared_with = None
        task.run_token = uuid.uuid4()
        task.queued = timezone.now()
        task.heartbeat = None
        try:
            with transaction.atomic():
                task.save()
        except IntegrityError:
            leader = _running_leader(task.source, task.target, exclude=task.pk)
            if leader is not None:
                break
            if attempt == LEAD_ATTEMPTS - 1:
                raise
            # The running leader finished between the index's refusal and the lookup (another worker or
            # host committed it): nothing to follow now, so lead after all.
        else:
            _enqueue_on_commit(task)
            return
    task.shared_with = leader
    task.run_token = None
    task.queued = None
    task.save()


def conversion_create(*, source: str, trigger: str = Trigger.API, digest: str = "", event_id: str = "",
                      cfg: Config | None = None, route: str = "", force: bool = False) -> ConversionTask:
    """Record a conversion of ``source`` and queue it (or share a running one, or finish it at once).

    With ``converter.routes``: through the route named ``route``, or else the first matching one
    (:func:`conversions_create` makes one task per matching route). A redelivered webhook (same
    ``event_id``, source and route) returns the task of the first delivery. Raises ``ReferenceError_``
    for a reference (or ``digest``) that does not parse, :class:`SourceNotAllowed` for an image of a
    host that is not configured, :class:`IllegalParameter` when no route takes it.
    """
    cfg = cfg or get_config()
    ref = allowed_source(cfg, source)
    _check_digest(digest)
    chosen = routing.routes_for(cfg, ref, route, force=force)
    if not chosen:
        why = routes.output_reason(cfg.converter.routes, ref) or "no route's match selects it"
        raise IllegalParameter(f"not converting {ref}: {why}")
    return _create_atomic(cfg, ref, chosen[0], trigger=trigger, digest=digest, event_id=event_id)


def _create_atomic(cfg: Config, ref: reference.Reference, route: routes.Route | None, *, trigger: str,
                   digest: str, event_id: str) -> ConversionTask:
    name = route.name if route is not None else ""
    try:
        with transaction.atomic():
            return _create(cfg, ref, route, trigger=trigger, digest=digest, event_id=event_id)
    except IntegrityError:
        # Two deliveries of one event at the same instant (possible off SQLite): the first one's task wins.
        existing = (ConversionTask.objects.filter(event_id=event_id, source=str(ref), route=name).first()
                    if event_id else None)
        if existing is None:
            raise
        return existing


def _create(cfg: Config, ref: reference.Reference, route: routes.Route | None, *, trigger: str, digest: str,
            event_id: str) -> ConversionTask:
    """conversion_create's body, inside its transaction."""
    key = str(ref)
    name = route.name if route is not None else ""
    if event_id:
        existing = ConversionTask.objects.filter(event_id=event_id, source=key, route=name).first()
        if existing is not None:
            log.info("redelivered event %s for %s: task %s", event_id, key, existing.pk)
            return existing
    task = ConversionTask(source=key, trigger=trigger, digest=digest, event_id=event_id, route=name,
                          driver=cfg.converter.driver.type)
    if route is not None:
        task.driver = (route.driver or cfg.converter.driver).type
        try:
            task.target = str(route.render(ref))
        except ReferenceError_ as exc:  # e.g. {rest} of a one-component repository: visible, not a 400
            task.status, task.finished, task.reason = Status.FAILED, timezone.now(), str(exc)
            task.progress = {"phase": "failed", "message": str(exc)}
            task.save()
            return task
        _lead_or_follow(task)
        return task
    why = skip_reason(cfg, ref)  # pushing the converted tag fires the webhook again: the loop
    if why:
        now = timezone.now()
        task.status, task.skipped, task.finished, task.target = Status.COMPLETED, True, now, key
        task.progress = {"phase": "done", "message": why, "percent": 100}
        task.save()
        counters.count_skipped()
        return task
    task.target = str(reference.target_for(ref, cfg.converter.tag_suffix))
    _lead_or_follow(task)
    return task


def _check_digest(digest: str) -> None:
    if digest and not reference.is_digest(digest):
        raise ReferenceError_(f"invalid digest {digest[:80]!r}: sha256:<64 hex> or sha512:<128 hex>",
                              reference=digest[:DIGEST_COLUMN])


def conversions_create(*, sources: Iterable[tuple[str, str]], trigger: str, event_id: str = "",
                       cfg: Config | None = None, route: str = "", strict: bool = False) -> list[ConversionTask]:
    """A webhook's resources ``(resource_url, digest)``: one task per distinct source (and per matching
    route, or only through ``route``), in the order given. A source no route takes makes no task and is
    counted as ignored; with ``strict`` (someone asked for this image by hand) it is refused instead.

    Every source is checked before any task is made (a bad one refuses the whole event). Each task is
    then written in a transaction of its own: a long event must not hold the database's write lock
    (on SQLite: the whole database) while other webhooks and the workers wait. A redelivery of an event
    that broke off half way finds the tasks already made (``event_id``) and makes the rest.
    """
    cfg = cfg or get_config()
    sources = list(sources)
    if len(sources) > MAX_RESOURCES:
        raise IllegalParameter(f"{len(sources)} images in one event; at most {MAX_RESOURCES} are accepted")
    distinct: dict[str, tuple[reference.Reference, str]] = {}
    for url, digest in sources:
        _check_digest(digest)
        ref = allowed_source(cfg, url)
        distinct.setdefault(str(ref), (ref, digest))
    plans = [(ref, digest, routing.distinct_targets(ref, routing.routes_for(cfg, ref, route)))
             for ref, digest in distinct.values()]
    ignored = [ref for ref, _, chosen in plans if not chosen]
    if ignored and strict:
        why = routes.output_reason(cfg.converter.routes, ignored[0]) or "no route's match selects it"
        raise IllegalParameter(f"not converting {ignored[0]}: {why}")
    if ignored:  # a redelivery of the event (same event_id) counts none again
        counters.count_ignored([str(ref) for ref in ignored], event_id=event_id)
    return [_create_atomic(cfg, ref, r, trigger=trigger, digest=digest, event_id=event_id)
            for ref, digest, chosen in plans for r in chosen]


def conversion_retry(*, task_id, cfg: Config | None = None) -> ConversionTask:
    """Queue a FAILED task again, same source; raises :class:`InvalidState` for any other status, and
    :class:`SourceNotAllowed` when its host is no longer configured."""
    cfg = cfg or get_config()
    with transaction.atomic():
        task = ConversionTask.objects.select_for_update().get(pk=task_id)
        if task.status != Status.FAILED:
            raise InvalidState(f"task {task.pk} is {task.status}: only FAILED tasks can be retried")
        allowed_source(cfg, task.source)
        task.reason, task.finished, task.started = "", None, None
        task.source_size = task.target_size = task.attempts = 0
        task.progress, task.durations, task.target_digest = {}, {}, ""
        _lead_or_follow(task)
        return task


# ---------------------------------------------------------------- running


def _claim(task_id, token) -> ConversionTask | None:
    """Mark the start of a run; None when this run is not (or no longer) the one to do the work."""
    with transaction.atomic():
        task = ConversionTask.objects.select_for_update().filter(pk=task_id).first()
        if task is None or task.status != Status.PROCESSING or task.shared_with_id or task.run_token != token:
            return None
        now = timezone.now()
        task.attempts += 1
        task.started = task.heartbeat = now
        task.progress = {"phase": "queued", "message": f"attempt {task.attempts}", "percent": 0}
        task.save(update_fields=["attempts", "started", "heartbeat", "progress"])
        return task


def _finish(task_id, token, **outcome) -> ConversionTask | None:
    """Record the outcome on the task and on every task sharing its conversion, in one transaction."""
    with transaction.atomic():
        task = ConversionTask.objects.select_for_update().filter(pk=task_id, run_token=token).first()
        if task is None or task.status != Status.PROCESSING:
            log.warning("task %s was taken over or removed while converting; dropping this run's outcome", task_id)
            return None
        outcome["finished"] = timezone.now()
        for field, value in outcome.items():
            setattr(task, field, value)
        task.heartbeat = None
        task.save()
        shared = {k: v for k, v in outcome.items() if k not in ("durations",)}
        shared["progress"] = task.progress
        n = ConversionTask.objects.filter(shared_with=task, status=Status.PROCESSING).update(**shared)
        if n:
            log.info("task %s: %s for %d task(s) sharing it", task.pk, task.status, n)
        counters.count_finished(task, followers=n)  # /metrics' totals, in the same transaction
        return task


def _converter() -> Callable:
    return import_string(settings.ACCELD_CONVERTER)


def _route_of_run(cfg: Config, task: ConversionTask) -> tuple[dict, str]:
    """The converter's ``target``/``driver_config`` for a run of ``task`` under today's config, or why it may
    not run: its route left the config, now writes elsewhere (its target host may have left provider.source),
    or the task predates converter.routes (it would write ``<tag><suffix>`` beside its source)."""
    if not task.route:
        if cfg.converter.routes:
            return {}, ("made before converter.routes was configured: use \"Convert again\" to convert it "
                        "through the routes")
        return {}, ""
    route = routes.find(cfg.converter.routes, task.route)
    if route is None:
        return {}, f"route {task.route!r} is no longer in converter.routes"
    try:
        target = route.render(reference.parse(task.source))
    except ReferenceError_ as exc:
        return {}, f"route {task.route!r}: {exc}"
    if str(target) != task.target:
        return {}, (f"route {task.route!r} now writes {target}, not {task.target} (the config changed): use "
                    "\"Convert again\"")
    if cfg.provider.source_for(target.host) is None:
        return {}, f"{target.host} is not a configured registry (provider.source)"
    return {"target": task.target, "driver_config": route.driver or cfg.converter.driver}, ""


def conversion_run(*, task_id, token, cfg: Config | None = None) -> ConversionTask | None:
    """Do one queued run: convert, then record COMPLETED or FAILED (with the SDK's one-line reason).

    Idempotent: a run whose token is stale (the task was re-queued, retried or finished) does nothing.
    """
    cfg = cfg or get_config()
    task = _claim(task_id, token)
    if task is None:
        log.info("task %s: run %s is not current; nothing to do", task_id, token)
        return None
    try:  # queued before the config changed: the host may have left provider.source since
        allowed_source(cfg, task.source)
    except (AccelError, SourceNotAllowed, IllegalParameter) as exc:
        log.info("task %s: not converting %r: %s", task.pk, task.source, exc)
        return _finish(task.pk, token, status=Status.FAILED, reason=str(exc),
                       progress={"phase": "failed", "message": str(exc)})
    extra, reason = _route_of_run(cfg, task)
    if reason:  # the config changed since the task was made: convert nothing, connect nowhere
        log.info("task %s: not converting %r: %s", task.pk, task.source, reason)
        return _finish(task.pk, token, status=Status.FAILED, reason=reason,
                       progress={"phase": "failed", "message": reason})
    log.info("task %s: converting %s (attempt %d)", task.pk, task.source, task.attempts)
    reporter = ProgressReporter(task.pk, token)
    reporter.start()
    try:
        result = _converter()(cfg, task.source, progress=reporter.on_event, **extra)
    except AccelError as exc:
        reporter.stop()
        reason = encodable(str(exc) or exc.code)  # a registry's words: a lone surrogate must not crash the worker
        log.info("task %s failed: %s", task.pk, reason)
        return _finish(task.pk, token, status=Status.FAILED, reason=reason,
                       progress=dict(reporter.snapshot(), phase="failed"))
    except Exception as exc:  # a bug must end as a FAILED task with a safe reason; the traceback goes to the log
        reporter.stop()
        log.exception("task %s: unexpected error converting %s", task.pk, task.source)
        return _finish(task.pk, token, status=Status.FAILED, reason=f"internal error ({type(exc).__name__})",
                       progress=dict(reporter.snapshot(), phase="failed"))
    reporter.stop()
    progress = dict(reporter.snapshot(), phase="done", percent=100)
    if result.skipped:
        progress["message"] = getattr(result, "reason", "") or "already converted"
    return _finish(task.pk, token, status=Status.COMPLETED, reason="", skipped=bool(result.skipped),
                   target=result.target or task.target, target_digest=result.digest or "",
                   source_size=int(result.source_size), target_size=int(result.target_size),
                   driver=result.driver or task.driver, driver_version=result.driver_version or "",
                   durations={k: round(float(v), 3) for k, v in (result.durations or {}).items()},
                   progress=progress)


_ANY = object()


def _unchanged(task: ConversionTask | None, token, heartbeat) -> bool:
    """The caller saw this leader with ``token`` and ``heartbeat``; is it still so (nobody touched it)?"""
    if task is None or task.status != Status.PROCESSING or task.shared_with_id:
        return False
    return (token is _ANY or task.run_token == token) and (heartbeat is _ANY or task.heartbeat == heartbeat)


def conversion_fail(*, task_id, reason: str, token=_ANY, heartbeat=_ANY) -> ConversionTask | None:
    """Give up on a PROCESSING leader (the reaper's last resort); its followers fail with it."""
    with transaction.atomic():
        task = ConversionTask.objects.select_for_update().filter(pk=task_id).first()
        if not _unchanged(task, token, heartbeat):
            return None
        token = task.run_token
    return _finish(task_id, token, status=Status.FAILED, reason=reason)


def conversion_requeue(*, task_id, token=_ANY, heartbeat=_ANY) -> ConversionTask | None:
    """Hand a PROCESSING leader to the queue again under a new token (its old run is presumed dead).

    With ``token``/``heartbeat`` it does so only if the task still has them: a worker that wrote a
    heartbeat since the caller looked is alive after all.
    """
    with transaction.atomic():
        task = ConversionTask.objects.select_for_update().filter(pk=task_id).first()
        if not _unchanged(task, token, heartbeat):
            return None
        task.run_token = uuid.uuid4()
        task.queued, task.heartbeat = timezone.now(), None
        task.progress = dict(task.progress or {}, phase="queued", message="re-queued after an interrupted run")
        task.save(update_fields=["run_token", "queued", "heartbeat", "progress"])
        _enqueue_on_commit(task)
        return task
