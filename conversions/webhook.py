"""Harbor's webhook payloads, both formats, parsed into one value object.

- Default (Harbor's own JSON): ``{"type": "PUSH_ARTIFACT", "event_data": {"resources": [...]}}``; the
  delivery id is the ``X-Harbor-Event-Id`` header.
- CloudEvents 1.0 (Harbor 2.8+), binary mode: ``ce-specversion``/``ce-type``/``ce-id`` headers and the
  event's ``data`` as the body; structured mode: ``{"specversion": "1.0", "type": ..., "id": ..., "data": {...}}``
  (``Content-Type: application/cloudevents+json``, or any JSON body with ``specversion``).

Only the type, the resources' ``resource_url`` (and ``digest``) and the delivery id matter to us.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from .errors import IllegalParameter

PUSH_TYPES = frozenset({"PUSH_ARTIFACT", "harbor.artifact.pushed"})
INVALID_PAYLOAD = "invalid webhook payload"  # acceld's message
# Harbor sends one resource per pushed artifact. A cap keeps one event (a Harbor bug, a replication
# storm, a leaked secret) from becoming thousands of tasks and from holding the database for seconds.
MAX_RESOURCES = 100
MAX_EVENT_ID = 200  # ConversionTask.event_id's column


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    resource_url: str
    digest: str = ""
    tag: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookEvent:
    type: str
    resources: tuple[Resource, ...]
    event_id: str = ""
    format: str = "harbor"  # "harbor" | "cloudevents"

    @property
    def is_push(self) -> bool:
        return self.type in PUSH_TYPES


def _invalid(detail: str = "") -> IllegalParameter:
    return IllegalParameter(f"{INVALID_PAYLOAD}: {detail}" if detail else INVALID_PAYLOAD)


def _optional_str(data: Mapping, key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid(f"{where}{key} must be a string")
    return value


def _resources(event_data: Any, where: str, required: bool) -> tuple[Resource, ...]:
    if event_data is None:
        if required:
            raise _invalid(f"{where} is missing")
        return ()
    if not isinstance(event_data, dict):
        raise _invalid(f"{where} must be an object")
    raw = event_data.get("resources")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid(f"{where}.resources must be a list")
    if len(raw) > MAX_RESOURCES:
        raise _invalid(f"{where}.resources has {len(raw)} entries; at most {MAX_RESOURCES} are accepted per event")
    out = []
    for i, item in enumerate(raw):
        here = f"{where}.resources[{i}]."
        if not isinstance(item, dict):
            raise _invalid(f"{where}.resources[{i}] must be an object")
        out.append(Resource(resource_url=_optional_str(item, "resource_url", here),
                            digest=_optional_str(item, "digest", here),
                            tag=_optional_str(item, "tag", here)))
    return tuple(out)


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    return value.strip() if isinstance(value, str) else ""


def _event_id(value: str) -> str:
    """The delivery id is stored: it must fit its column and be encodable (no lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid("the event id is not valid text") from None
    if len(value) > MAX_EVENT_ID:
        raise _invalid(f"the event id is longer than {MAX_EVENT_ID} characters")
    return value


def parse(body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
    """Parse a delivery; raise :class:`IllegalParameter` for bad JSON or wrong types."""
    try:
        data = json.loads(body.decode("utf-8")) if body else None
    except RecursionError:  # the C decoder gives up on JSON nested ~1,000 deep: still just a bad payload
        raise _invalid("nested too deeply") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _invalid() from None
    if not isinstance(data, dict):
        raise _invalid("the body must be a JSON object")

    content_type = _header(headers, "Content-Type").lower()
    if _header(headers, "ce-specversion"):  # binary mode: the body is the event's data
        ce_type = _header(headers, "ce-type")
        return WebhookEvent(type=ce_type, event_id=_event_id(_header(headers, "ce-id")), format="cloudevents",
                            resources=_resources(data, "data", required=ce_type in PUSH_TYPES))
    if content_type.startswith("application/cloudevents+json") or "specversion" in data:
        ce_type = _optional_str(data, "type", "")
        return WebhookEvent(type=ce_type, event_id=_event_id(_optional_str(data, "id", "")), format="cloudevents",
                            resources=_resources(data.get("data"), "data", required=ce_type in PUSH_TYPES))

    kind = _optional_str(data, "type", "")
    return WebhookEvent(type=kind, event_id=_event_id(_header(headers, "X-Harbor-Event-Id")), format="harbor",
                        resources=_resources(data.get("event_data"), "event_data", required=kind in PUSH_TYPES))
