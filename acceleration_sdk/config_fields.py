"""Readers for the fields of the acceld YAML: each takes parsed YAML and the key's path, returns a typed value,
and raises :class:`ConfigError` naming that path. They know nothing of acceld's sections, so
:mod:`acceleration_sdk.config` builds every section from them; a default is read off the dataclass field
(:func:`field_default`), so each default is written once, on the dataclass.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from .errors import ConfigError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}

# host or host:port, as it appears in a URL's authority (an IPv6 literal in brackets); no scheme, no path.
_REALM_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def parse_size(value: Any, path: str = "") -> int:
    """``1000MB`` -> 10**9, ``512MiB`` -> 512 * 2**20, ``42`` -> 42."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a size such as 1000MB, got {value!r}", path)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError("a size cannot be negative", path)
        return value
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"expected a size such as 1000MB or 512MiB, got {value!r}", path)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def as_mapping(value: Any, path: str) -> dict:
    """A section: absent (None) reads as empty, anything but a mapping is an error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {type(value).__name__}", path)
    return value


def check_keys(data: dict, allowed: set[str], path: str) -> None:
    """Reject the first key not in ``allowed``, naming its full path and the keys that are allowed."""
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key (allowed: {', '.join(sorted(allowed))})", where)


def read_scalar(data: dict, key: str, kind: type, default: Any, path: str) -> Any:
    """``data[key]`` as ``kind`` (bool, int or str), or ``default`` when absent or null."""
    where = f"{path}.{key}" if path else key
    if key not in data or data[key] is None:
        return default
    value = data[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"expected true or false, got {value!r}", where)
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"expected a number, got {value!r}", where)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"expected a number, got {value!r}", where) from None
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"expected a string, got {type(value).__name__}", where)
        return str(value)
    raise AssertionError(kind)


def field_names(cls) -> set[str]:
    """The keys a section may have: its dataclass's field names."""
    return {f.name for f in dataclasses.fields(cls)}


def field_default(cls, key: str) -> Any:
    """The dataclass field's default: each default is written once, on the dataclass."""
    field = next(f for f in dataclasses.fields(cls) if f.name == key)
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def read_field(data: dict, cls, key: str, kind: type, path: str) -> Any:
    """``data[key]`` as ``kind``, or ``cls``'s default for ``key`` when absent."""
    return read_scalar(data, key, kind, field_default(cls, key), path)


def realm_hosts(value: Any, path: str) -> tuple[str, ...]:
    """``token_realms``: a list of ``auth.example.com`` or ``auth.example.com:8443``, lower-cased."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("expected a list of hosts such as [auth.example.com]", path)
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _REALM_HOST.fullmatch(item.strip()):
            raise ConfigError(f"expected a host or host:port (no scheme, no path), got {item!r}", f"{path}[{i}]")
        out.append(item.strip().lower())
    return tuple(out)


def host_list(value: Any, path: str) -> tuple[str, ...]:
    """``server.allowed_hosts``: Django's patterns (``acceld.example.com``, ``.example.com`` for subdomains)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError("expected a list of host names such as [acceld.example.com]", path)
    return tuple(v.strip().lower() for v in value)
