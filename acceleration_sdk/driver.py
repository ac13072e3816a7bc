"""The Driver interface of the seed, ``LayerDriver`` for formats that rewrite layers, and driver lookup.

A driver is built with its ``converter.driver.config`` options, validates them at construction
(``DriverError`` naming the key), and converts one image given a :class:`ContentProvider`.

Lookup by name goes through the entry-point group ``acceleration_sdk.drivers`` only, for the built-in
drivers (this project's ``pyproject.toml``) as for third-party ones: the SDK never imports a driver by name,
and imports a driver's module only when that driver is asked for. A driver class declares

- ``options_schema``: an :class:`~acceleration_sdk.options.OptionSchema` of its ``converter.driver.config``
  keys (validated when the config is loaded and again when the driver is built);
- ``default_tag_suffix``: the target tag's suffix when ``converter.rules`` sets none (else ``-<name>``);
- ``image_checker(manifest)``: an :class:`ImageChecker` that verifies an image in its format with the
  driver's own reader (``accelctl check``, ``converter.verify``); ``None`` when the image is not its format.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Callable, ClassVar, ContextManager, Iterable, Mapping, Protocol

from .errors import DriverError
from .oci import Descriptor
from .options import DEFAULT_PATH, OptionSchema

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
    def read_manifest(self, desc: Descriptor) -> bytes: ...  # a child manifest of the source index
    def referenced_image(self, ref: str, what: str = "image") -> Any: ...  # another image (referenced.py)
    def wants_platform(self, desc: Descriptor) -> bool: ...  # converter.platforms selects this index child
    def harbor_annotations(self, driver: "Driver") -> dict[str, str]: ...  # for the converted root, or {}
    def cached_conversion(self, cache_key: str, source: Descriptor) -> "tuple[Descriptor, str] | None": ...
    def remember_conversion(self, platform: dict, cache_key: str, source: Descriptor, desc: Descriptor,
                            note: str = "") -> None: ...  # the layer caches, for whole-image drivers
    def blob_writer(self) -> Any: ...  # an ingest for a converted blob: write(), commit() -> digest, .size
    def converted_path(self, desc: Descriptor) -> str: ...  # a converted blob on local disk (finalize_manifest)
    def put_json(self, obj: Any) -> Descriptor: ...  # a config/manifest the driver builds, into the store
    def progress(self, event: ProgressEvent) -> None: ...


class ImageChecker(Protocol):
    """Verifies one image manifest of a driver's format, layer by layer (``acceleration_sdk.check`` drives it).

    The check spools each layer blob to ``path`` (digest verified) and calls :meth:`check_layer` in manifest
    order; it computes the diff_ids itself (sha256 of the blob with its media type's compression taken off).
    """

    #: What the format does not keep, for the comparison with the source layer (``--source``).
    allowances: Any  # acceleration_sdk.testing.Allowances

    def check_layer(self, index: int, desc: Descriptor, path: str) -> Iterable[Any] | None:
        """Check media type and annotations now; return the layer's entries (``LayerEntry`` with ``digest``,
        ``data`` empty), verified as they are read -- or ``None`` for a layer with no source counterpart (a
        nydus bootstrap, a chunk dict blob: verify it in check_layer then). Problems raise ``AccelError`` (``LayerError``) with the reason. ``path`` is removed
        once the entries are read: keep what later layers need (parsed), not the path."""

    # Optional: ``bind(get_manifest, get_blob, *, image, get_referrers, get_layer, spool)`` -- once per manifest
    # before its layers when the checker has it, for formats that keep an index beside the image (SOCI's
    # ztocs): ``get_manifest(digest)`` returns a manifest's bytes from the checked repository,
    # ``get_blob(descriptor)`` a blob's bytes (bounded: 256 MiB), for the checker to fetch now or during
    # check_layer. The keywords are passed only when bind declares them: ``image`` is the image manifest's
    # descriptor, ``get_referrers()`` the descriptors of the manifests that refer to it (referrers API, else
    # the referrers tag; SOCI index v1). Blobs read as files, of any size, come spooled (streamed to
    # the check's work dir, digest and size verified, never held in memory): ``spool(descriptor)`` returns the
    # path of any blob of the checked repository, which the checker removes (nydus ``oci_ref``: the gzip layers
    # the manifest does not list); ``get_layer(index)`` the path of the manifest's layer ``index`` spooled ahead
    # of its turn through the same download and kept until the manifest is checked, for a layer that reads from
    # a later one (nydus ``chunk_dict_ref``: the dict's blobs follow the layers pointing into them); that layer's
    # own turn reuses the file. A failed download raises ``AccelError`` (the asking layer's FAIL line).
    # Optional: ``unpaired_detail(index) -> str`` -- the ``ok`` line's text for a layer ``check_layer`` returned
    # ``None`` for (no source counterpart: a nydus bootstrap, a chunk dict blob).
    # Optional: ``check_manifest(manifest, config)`` -- rules about the whole manifest (nydus: the bootstrap is
    # the last layer), run before the layers; raising ``AccelError`` fails the manifest with one line.


class Driver(abc.ABC):
    """The seed's interface: convert the source image, return the converted image's manifest/index."""

    #: The ``converter.driver.config`` keys; ``None`` passes options through unchecked.
    options_schema: ClassVar[OptionSchema | None] = None
    #: The converted tag's suffix when no ``converter.rules[].tag_suffix`` is set; empty means ``-<name>``.
    default_tag_suffix: ClassVar[str] = ""
    #: ``artifactType``s that mark an index entry as an image of this format beside a plain one (nydus with
    #: ``merge_manifest``): ``check`` verifies such entries, and leaves the plain entries of their platform.
    image_artifact_types: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: Mapping[str, Any] | None = None):
        schema = type(self).options_schema
        if schema is None:
            self.options = dict(options or {})
            return
        try:
            owner = self.name()
        except AttributeError:  # a name() that reads what the subclass sets after this constructor
            owner = type(self).__name__
        # validated here too: SDK users and the conformance suite build drivers without a config file
        self.options = schema.validate(options, driver=owner)

    @abc.abstractmethod
    def convert(self, content: ContentProvider, source: str) -> Any:  # Descriptor | push.PushPlan
        """Convert ``source``; the returned descriptor's blob (and all it points at) is in ``content.store``.

        The engine pushes it and tags it at the target. A driver whose output is not one tagged image (SOCI
        index v1: referrers attached to the source's manifests, no new tag) returns an
        :class:`acceleration_sdk.push.PushPlan` saying what to push and which referrers to list."""

    @abc.abstractmethod
    def name(self) -> str:
        """The format name, e.g. ``"estargz"``."""

    @abc.abstractmethod
    def version(self) -> str:
        """The version of the output format; changes when the output bytes would change."""

    @classmethod
    def image_checker(cls, manifest: Any, claim: bool = True) -> ImageChecker | None:
        """A checker for ``manifest`` (an ``oci.Manifest``) when it is this driver's output, else ``None``.

        ``claim=True``: recognise the format from media types and annotations (``accelctl check`` asks every
        driver); ``claim=False``: the caller knows the format (the driver that converted it, or the config's),
        so return a checker whenever the driver has one and let it report what is missing. The default: none.
        """
        return None

    def referenced_blobs(self, manifest: Any) -> list[Descriptor]:
        """Blobs a converted manifest (an ``oci.Manifest``) needs in the target repository although it does not
        list them; the engine pushes them with it (nydus ``oci_ref``: the source gzip layers). Default: none."""
        return []

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

    #: Media types of this driver's layers that a Docker manifest may hold as they are (with ``docker2oci``
    #: false the engine otherwise refuses a layer type that has no Docker name).
    docker_layer_types: ClassVar[frozenset[str]] = frozenset()

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

    def layer_cache_key(self, content: ContentProvider) -> str:
        """The layer-cache key of this conversion's layers: :meth:`cache_key`, plus what the output depends on
        beyond the options (nydus: the digest its ``chunk_dict_ref`` resolves to now). The walk asks once per
        layer, before looking in the caches; ``content`` is that layer's provider."""
        return self.cache_key()

    def finalize_manifest(self, content: ContentProvider, manifest: dict, config: dict) -> tuple[dict, dict]:
        """A hook for formats that must see the whole image; the default changes nothing.

        ``manifest`` is the converted manifest as a dict: its output ``mediaType`` and its converted
        ``layers`` (``content.converted_path`` finds their blobs); ``config`` has the new ``rootfs.diff_ids``.
        Return both, e.g. with a layer appended (nydus: the merged bootstrap) and its diff_id and history
        entry; blobs written through ``content.blob_writer()`` are pushed with the image.
        """
        return manifest, config

    def index_entries(self, content: ContentProvider, source: "SourceManifest",
                      converted: Descriptor) -> list[Descriptor]:
        """The target index's entries for one source platform manifest; the default: the converted one.

        Return more to put other manifests beside it under the same platform (nydus ``merge_manifest``: the
        source image with an empty layer first, then the nydus one), or a replacement of ``converted``.
        Every manifest returned, its config and its new blobs must be in the store (``content.put_json``,
        ``content.blob_writer()``); blobs it shares with the source are mounted from there at push time.
        The engine orders the index by rank: every platform's first entry, then every second, ...; source
        attestations follow the first entry. A single-manifest source whose hook returns more than one entry
        becomes an OCI index of them. ``converted.platform`` is set (from the config for a single manifest).
        """
        return [converted]


@dataclasses.dataclass(frozen=True, slots=True)
class SourceManifest:
    """One source platform manifest as the walk read it (for :meth:`LayerDriver.index_entries`)."""

    descriptor: Descriptor  # as the source index lists it; ``platform`` from the config for a single manifest
    manifest: Mapping[str, Any]  # its JSON, unchanged
    config: Mapping[str, Any]  # its config's JSON, unchanged


@dataclasses.dataclass(frozen=True, slots=True)
class ConvertedLayer:
    """A converted layer: its descriptor (blob in the content store) and the new diff_id."""

    descriptor: Descriptor
    diff_id: str


# ------------------------------------------------------------------ lookup

@functools.lru_cache(maxsize=1)  # scanning every installed distribution costs ~10 ms: once per process
def _entry_points() -> dict[str, Any]:
    """Name -> EntryPoint of the group; the first distribution on sys.path wins a duplicated name."""
    from importlib import metadata  # ~30 ms to import: only when a driver is looked up

    found: dict[str, Any] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def available() -> dict[str, str]:
    """Driver names -> the entry point's target (``module:attr``); nothing is imported to list them."""
    return {name: ep.value for name, ep in sorted(_entry_points().items())}


@functools.lru_cache(maxsize=None)
def _load(name: str, target: str) -> Callable[..., Driver]:
    ep = _entry_points()[name]
    try:
        return ep.load()
    except Exception as exc:  # ImportError, AttributeError, or the plugin's own import-time failure
        raise DriverError(f"driver {name!r} cannot be loaded from {target}: {type(exc).__name__}: {exc}") from exc


def driver_class(name: str) -> Callable[..., Driver]:
    """The registered factory (usually a Driver subclass) for ``name``; unknown -> DriverError naming the known."""
    table = available()
    target = table.get(name)
    if target is None:
        # none at all: this project's own entry points are missing, i.e. it is not installed (make install)
        known = ", ".join(table) or f"none in entry-point group {ENTRY_POINT_GROUP}; is acceld installed?"
        raise DriverError(f"unknown driver {name!r} (available: {known})")
    return _load(name, target)


def default_tag_suffix(name: str) -> str:
    """The suffix of converted tags when no ``converter.rules[].tag_suffix`` is set: the driver's own, or ``-name``."""
    return getattr(driver_class(name), "default_tag_suffix", "") or f"-{name}"


def validate_options(name: str, options: Mapping[str, Any] | None, path: str = DEFAULT_PATH) -> dict[str, Any]:
    """``options`` checked against the driver's schema (defaults filled); as given when it declares none."""
    schema: OptionSchema | None = getattr(driver_class(name), "options_schema", None)
    if schema is None:
        return dict(options or {})
    return schema.validate(options, path, driver=name)


def load_driver(name: str, options: Mapping[str, Any] | None = None) -> Driver:
    """Build the driver called ``name`` with ``options``; unknown name -> DriverError listing the known ones."""
    return driver_class(name)(options or {})
