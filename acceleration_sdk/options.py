"""A driver's option schema: one declaration feeds config validation, ``accelctl drivers`` and the errors.

A driver declares its ``converter.driver.config`` keys as a class attribute::

    options_schema = OptionSchema(
        Option("compression", str, "estargz", choices=("estargz", "zstdchunked"), help="output format"),
        Option("chunk_size", int, 4 << 20, range=(4096, 1 << 30), help="bytes per chunk of big files"),
        Option("compression_level", int, lambda o: 9 if o["compression"] == "estargz" else 3,
               range=lambda o: (1, 9) if o["compression"] == "estargz" else (1, 22), help="..."),
    )

``default`` and ``range`` may be callables of the options validated so far (declaration order), for an
option whose bounds depend on another; ``check`` is a hook that sees the whole validated mapping last.
``validate`` returns a new dict with every option present (defaults filled) or raises :class:`DriverError`
whose message starts with the full key path (``converter.driver.config.chunk_size: expected ...``);
``load_config`` turns that into a ``ConfigError`` with the same path.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

from .errors import DriverError

DEFAULT_PATH = "converter.driver.config"

# The value types an option may have; strings are accepted for each, as the Go service's YAML allowed.
TYPES = (bool, int, str, list)


def option_error(path: str, reason: str) -> DriverError:
    """A DriverError naming the key: ``.path`` and ``.reason`` let config loading re-raise it as ConfigError."""
    return DriverError(f"{path}: {reason}", path=path, reason=reason)


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """One key of ``converter.driver.config``.

    ``type`` is ``bool``, ``int``, ``str`` or ``list`` (a list of strings; a string is split at commas and
    newlines, or at newlines only with ``lines=True``: paths may hold commas). ``choices`` limits a ``str``;
    ``range`` is an inclusive ``(low, high)`` for an ``int``.
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    choices: tuple = ()
    range: tuple[int, int] | Callable[[Mapping[str, Any]], tuple[int, int]] | None = None
    lines: bool = False

    def __post_init__(self):
        if self.type not in TYPES:
            raise TypeError(f"option {self.name}: type must be one of bool, int, str, list")

    def default_for(self, values: Mapping[str, Any]) -> Any:
        return self.default(values) if callable(self.default) else self.default

    def bounds_for(self, values: Mapping[str, Any]) -> tuple[int, int] | None:
        return self.range(values) if callable(self.range) else self.range

    def parse(self, value: Any, values: Mapping[str, Any], path: str) -> Any:
        """``value`` as this option's type, checked against choices/range; DriverError naming ``path``."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise option_error(path, f"expected true or false, got {value!r}")
        if self.type is int:
            try:
                if isinstance(value, bool) or isinstance(value, float):
                    raise ValueError(value)
                number = int(value, 0) if isinstance(value, str) else int(value)  # "0x100000" as Go reads it
            except (TypeError, ValueError):
                raise option_error(path, f"expected a number, got {value!r}") from None
            bounds = self.bounds_for(values)
            if bounds and not bounds[0] <= number <= bounds[1]:
                raise option_error(path, f"expected {bounds[0]}..{bounds[1]}, got {value!r}")
            return number
        if self.type is list:
            if isinstance(value, str):
                value = (value if self.lines else value.replace(",", "\n")).splitlines()
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise option_error(path, f"expected a list of strings, got {value!r}")
            return tuple(v.strip() for v in value if v.strip())
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise option_error(path, f"expected a string, got {type(value).__name__}")
        text = str(value)
        if self.choices and text not in self.choices:
            raise option_error(path, f"expected one of {', '.join(self.choices)}, got {text!r}")
        return text

    def describe(self) -> str:
        """One line for help and docs: ``name (type, default D, one of A|B): help``."""
        facts = [self.type.__name__ if self.type is not list else "list of strings"]
        if callable(self.default):
            facts.append("default: see help")
        elif self.default not in (None, (), ""):
            facts.append(f"default {_show(self.default)}")
        if self.choices:
            facts.append("one of " + "|".join(self.choices))
        if self.range and not callable(self.range):
            facts.append(f"{self.range[0]}..{self.range[1]}")
        return f"{self.name} ({', '.join(facts)}): {self.help}" if self.help else f"{self.name} ({', '.join(facts)})"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class OptionSchema:
    """The options of one driver, in declaration order, plus an optional whole-mapping ``check`` hook."""

    def __init__(self, *options: Option,
                 check: Callable[[dict[str, Any], str], dict[str, Any] | None] | None = None):
        names = [o.name for o in options]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate option names in {names}")
        self.options = {o.name: o for o in options}
        self.check = check

    def __iter__(self) -> Iterator[Option]:
        return iter(self.options.values())

    def __contains__(self, name: object) -> bool:
        return name in self.options

    def validate(self, mapping: Mapping[str, Any] | None, path: str = DEFAULT_PATH,
                 driver: str = "") -> dict[str, Any]:
        """Every option typed and checked, defaults filled; DriverError naming ``path.<key>`` otherwise."""
        mapping = dict(mapping or {})
        for key in mapping:
            if key not in self.options:
                owner = f" for {driver}" if driver else ""
                raise option_error(f"{path}.{key}", f"unknown option{owner} (allowed: {', '.join(self.options)})")
        values: dict[str, Any] = {}
        for option in self:
            raw = mapping.get(option.name)
            if raw is None:
                default = option.default_for(values)
                values[option.name] = tuple(default) if option.type is list else default
            else:
                values[option.name] = option.parse(raw, values, f"{path}.{option.name}")
        if self.check is not None:
            values = self.check(values, path) or values
        return values

    def describe(self) -> list[str]:
        return [option.describe() for option in self]
