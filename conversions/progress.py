"""Per-layer progress and the worker's heartbeat, written to the task by one thread, throttled.

The engine may call ``on_event`` from several threads and very often (every chunk); it only updates
memory. A background thread writes the snapshot at most every ``ACCELD_PROGRESS_INTERVAL`` seconds
when something changed, and the heartbeat at least every ``ACCELD_HEARTBEAT_INTERVAL`` seconds, which
is how the reaper tells a running conversion from one whose worker died.
"""
from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import connections
from django.utils import timezone

log = logging.getLogger("acceld.progress")

# pull, then convert, then push: a layer's share of the bar moves through the three in order.
_PHASES = {"pull": 0, "convert": 1, "push": 2, "done": 3}


def percent(layers: dict) -> int:
    """0..100 over all layers, each counted as pull + convert + push thirds."""
    if not layers:
        return 0
    total = 0.0
    for state in layers.values():
        index = _PHASES.get(state.get("phase", ""), 0)
        size = state.get("total") or 0
        frac = min(1.0, (state.get("done") or 0) / size) if size else 0.0
        total += min(3.0, index + frac) / 3
    return int(100 * total / len(layers))


class ProgressReporter:
    def __init__(self, task_id, token, *, progress_interval: float | None = None,
                 heartbeat_interval: float | None = None):
        self.task_id, self.token = task_id, token
        self.progress_interval = progress_interval if progress_interval is not None else settings.ACCELD_PROGRESS_INTERVAL
        self.heartbeat_interval = (heartbeat_interval if heartbeat_interval is not None
                                   else settings.ACCELD_HEARTBEAT_INTERVAL)
        self._lock = threading.Lock()
        self._state: dict = {"phase": "", "message": "", "layers": {}}
        self._dirty = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0

    # -- called by the engine, any thread
    def on_event(self, event) -> None:
        with self._lock:
            self._state["phase"] = event.phase
            if event.message:
                self._state["message"] = str(event.message)[:500]
            if event.layer:
                self._state["layers"][event.layer] = {"phase": event.phase, "done": int(event.done),
                                                      "total": int(event.total)}
            self._dirty = True

    def snapshot(self) -> dict:
        with self._lock:
            layers = {k: dict(v) for k, v in self._state["layers"].items()}
            return {"phase": self._state["phase"], "message": self._state["message"], "layers": layers,
                    "percent": percent(layers), "updated": timezone.now().isoformat()}

    # -- the writer thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"progress-{self.task_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        last_write = time.monotonic()
        tick = max(0.05, min(self.progress_interval, self.heartbeat_interval) / 2)
        try:
            while not self._stop.wait(tick):
                now = time.monotonic()
                with self._lock:
                    dirty = self._dirty
                if (dirty and now - last_write >= self.progress_interval) or now - last_write >= self.heartbeat_interval:
                    self._write(with_progress=dirty)
                    last_write = now
        finally:
            connections.close_all()  # this thread's own connections

    def _write(self, with_progress: bool) -> None:
        from .models import ConversionTask, Status

        fields = {"heartbeat": timezone.now()}
        if with_progress:
            fields["progress"] = self.snapshot()
            with self._lock:
                self._dirty = False
        try:
            ConversionTask.objects.filter(pk=self.task_id, run_token=self.token,
                                          status=Status.PROCESSING).update(**fields)
            self.writes += 1
        except Exception:  # a busy database must not kill the conversion; the next tick tries again
            log.warning("task %s: could not write progress", self.task_id, exc_info=True)
