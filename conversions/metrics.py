"""``/metrics`` in the Prometheus text format (0.0.4) when ``metric.enabled``.

Counted from the task table, so the numbers agree across gunicorn workers and the qcluster.
"""
from __future__ import annotations

from django.http import HttpResponse

from . import selectors
from .conf import get_config
from .errors import not_found

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _family(lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        number = repr(float(value)) if isinstance(value, float) else str(int(value))
        lines.append(f"{name}{labels} {number}")


def render() -> str:
    stats = selectors.conversion_stats()
    lines: list[str] = []
    _family(lines, "acceld_tasks", "gauge", "Conversion tasks by status.",
            [(f'{{status="{status}"}}', n) for status, n in sorted(stats["by_status"].items())])
    _family(lines, "acceld_conversions_running", "gauge", "Conversions a worker is running now.",
            [("", stats["running"])])
    _family(lines, "acceld_conversions_completed_total", "counter", "Conversions that pushed an image.",
            [("", stats["converted"])])
    _family(lines, "acceld_tasks_shared_total", "counter", "Tasks that shared another task's conversion.",
            [("", stats["shared"])])
    _family(lines, "acceld_tasks_skipped_total", "counter", "Tasks for images already converted.",
            [("", stats["skipped"])])
    _family(lines, "acceld_source_bytes_total", "counter", "Bytes of source images converted.",
            [("", stats["source_bytes"])])
    _family(lines, "acceld_target_bytes_total", "counter", "Bytes of converted images pushed.",
            [("", stats["target_bytes"])])
    lines.append("# HELP acceld_conversion_duration_seconds Time taken by completed conversions.")
    lines.append("# TYPE acceld_conversion_duration_seconds summary")
    lines.append(f"acceld_conversion_duration_seconds_sum {stats['duration_seconds_sum']!r}")
    lines.append(f"acceld_conversion_duration_seconds_count {stats['duration_seconds_count']}")
    return "\n".join(lines) + "\n"


def metrics(request):
    if not get_config().metric.enabled:
        return not_found(request)
    return HttpResponse(render(), content_type=CONTENT_TYPE)
