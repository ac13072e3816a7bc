"""Run engine conversions in a child process and report each outcome with the process's peak RSS.

    python -m tests.support.convert_child '{"config": {...}, "sources": ["host/repo:tag", ...]}'

prints one JSON line per source: ``source``, ``ok``, ``error`` (the exception class), ``message``,
``digest`` (the target digest, or the failing blob's digest), ``seconds``, ``peak_rss_kib`` (this process
image's peak RSS so far, ``VmHWM``) and ``maxrss_kib`` (``getrusage``'s ``ru_maxrss``, which Linux carries
over ``execve`` from the parent: a big pytest parent shows up in it, so tests assert on ``peak_rss_kib``). Optional ``"patch": {"module.attr": value}`` sets module
attributes first (to shrink a limit so a test can reach it cheaply). The child never writes outside
the work_dir of the config: the tests that use it check that nothing else appeared.
"""
from __future__ import annotations

import importlib
import json
import resource
import sys
import time


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    for dotted, value in spec.get("patch", {}).items():
        module, _, attr = dotted.rpartition(".")
        setattr(importlib.import_module(module), attr, value)

    from acceleration_sdk import config as config_mod
    from acceleration_sdk.engine import convert
    from acceleration_sdk.errors import AccelError
    from acceleration_sdk.registry import RegistryClient

    cfg = config_mod.from_dict(spec["config"])
    client = RegistryClient(retries=1, backoff=0.01)
    for source in spec["sources"]:
        started = time.monotonic()
        out = {"source": source}
        try:
            result = convert(cfg, source, client=client)
            out.update(ok=True, error="", message="", digest=result.digest)
        except AccelError as exc:
            out.update(ok=False, error=type(exc).__name__, message=str(exc), digest=getattr(exc, "digest", ""))
        except Exception as exc:  # a bug: reported, the test fails on it
            out.update(ok=False, error=f"UNEXPECTED {type(exc).__name__}", message=repr(exc), digest="")
        out["seconds"] = time.monotonic() - started
        out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss_kib"] = _vm_hwm()
        print(json.dumps(out), flush=True)
    return 0


def _vm_hwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
