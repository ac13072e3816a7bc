"""Which ``converter.routes`` a push goes through (the services make one task per route returned here)."""
from __future__ import annotations

import logging

from acceleration_sdk import reference, routes
from acceleration_sdk.config import Config
from acceleration_sdk.errors import ReferenceError_

from .errors import IllegalParameter

log = logging.getLogger("acceld.services")


def routes_for(cfg: Config, ref: reference.Reference, route: str = "", *,
               force: bool = False) -> list[routes.Route | None]:
    """The routes a push of ``ref`` goes through: ``[None]`` without ``converter.routes`` (acceld's way),
    else the one named ``route`` or every matching one; ``[]`` when none matches or ``ref`` is a route's
    output (the loop). Raises :class:`IllegalParameter` for a ``route`` that is not configured, or that does
    not select ``ref`` — a route's ``match`` is the operator's filter of what reaches its target, so naming
    the route does not skip it; only ``force`` does (the admin's "Convert again" of a task that went through
    that route, which needs the convert permission)."""
    configured = cfg.converter.routes
    if not configured:
        if route:
            raise IllegalParameter(f"route {route!r} given, but converter.routes is not configured")
        return [None]
    chosen = None
    if route:
        chosen = routes.find(configured, route)
        if chosen is None:
            raise IllegalParameter(f"unknown route {route!r} (converter.routes: "
                                   f"{', '.join(r.name for r in configured)})")
    why = routes.output_reason(configured, ref)
    if why:
        if route:  # asked for explicitly: say why nothing happens
            raise IllegalParameter(f"not converting: {why}")
        log.info("ignoring push of %s: %s", ref, why)
        return []
    if chosen is not None and not force and not chosen.match.matches(ref):
        raise IllegalParameter(f"route {route!r} does not select {ref} (its match)")
    return [chosen] if chosen is not None else routes.matching(configured, ref)


def distinct_targets(ref: reference.Reference, chosen: list) -> list:
    """``chosen`` without a route writing the same target as an earlier one for this source (start-up refuses
    routes that always collide; ``{path}`` and ``{name}`` meet on a one-part repository): sharing a task
    would give the later route the earlier one's format."""
    seen: dict[str, str] = {}
    out = []
    for route in chosen:
        try:
            target = str(route.render(ref)) if route is not None else ""
        except ReferenceError_:
            target = ""  # _create records it as a FAILED task with the reason
        if target and target in seen:
            log.warning("route %r writes the same target as route %r for %s (%s): not converted twice",
                        route.name, seen[target], ref, target)
            continue
        seen.setdefault(target, route.name if route is not None else "")
        out.append(route)
    return out
