"""``/metrics`` in the Prometheus text format (0.0.4) when ``metric.enabled``, through prometheus_client.

Gauges say how things are now (tasks by status, conversions running), read from the task table on each
scrape. Counters say how much has happened and only go up: they are the totals of ``conversions.counters``,
added to in the transaction that finishes a task, so every web worker on every host reports the same
numbers and deleting old tasks lowers none of them. The README's "Metrics" section explains each series.
"""
from __future__ import annotations

from django.http import HttpResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from . import counters, selectors
from .conf import get_config
from .errors import not_found

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class TaskCollector:
    """Reads the database on each scrape; nothing is kept in the process."""

    def collect(self):
        now = selectors.conversion_gauges()
        total = counters.totals()
        tasks = GaugeMetricFamily("acceld_tasks", "Conversion tasks by status now.", labels=["status"])
        for status, n in sorted(now["by_status"].items()):
            tasks.add_metric([status], n)
        yield tasks
        routes = get_config().converter.routes
        if routes:  # every configured route appears, with 0 for the statuses it has no task in
            by_route = selectors.conversion_route_gauges()
            family = GaugeMetricFamily("acceld_route_tasks", "Tasks of each converter.routes entry by status now.",
                                       labels=["route", "status"])
            for route in routes:
                for status in ("PROCESSING", "COMPLETED", "FAILED"):
                    family.add_metric([route.name, status], by_route.get((route.name, status), 0))
            yield family
        yield GaugeMetricFamily("acceld_conversions_running", "Conversions a worker is running now.",
                                value=now["running"])
        for name, help_text, key in (
            ("acceld_conversions_completed", "Conversions that pushed an image.", counters.COMPLETED),
            ("acceld_conversions_failed", "Conversions that ended FAILED.", counters.FAILED),
            ("acceld_tasks_shared", "Tasks finished by sharing another task's conversion.", counters.SHARED),
            ("acceld_tasks_skipped", "Tasks for images already converted.", counters.SKIPPED),
            ("acceld_source_bytes", "Bytes of source images converted.", counters.SOURCE_BYTES),
            ("acceld_target_bytes", "Bytes of converted images pushed.", counters.TARGET_BYTES),
            ("acceld_pushes_ignored", "Pushed images no route converts (converter.routes), their outputs included.",
             counters.IGNORED),
        ):
            yield CounterMetricFamily(name, help_text, value=total[key])  # exposed with the _total suffix
        yield SummaryMetricFamily("acceld_conversion_duration_seconds", "Time taken by completed conversions.",
                                  count_value=total[counters.DURATION_COUNT],
                                  sum_value=total[counters.DURATION_MS] / 1000)


REGISTRY = CollectorRegistry()  # ours alone: no process/platform collectors, which differ per worker
REGISTRY.register(TaskCollector())


def render() -> bytes:
    return generate_latest(REGISTRY)


def metrics(request):
    if not get_config().metric.enabled:
        return not_found(request)
    return HttpResponse(render(), content_type=CONTENT_TYPE)
