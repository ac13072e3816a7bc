"""The task as acceld shows it: fields in acceld's order, sizes as numbers, RFC3339 UTC times."""
from __future__ import annotations

import datetime

from rest_framework import serializers

from .models import ConversionTask, Status

# What Go's encoding/json writes for a zero time.Time: acceld's "finished" before a task finishes.
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(value: datetime.datetime | None) -> str:
    """UTC, trailing zeros of the fraction dropped, ``Z`` (Go's time.RFC3339Nano)."""
    if value is None:
        return GO_ZERO_TIME
    value = value.astimezone(datetime.timezone.utc)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


class RFC3339Field(serializers.Field):
    """A time as RFC3339; a missing one as Go's zero time (DRF would write null for None)."""

    def __init__(self, **kwargs):
        super().__init__(read_only=True, **kwargs)

    def get_attribute(self, instance):
        return _Time(super().get_attribute(instance))

    def to_representation(self, value):
        return rfc3339(value.value)


class _Time:
    """Wraps the value so DRF's "None means null" shortcut does not skip to_representation."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class TaskSerializer(serializers.ModelSerializer):
    """acceld's task, field for field."""

    created = RFC3339Field()
    finished = RFC3339Field()

    class Meta:
        model = ConversionTask
        # acceld's fields, then where the conversion goes (converter.routes: which route made it)
        fields = ["id", "created", "finished", "source", "source_size", "target_size", "status", "reason",
                  "target", "route"]


class TaskDetailSerializer(TaskSerializer):
    """``?verbose=true``: acceld's fields plus ours."""

    started = RFC3339Field()
    shared_with = serializers.UUIDField(source="shared_with_id", allow_null=True)
    progress = serializers.SerializerMethodField()

    class Meta(TaskSerializer.Meta):
        fields = TaskSerializer.Meta.fields + [
            "target_digest", "driver", "driver_version", "skipped", "trigger", "digest", "event_id",
            "attempts", "started", "shared_with", "progress", "durations",
        ]

    def get_progress(self, task: ConversionTask) -> dict:
        # A follower shows the progress of the conversion it shares.
        leader = task.worker_task
        return leader.progress if task.status == Status.PROCESSING else task.progress


class ListQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Status.choices, required=False)
    source = serializers.CharField(required=False, max_length=512)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000)
    # 2**31 - 1: far past any task count, and inside every database's OFFSET (2**63 overflowed SQLite: a 500).
    offset = serializers.IntegerField(required=False, min_value=0, max_value=2**31 - 1, default=0)
    paginated = serializers.BooleanField(required=False, default=False)
    verbose = serializers.BooleanField(required=False, default=False)

    def to_internal_value(self, data):
        data = data.copy()
        if "status" in data:
            data["status"] = data["status"].upper()
        return super().to_internal_value(data)
