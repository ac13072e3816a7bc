"""accelctl: one-time conversions (``accelctl convert``), checks (``accelctl check``), the service's tasks.

Exit codes: 0 success, 1 conversion failed, 2 bad usage or config. Failures print one line
(``accelctl: error: <reason>``); ``--debug`` adds the traceback and debug logs.
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys
import textwrap
import threading
import time
from typing import TextIO

from . import __version__
from .driver import ProgressEvent
from .errors import AccelError, ConfigError, ReferenceError_

EXAMPLES = """examples:
  accelctl convert --config config.yaml registry.example.com/library/nginx:latest
  accelctl convert --config config.yaml --platform linux/amd64 localhost:5000/app:v1
  accelctl convert localhost:5000/app:v1          # reads ./config.yaml, else ./config.example.yaml
  accelctl convert --prefetch-from app.prefetch localhost:5000/app:v1   # paths read at startup, prefetched first
  accelctl drivers estargz                         # the driver's options, defaults and allowed values
  accelctl check --source localhost:5000/app:v1 localhost:5000/app:v1-esgz   # PASS, or FAIL <layer>: <why>
  accelctl task create --addr 127.0.0.1:2077 --auth 'Bearer s3cret' --sync harbor.example.com/library/nginx:latest
  accelctl task list --addr 127.0.0.1:2077
"""


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


class ProgressPrinter:
    """Per-layer progress: a redrawn status line on a TTY, plain lines (start/finish only) otherwise."""

    def __init__(self, out: TextIO, tty: bool | None = None, quiet: bool = False):
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.quiet = quiet
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], tuple[int, int]] = {}
        self._last_draw = 0.0

    def __call__(self, ev: ProgressEvent) -> None:
        if self.quiet:
            return
        with self._lock:
            key = (ev.phase, ev.layer)
            first = key not in self._state
            self._state[key] = (ev.done, ev.total)
            short = ev.layer[7:19] if ev.layer.startswith("sha256:") else ev.layer
            finished = ev.total and ev.done >= ev.total and ev.message
            if self.tty:
                now = time.monotonic()
                if finished or now - self._last_draw > 0.1:
                    self._last_draw = now
                    line = self._tty_line()
                    self.out.write("\r\x1b[2K" + line)
                    if finished:
                        size = f" ({_human(ev.total)})" if ev.phase != "done" else ""
                        self.out.write(f"\r\x1b[2K{ev.phase:8} {short:12} {ev.message}{size}\n")
                    self.out.flush()
            elif ev.phase == "done" or (first and ev.message) or finished:
                size = f" ({_human(ev.total)})" if ev.total and ev.phase != "done" else ""
                self.out.write(f"{ev.phase:<8} {short:<12} {ev.message or 'started'}{size}\n")
                self.out.flush()

    def _tty_line(self) -> str:
        # bytes move in "pull" (the layer streams through the converter as it arrives) and "push"
        active = [(k, v) for k, v in self._state.items()
                  if k[0] in ("pull", "push") and v[1] and v[0] < v[1]]
        parts = []
        for (phase, layer), (done, total) in active[:3]:
            pct = int(100 * done / total)
            bar = "#" * (pct // 10) + "-" * (10 - pct // 10)
            label = "pull+convert" if phase == "pull" else phase
            parts.append(f"{label} {layer[7:19]} [{bar}] {pct:3d}%")
        return " | ".join(parts)


def _config_file(explicit: str | None) -> str:
    """``--config``, else what the service reads: ``$ACCELD_CONFIG``, ``./config.yaml``, ``./config.example.yaml``."""
    from . import config as config_mod

    found = explicit or config_mod.find(["."])
    if not found:
        raise ConfigError("no --config given and no config.yaml or config.example.yaml in the working directory")
    return found


def _cmd_convert(args: argparse.Namespace) -> int:
    import dataclasses

    from . import config as config_mod
    from .engine import convert

    cfg = config_mod.load(_config_file(args.config))
    if args.platform:
        cfg = dataclasses.replace(cfg, converter=dataclasses.replace(
            cfg.converter, platforms=config_mod.parse_platforms(args.platform, "--platform")))
    if args.driver:
        # the config's driver options must suit the other driver too: checked like the config file
        driver = config_mod.validate_driver(dataclasses.replace(cfg.converter.driver, type=args.driver))
        cfg = dataclasses.replace(cfg, converter=dataclasses.replace(cfg.converter, driver=driver))
    routed = {}
    if args.route:  # the route's target and driver instead of the tag suffix and converter.driver
        from . import reference, routes

        route = routes.find(cfg.converter.routes, args.route)
        if route is None:
            known = ", ".join(r.name for r in cfg.converter.routes) or "none configured"
            raise ConfigError(f"unknown route {args.route!r} (converter.routes: {known})", "--route")
        routed = {"target": route.render(reference.parse(args.source)),
                  "driver_config": route.driver or cfg.converter.driver}
    if args.prefetch_from:  # after --driver and --route: the list goes to the driver that converts
        from . import prefetch_list

        paths = prefetch_list.read(args.prefetch_from)
        if routed:
            routed["driver_config"] = prefetch_list.apply(routed["driver_config"], paths)
        else:
            cfg = dataclasses.replace(cfg, converter=dataclasses.replace(
                cfg.converter, driver=prefetch_list.apply(cfg.converter.driver, paths)))
    printer = ProgressPrinter(sys.stderr, quiet=args.quiet)
    # What exists now (modules, config: ~100k objects) lives until exit: out of the collector's sight, so the
    # full collections a conversion's many small objects trigger (a ztoc's entries, a TOC) do not walk it
    # again each time -- tens of ms of a short conversion, on the thread that happens to allocate
    gc.freeze()
    try:
        result = convert(cfg, args.source, progress=printer, **routed)
    finally:
        gc.unfreeze()  # a caller of main() in its own process gets its collector back as it was
    if result.skipped:
        print(f"skipped {result.source}: {result.reason}", file=sys.stderr)
        print(result.source)
        return 0
    if not args.quiet:
        took = ", ".join(f"{k} {v:.1f}s" for k, v in result.durations.items())
        print(f"converted {result.source} -> {result.target} ({result.driver} {result.driver_version}); "
              f"{_human(result.source_size)} -> {_human(result.target_size)}; {took}", file=sys.stderr)
    # a target already pinned by digest (soci index_version v1: the source image itself) prints as it is
    pinned = result.target.endswith("@" + result.digest)
    print(f"{result.target}@{result.digest}" if args.digest and not pinned else result.target)
    return 0


def drivers_help(names: list[str] | None = None) -> str:
    """Each driver with its tag suffix and options, from the driver's own schema (one source for help and docs)."""
    from .driver import available, default_tag_suffix, driver_class

    lines = []
    for name, target in available().items():
        if names and name not in names:
            continue
        try:
            factory = driver_class(name)
        except AccelError as exc:  # a broken plugin must not hide the others
            lines.append(f"  {name} ({target}): cannot be loaded: {exc}")
            continue
        doc = ((getattr(factory, "__doc__", "") or "").strip().splitlines() or [""])[0]
        lines.append(f"  {name}: {doc}" if doc else f"  {name}")
        lines.append(f"    default tag suffix {default_tag_suffix(name)}; from {target}")
        schema = getattr(factory, "options_schema", None)
        if schema is None:
            lines.append("    options: not declared (passed to the driver unchecked)")
        else:
            lines.append("    options (converter.driver.config):")
            for line in schema.describe():
                lines.extend(textwrap.wrap(line, 100, initial_indent="      ", subsequent_indent="          "))
    return "\n".join(lines)


def _cmd_drivers(args: argparse.Namespace) -> int:
    from .driver import available

    known = available()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"accelctl: error: unknown driver {unknown[0]!r} (available: {', '.join(known) or 'none'})",
              file=sys.stderr)
        return 2
    print(drivers_help(args.names) or "no drivers installed (entry-point group acceleration_sdk.drivers)")
    return 0


class _Parser(argparse.ArgumentParser):
    """Adds ``lazy_epilog()`` to --help: the driver list loads drivers, so only when help is asked for."""

    lazy_epilog = None

    def format_help(self) -> str:
        text = super().format_help()
        return text + "\n" + self.lazy_epilog() + "\n" if self.lazy_epilog else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accelctl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert container images to lazy-pulling formats (eStargz, zstd:chunked, nydus, SOCI) and manage "
                    "the acceld service's conversion tasks.", epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"accelctl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    conv = sub.add_parser("convert", help="convert one image now and push the result (one-time mode)",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="Pull SOURCE, convert its layers with the configured driver and push\n"
                                      "SOURCE's tag + the rule's tag_suffix (else the driver's default suffix) next\n"
                                      "to it (--route NAME: that converter.routes entry's target and driver).\n"
                                      "Prints the target reference on stdout; progress goes to stderr.")
    conv.lazy_epilog = lambda: "drivers (converter.driver.type) and their options (converter.driver.config):\n" + (
        drivers_help() or "  none installed")
    conv.add_argument("--config", "-c", metavar="FILE",
                      help="acceld YAML config (see config.example.yaml); default: $ACCELD_CONFIG, else "
                           "config.yaml, else config.example.yaml in the working directory, as `make run` does")
    conv.add_argument("--platform", metavar="OS/ARCH[,...]", help="override converter.platforms")
    conv.add_argument("--driver", metavar="NAME", help="override converter.driver.type")
    conv.add_argument("--route", metavar="NAME",
                      help="convert through this converter.routes entry: its target and driver (README \"Rules\")")
    conv.add_argument("--prefetch-from", metavar="FILE",
                      help="paths recorded from a real run, one absolute path a line (# comments): eStargz and "
                           "zstd:chunked put them first (then the prefetch landmark), nydus puts them in the "
                           "bootstrap's prefetch table; sets the driver's prioritized_files")
    conv.add_argument("--digest", action="store_true", help="print TARGET@DIGEST instead of TARGET")
    conv.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    conv.add_argument("source", metavar="SOURCE", help="image reference, e.g. registry.example.com/library/nginx:latest")
    conv.set_defaults(func=_cmd_convert)

    drv = sub.add_parser("drivers", help="list the conversion drivers this installation knows, with their options",
                         description="Each driver registered under the entry-point group acceleration_sdk.drivers, "
                                     "its default tag suffix and its converter.driver.config options.")
    drv.add_argument("names", nargs="*", metavar="NAME", help="only these drivers")
    drv.set_defaults(func=_cmd_drivers)

    from .cli_check import add_parser as add_check_parser

    add_check_parser(sub, _config_file)

    try:
        from .cli_task import add_parser as add_task_parser
    except ImportError:
        pass
    else:
        add_task_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, ReferenceError_) as exc:
        if args.debug:
            raise
        print(f"accelctl: error: {exc}", file=sys.stderr)
        return 2
    except AccelError as exc:
        if args.debug:
            raise
        print(f"accelctl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("accelctl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line (the traceback with --debug)
        if args.debug:
            raise
        print(f"accelctl: error: internal error ({type(exc).__name__}); run with --debug for details",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
