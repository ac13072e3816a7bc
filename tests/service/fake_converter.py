"""FakeConverter: an in-process stand-in for ``acceleration_sdk.engine.convert`` in the service's unit tests.

The unit tests check the service's bookkeeping (statuses, sharing, redelivery, errors), not conversion;
the end-to-end tests in tests/e2e use the real engine against a real registry. Behaviour is chosen by
the source's tag: ``fail*`` raises a ConversionError, ``boom*`` raises a bare RuntimeError (a bug),
``slow*`` sleeps ``FAKE.delay`` seconds first. Every call is recorded in ``FAKE.calls``.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from acceleration_sdk import reference
from acceleration_sdk.errors import ConversionError


@dataclasses.dataclass(frozen=True)
class FakeProgressEvent:
    phase: str
    layer: str
    done: int
    total: int
    message: str


@dataclasses.dataclass(frozen=True)
class FakeResult:
    source: str
    target: str
    digest: str
    source_size: int
    target_size: int
    skipped: bool
    durations: dict
    driver: str
    driver_version: str
    reason: str = ""


class FakeConverter:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.calls: list[str] = []
        self.routed: list[tuple] = []  # (source, target, driver type) of every call; target None without routes
        self.delay = 0.5
        self.gate: threading.Event | None = None  # when set, conversions wait for it
        self.started = threading.Event()

    def __call__(self, cfg, source, *, progress=None, target=None, driver_config=None):
        with self.lock:
            self.calls.append(source)
            self.routed.append((source, target, driver_config.type if driver_config else ""))
        self.started.set()
        ref = reference.parse(source)
        if self.gate is not None:
            assert self.gate.wait(30), "FakeConverter gate never opened"
        if ref.tag.startswith("slow"):
            time.sleep(self.delay)
        for phase in ("pull", "convert", "push"):
            if progress:
                progress(FakeProgressEvent(phase, "sha256:" + "a" * 64, 50, 100, f"{phase} layer"))
                progress(FakeProgressEvent(phase, "sha256:" + "a" * 64, 100, 100, f"{phase} layer"))
        if ref.tag.startswith("fail"):
            raise ConversionError(f"fake failure converting {source}", reference=source)
        if ref.tag.startswith("boom"):
            raise RuntimeError("secret-token-in-a-bug")
        if target is None:
            target = reference.target_for(ref, cfg.converter.tag_suffix)
        return FakeResult(source=str(ref), target=str(target), digest="sha256:" + "b" * 64, source_size=1000,
                          target_size=1200, skipped=False, durations={"total": 0.01},
                          driver=driver_config.type if driver_config else "estargz",
                          driver_version="fake-1")


FAKE = FakeConverter()


def convert(cfg, source, *, progress=None, **routed):
    return FAKE(cfg, source, progress=progress, **routed)
