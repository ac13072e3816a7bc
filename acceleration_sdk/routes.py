"""``converter.routes``: which pushes are converted, where each conversion goes, and which pushes are our output.

A route has a ``name``, an optional ``match`` (fnmatch globs over the pushed reference's repository path and
tag, all present keys must match), a ``target`` template and an optional ``driver``. The template's
placeholders are the parts of the pushed reference::

    registry.example.com:5000/library/tools/nginx:v1
    host    = registry.example.com:5000
    path    = library/tools/nginx        project = library
    rest    = tools/nginx                name    = nginx        tag = v1

Loop prevention: every template is also compiled to a pattern, so a push of any route's output is recognised
(:func:`output_reason`) and never converted. A route whose target repository is not the pushed repository
itself (another project, another name, another host) owns that whole repository: any push into it is output.

Validation happens once, when the config is loaded (:func:`load_routes`), and names the key path.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Any, Callable, Iterable

from . import reference
from .errors import ConfigError, ReferenceError_

PLACEHOLDERS = ("host", "path", "project", "rest", "name", "tag")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fits ConversionTask.route, a label and a URL
_FIELD = re.compile(r"\{([^{}]*)\}")
# What each placeholder can stand for in a pushed reference, for recognising output.
_PATTERNS = {"host": r"[^/]+", "path": r"[^:@]+", "project": r"[^/:@]+", "rest": r"[^:@]+", "name": r"[^/:@]+",
             "tag": r"[A-Za-z0-9_][A-Za-z0-9._-]*"}
# A reference with every part distinct, to check a template at start-up (renders, differs from its source).
_SAMPLE = reference.Reference(host="sample.invalid:5000", repository="proj/sub/name", tag="v1")


@dataclasses.dataclass(frozen=True, slots=True)
class RouteMatch:
    repository: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()
    exclude_tag: tuple[str, ...] = ()

    def matches(self, ref: reference.Reference) -> bool:
        tag = ref.tag or reference.DEFAULT_TAG
        if self.repository and not any(fnmatch.fnmatchcase(ref.repository, g) for g in self.repository):
            return False
        if self.tag and not any(fnmatch.fnmatchcase(tag, g) for g in self.tag):
            return False
        return not any(fnmatch.fnmatchcase(tag, g) for g in self.exclude_tag)


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One route; ``driver`` is a ``DriverConfig`` or None for ``converter.driver``."""

    name: str
    target: str
    match: RouteMatch = RouteMatch()
    driver: Any = None

    def render(self, source: reference.Reference) -> reference.Reference:
        """The target reference for ``source``; ReferenceError_ when the result is not a valid reference
        (e.g. ``{rest}`` of a one-component repository)."""
        values = placeholder_values(source)
        text = _FIELD.sub(lambda m: values[m.group(1)], self.target)
        try:
            return reference.parse(text)
        except ReferenceError_ as exc:
            raise ReferenceError_(f"route {self.name!r} gives no valid target for {source}: {exc}",
                                  reference=str(source)) from None

    def is_output(self, ref: reference.Reference) -> bool:
        """Whether ``ref`` is (or lies in the target repository of) something this route writes."""
        whole, repo = _patterns(self.target)
        tagged = f"{ref.name}:{ref.tag or reference.DEFAULT_TAG}"
        if whole.fullmatch(tagged):
            return True
        return repo is not None and repo.fullmatch(ref.name) is not None


def placeholder_values(ref: reference.Reference) -> dict[str, str]:
    parts = ref.repository.split("/")
    return {"host": ref.host, "path": ref.repository, "project": parts[0], "rest": "/".join(parts[1:]),
            "name": parts[-1], "tag": ref.tag or reference.DEFAULT_TAG}


def _split(template: str) -> tuple[str, str]:
    """``name`` and ``tag`` parts of a template (the tag after the last ``:`` behind the last ``/``)."""
    slash = template.rfind("/")
    colon = template.rfind(":")
    if colon > slash:
        return template[:colon], template[colon + 1:]
    return template, ""


def _compile(template: str) -> re.Pattern:
    out, seen, pos = [], set(), 0
    for m in _FIELD.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        key = m.group(1)
        out.append(f"(?P={key})" if key in seen else f"(?P<{key}>{_PATTERNS[key]})")
        seen.add(key)
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


_compiled: dict[str, tuple[re.Pattern, re.Pattern | None]] = {}


def _patterns(template: str) -> tuple[re.Pattern, re.Pattern | None]:
    """The whole template's pattern, and its repository's when that repository is not the source's own."""
    if template not in _compiled:
        name_t, _ = _split(template)
        same_repo = _FIELD.sub(lambda m: placeholder_values(_SAMPLE)[m.group(1)], name_t) == _SAMPLE.name
        _compiled[template] = (_compile(template), None if same_repo else _compile(name_t))
    return _compiled[template]


def matching(routes: Iterable[Route], ref: reference.Reference) -> list[Route]:
    return [r for r in routes if r.match.matches(ref)]


def output_reason(routes: Iterable[Route], ref: reference.Reference) -> str:
    """Why a push of ``ref`` must not be converted ("" when it may): it is some route's output."""
    for route in routes:
        if route.is_output(ref):
            return f"{ref} is an output of route {route.name!r}"
    return ""


def find(routes: Iterable[Route], name: str) -> Route | None:
    return next((r for r in routes if r.name == name), None)


# ---------------------------------------------------------------- loading


def _globs(value: Any, path: str, kind: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError("expected a non-empty list of globs such as [\"v*\"]", path)
    out = []
    for i, glob in enumerate(items):
        where = f"{path}[{i}]"
        if not isinstance(glob, str) or not glob.strip() or glob != glob.strip():
            raise ConfigError(f"expected a glob such as \"v*\", got {glob!r}", where)
        if any(c.isspace() or not c.isprintable() for c in glob):
            raise ConfigError(f"a glob cannot contain spaces or control characters: {glob!r}", where)
        if glob.count("[") != glob.count("]") or re.search(r"\[[^\]]*\[", glob):
            raise ConfigError(f"unbalanced [ ] in glob {glob!r}", where)
        if kind == "repository" and (glob.startswith("/") or ":" in glob or "@" in glob):
            raise ConfigError(f"a repository glob is the path without host, tag or digest, got {glob!r}", where)
        if kind == "tag" and any(c in glob for c in "/:@"):
            raise ConfigError(f"a tag glob cannot contain / : or @, got {glob!r}", where)
        out.append(glob)
    return tuple(out)


def _target(value: Any, path: str, hosts: Iterable[str]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError('expected a template such as "{host}/{project}-accel/{rest}:{tag}"', path)
    template = value.strip()
    if template.count("{") != template.count("}"):
        raise ConfigError(f"unbalanced {{ }} in {template!r}", path)
    for m in _FIELD.finditer(template):
        if m.group(1) not in PLACEHOLDERS:
            raise ConfigError(f"unknown placeholder {{{m.group(1)}}} (known: {', '.join(PLACEHOLDERS)})", path)
    host_t = template.split("/", 1)[0]
    if "/" not in template or ("{" in host_t and host_t != "{host}"):
        raise ConfigError(f"the target must start with {{host}}/ or a configured host/, got {template!r}", path)
    if host_t != "{host}" and host_t not in set(hosts):
        raise ConfigError(f"host {host_t!r} is not a configured registry (provider.source)", path)
    if not _split(template)[1]:
        raise ConfigError(f"the target needs a tag, e.g. {template}:{{tag}}", path)
    sample = Route(name="sample", target=template)
    try:
        rendered = sample.render(_SAMPLE)
    except ReferenceError_ as exc:
        raise ConfigError(f"does not make a valid reference: {exc}", path) from None
    if rendered == _SAMPLE:
        raise ConfigError("the target is the pushed image itself: it would overwrite the source", path)
    return template


def load_routes(raw: Any, path: str, *, hosts: Iterable[str],
                load_driver: Callable[[Any, str], Any]) -> tuple[Route, ...]:
    """Parse ``converter.routes``; ``load_driver(mapping, path)`` builds and validates a DriverConfig."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("expected a list of routes", path)
    hosts = tuple(hosts)
    routes: list[Route] = []
    targets: dict[str, str] = {}
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"expected a mapping, got {type(item).__name__}", where)
        unknown = sorted(set(item) - {"name", "match", "target", "driver"})
        if unknown:
            raise ConfigError("unknown key (allowed: driver, match, name, target)", f"{where}.{unknown[0]}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"expected a name of letters, digits, . _ - (at most 64), got {name!r}", f"{where}.name")
        if find(routes, name) is not None:
            raise ConfigError(f"route name {name!r} is used twice", f"{where}.name")
        match = item.get("match") or {}
        if not isinstance(match, dict):
            raise ConfigError(f"expected a mapping, got {type(match).__name__}", f"{where}.match")
        unknown = sorted(set(match) - {"repository", "tag", "exclude_tag"})
        if unknown:
            raise ConfigError("unknown key (allowed: exclude_tag, repository, tag)", f"{where}.match.{unknown[0]}")
        route_match = RouteMatch(
            repository=_globs(match.get("repository"), f"{where}.match.repository", "repository"),
            tag=_globs(match.get("tag"), f"{where}.match.tag", "tag"),
            exclude_tag=_globs(match.get("exclude_tag"), f"{where}.match.exclude_tag", "tag"))
        template = _target(item.get("target"), f"{where}.target", hosts)
        same = str(Route(name=name, target=template).render(_SAMPLE))
        if same in targets:
            raise ConfigError(f"writes the same target as route {targets[same]!r}: each route needs its own "
                              f"target (tag or repository)", f"{where}.target")
        targets[same] = name
        driver = load_driver(item["driver"], f"{where}.driver") if item.get("driver") is not None else None
        routes.append(Route(name=name, target=template, match=route_match, driver=driver))
    return tuple(routes)
