"""One conversion task per image and request; the task row is the whole state of a conversion.

Status changes happen only in ``conversions.services`` inside ``transaction.atomic``.
"""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Status(models.TextChoices):
    # Labels are acceld's words, shown as-is in the admin and its filters.
    PROCESSING = "PROCESSING", "PROCESSING"
    COMPLETED = "COMPLETED", "COMPLETED"
    FAILED = "FAILED", "FAILED"


class Trigger(models.TextChoices):
    WEBHOOK = "webhook", "webhook"
    ADMIN = "admin", "admin"
    API = "api", "API"
    CLI = "cli", "accelctl"


class ConversionTask(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created = models.DateTimeField(default=timezone.now, db_index=True)
    finished = models.DateTimeField(null=True, blank=True)
    # The normalised reference (nginx -> docker.io/library/nginx:latest); Harbor's resource_url is already so.
    source = models.CharField(max_length=512, db_index=True)
    target = models.CharField(max_length=512, blank=True)
    # The converter.routes entry that made this task ("" without routes: converter.driver + rules).
    route = models.CharField(max_length=64, blank=True, db_index=True)
    target_digest = models.CharField(max_length=100, blank=True)
    driver = models.CharField(max_length=64, blank=True)
    driver_version = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PROCESSING, db_index=True)
    reason = models.TextField(blank=True)
    skipped = models.BooleanField(default=False, help_text="Already converted: nothing was pulled or pushed.")
    source_size = models.BigIntegerField(default=0)
    target_size = models.BigIntegerField(default=0)
    # {"phase", "message", "done", "total", "layers": {digest: {"phase", "done", "total"}}, "updated"}
    progress = models.JSONField(default=dict, blank=True)
    durations = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="How many times a worker started this conversion.")
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.WEBHOOK)
    # 135: "sha512:" and 128 hex digits, the longest digest services accept.
    digest = models.CharField(max_length=135, blank=True, help_text="The pushed artifact's digest from the webhook.")
    event_id = models.CharField(max_length=200, blank=True, db_index=True,
                                help_text="X-Harbor-Event-Id or the CloudEvents id: a redelivery has the same one.")
    # Set when another task was already converting this source: that one does the work for both.
    shared_with = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="followers")
    # The queued run that may work on this task; a re-queue writes a new one, so a stale message is a no-op.
    run_token = models.UUIDField(null=True, blank=True, editable=False)
    queued = models.DateTimeField(null=True, blank=True)
    started = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "conversion task"
        # Starting a conversion makes the service pull and push with its robot credentials: more than
        # seeing tasks ("view"), so it has a permission of its own (admin Retry, Convert again, the form).
        permissions = [("convert_image", "Can start conversions (retry, convert again, convert an image)")]
        constraints = [
            # At most one conversion does the work for a source and target at a time; others share it
            # (two routes of one push write two targets: two conversions).
            models.UniqueConstraint(fields=["source", "target"],
                                    condition=Q(status="PROCESSING", shared_with__isnull=True),
                                    name="one_running_conversion_per_target"),
            # A redelivered webhook finds its tasks (one per route) instead of making more.
            models.UniqueConstraint(fields=["event_id", "source", "route"], condition=~Q(event_id=""),
                                    name="one_task_per_event_source_route"),
        ]
        indexes = [models.Index(fields=["status", "heartbeat"], name="task_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.source} ({self.status})"

    @property
    def worker_task(self) -> "ConversionTask":
        """The task whose conversion this one follows (itself when it does its own work)."""
        return self.shared_with if self.shared_with_id else self


class FinishedCount(models.Model):
    """A running total of finished work for ``/metrics`` (names in ``conversions.counters``).

    Added to in the transaction that finishes a task, so each finish counts once, on every host and
    process alike, and deleting old tasks never lowers a total (Prometheus counters only go up).
    """

    name = models.CharField(max_length=64, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} = {self.value}"


class IgnoredPush(models.Model):
    """An image of a webhook event that made no task (``conversions.counters.count_ignored``).

    Remembered by the event's id so that a redelivery of the event is not counted again in
    ``acceld_pushes_ignored_total`` (a task remembers its own event id; an ignored push has no task).
    Rows older than ``counters.IGNORED_MEMORY`` are deleted as new ones are written.
    """

    event_id = models.CharField(max_length=200)
    source = models.CharField(max_length=512)
    seen = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event_id", "source"], name="one_ignored_push_per_event")]

    def __str__(self) -> str:
        return f"{self.source} ({self.event_id})"
