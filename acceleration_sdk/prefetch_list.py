"""``accelctl convert --prefetch-from FILE``: a list of paths recorded from a real run, given to the driver.

    paths = read("/tmp/app.prefetch")          # ("/usr/bin/python3", "/etc/ld.so.cache", ...)
    driver_cfg = apply(cfg.converter.driver, paths)

The file has one absolute path a line, as a tracer records them (nydus's optimizer, fanotify, ``strace -e
trace=openat``); blank lines and ``#`` comments are skipped. The paths become the driver's ``prioritized_files``
option -- the one name both formats read: eStargz and zstd:chunked put those files first in each layer, then
``.prefetch.landmark`` (stargz-snapshotter prefetches everything before it); nydus adds their inodes to the merged
bootstrap's prefetch table after any ``prefetch_patterns`` (nydusd prefetches them at mount). A driver without
the option (SOCI) is told so, not ignored.
"""
from __future__ import annotations

import dataclasses
import types

from .errors import ConfigError

OPTION = "prioritized_files"
FLAG = "--prefetch-from"


def read(path: str) -> tuple[str, ...]:
    """The paths of ``path`` in file order; ConfigError naming the file (and line) when it cannot be used."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the prefetch list {path}: {exc.strerror or exc}", FLAG) from None
    paths = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("/"):
            raise ConfigError(f"{path}:{number}: {line!r} is a relative path; record paths from the image's root "
                              f"(/{line.lstrip('./')})", FLAG)
        paths.append(line)
    if not paths:
        raise ConfigError(f"{path} lists no path (one absolute path a line; # starts a comment)", FLAG)
    return tuple(paths)


def apply(driver, paths: tuple[str, ...]):
    """``driver`` (a :class:`~acceleration_sdk.config.DriverConfig`) with ``prioritized_files`` set to ``paths``,
    checked against the driver's options like the config file."""
    from . import config as config_mod
    from .driver import driver_class

    schema = getattr(driver_class(driver.type), "options_schema", None)
    if schema is None or OPTION not in schema:
        raise ConfigError(f"driver {driver.type} takes no prefetch list (it has no {OPTION} option); "
                          "estargz and nydus do", FLAG)
    config = types.MappingProxyType({**driver.config, OPTION: paths})
    return config_mod.validate_driver(dataclasses.replace(driver, config=config))
