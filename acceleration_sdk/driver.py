"""The Driver interface of the seed, ``LayerDriver`` for formats that rewrite layers, and driver lookup.

A driver is built with its ``converter.driver.config`` options, validates them at construction
(``DriverError`` naming the key), and converts one image given a :class:`ContentProvider`.

Lookup by name: the entry-point group ``acceleration_sdk.drivers`` (third-party drivers), then the built-in
table ``drivers.BUILTIN`` (dotted paths, imported lazily so the SDK never imports a driver it does not use).
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, Callable, ContextManager, Mapping, Protocol

from .errors import DriverError
from .oci import Descriptor

ENTRY_POINT_GROUP = "acceleration_sdk.drivers"


@dataclasses.dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of a conversion, for progress bars and the task's progress field."""

    phase: str  # "pull" | "convert" | "push" | "done"
    layer: str  # the layer (or blob) digest the event is about; "" for image-wide events
    done: int  # bytes (or layers) done
    total: int  # bytes (or layers) in all; 0 when unknown
    message: str = ""


class ContentProvider(Protocol):
    """What the engine gives a driver: the pulled source, the content store, and image utilities.

    The engine verifies every source a driver opened before a converted blob is committed: it reads what
    the driver left (only zeros may be left) and checks the digest, so a driver never drains a source itself
    (``acceleration_sdk.provider`` documents the rule).
    """

    source: Any  # reference.Reference
    store: Any  # content.ContentStore

    def open_blob(self, desc: Descriptor) -> ContextManager[Any]: ...  # verified stream of a source blob
    def open_uncompressed(self, desc: Descriptor) -> ContextManager[Any]: ...  # the layer's tar stream
    def read_blob(self, desc: Descriptor) -> bytes: ...  # a small blob (config, manifest), verified
    def blob_writer(self) -> Any: ...  # an ingest for a converted blob: write(), commit() -> digest, .size
    def progress(self, event: ProgressEvent) -> None: ...


class Driver(abc.ABC):
    """The seed's interface: convert the source image, return the converted image's manifest/index."""

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options = dict(options or {})

    @abc.abstractmethod
    def convert(self, content: ContentProvider, source: str) -> Descriptor:
        """Convert ``source``; the returned descriptor's blob (and all it points at) is in ``content.store``."""

    @abc.abstractmethod
    def name(self) -> str:
        """The format name, e.g. ``"estargz"``."""

    @abc.abstractmethod
    def version(self) -> str:
        """The version of the output format; changes when the output bytes would change."""

    def docker2oci(self) -> bool:
        """Whether Docker media types become OCI ones in the output."""
        return bool(self.options.get("docker2oci", True))

    def with_referrer(self) -> bool:
        """Whether the converted manifest's ``subject`` points at the source manifest."""
        return bool(self.options.get("with_referrer", False))


class LayerDriver(Driver):
    """A driver that rewrites layers one by one; the engine walks the image and calls ``convert_layer``.

    The engine runs the walk itself (``acceleration_sdk.convert``); override ``convert`` only to convert
    whole images yourself, and the engine then calls it like a plain :class:`Driver`'s.
    """

    def convert(self, content: ContentProvider, source: str) -> Descriptor:
        raise DriverError(f"driver {self.name()} converts layers: run it through acceleration_sdk.convert, "
                          "which walks the image and calls convert_layer")

    @abc.abstractmethod
    def convert_layer(self, content: ContentProvider, desc: Descriptor) -> "ConvertedLayer | None":
        """Convert one layer into the content store; ``None`` keeps the layer as it is."""

    def cache_key(self) -> str:
        """What makes two outputs of the same layer differ: name, version and output-affecting options."""
        opts = ",".join(f"{k}={self.options[k]}" for k in sorted(self.options))
        return f"{self.name()}/{self.version()}/{opts}"

    def finalize_manifest(self, content: ContentProvider, manifest: dict, config: dict) -> tuple[dict, dict]:
        """A hook for formats that must see the whole image (extra layers); the default changes nothing."""
        return manifest, config


@dataclasses.dataclass(frozen=True, slots=True)
class ConvertedLayer:
    """A converted layer: its descriptor (blob in the content store) and the new diff_id."""

    descriptor: Descriptor
    diff_id: str


# ------------------------------------------------------------------ lookup

def available() -> dict[str, str]:
    """Driver names -> where they come from (dotted path or entry point)."""
    found: dict[str, str] = {}
    try:
        builtin = importlib.import_module("drivers").BUILTIN
        found.update(builtin)
    except (ImportError, AttributeError):
        pass
    from importlib import metadata  # ~30 ms to import: only when a driver is looked up

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def load_driver(name: str, options: Mapping[str, Any] | None = None) -> Driver:
    """Build the driver called ``name`` with ``options``; unknown name -> DriverError listing the known ones."""
    table = available()
    target = table.get(name)
    if target is None:
        raise DriverError(f"unknown driver {name!r} (available: {', '.join(sorted(table)) or 'none'})")
    module_name, _, attr = target.partition(":")
    try:
        factory: Callable[..., Driver] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise DriverError(f"driver {name!r} cannot be loaded from {target}: {exc}") from exc
    return factory(options or {})
