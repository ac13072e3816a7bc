"""One running conversion: what the walk, the providers drivers see, and the push share.

A :class:`ConversionSession` holds the references, the registry client, the content store and its lease,
the progress sink, the remote cache and the size counters of one ``engine.convert`` call. It is the
engine's: drivers never see it (they get an :class:`~acceleration_sdk.provider.EngineProvider`).

The conformance suite (``acceleration_sdk.testing.StoreProvider``) runs drivers through the same provider
over a session with no registry: ``client`` and ``root`` are ``None`` there, every source is in the store.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from typing import Any, Callable

from . import oci
from .config import Config
from .content import ContentStore, Lease
from .driver import ProgressEvent
from .errors import ContentError, ConversionError, DigestMismatchError
from .oci import Descriptor
from .reference import Reference
from .registry import RegistryClient
from .remote_cache import RemoteCache

log = logging.getLogger("acceleration_sdk.engine")

HARBOR_DRIVER_NAME = "io.goharbor.artifact.v1alpha1.acceleration.driver.name"
HARBOR_DRIVER_VERSION = "io.goharbor.artifact.v1alpha1.acceleration.driver.version"
HARBOR_SOURCE_DIGEST = "io.goharbor.artifact.v1alpha1.acceleration.source.digest"


@dataclasses.dataclass
class ConversionSession:
    cfg: Config
    source: Reference
    target: Reference
    client: RegistryClient | None  # None: no registry, every source blob is in the store (the suite's harness)
    store: ContentStore
    lease: Lease
    root: Descriptor | None  # the source's manifest or index, already in the store (None: layers only)
    on_progress: Callable[[ProgressEvent], None] | None = None
    remote_cache: RemoteCache | None = None  # converted layers remembered under the cache tag
    stream_uploads: bool = True  # push converted blobs while they are written (see push.UploadingIngest)
    source_size: int = 0
    target_size: int = 0
    # set when one layer failed: the other layers' source streams stop at their next read
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    # other images a driver reads (``referenced``: text -> ReferencedImage, resolved once per conversion) and
    # their blobs the converted image uses (digest -> the repository push mounts or copies them from)
    referenced: dict = dataclasses.field(default_factory=dict)
    linked_blobs: dict = dataclasses.field(default_factory=dict)
    referenced_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # converted blob digest -> the layer-cache entries (cache key, source digest) it came from or went into in
    # this conversion: what a failed converter.verify forgets (see forget_conversions)
    cache_entries: dict = dataclasses.field(default_factory=dict)
    # converted blobs the target repository took while they were written (the stream upload's PUT got its 201):
    # the push phase knows they are there without a HEAD each
    uploaded: set = dataclasses.field(default_factory=set)

    def progress(self, event: ProgressEvent) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(event)
            except Exception:  # a broken progress sink must not fail the conversion
                log.exception("progress callback failed")

    def harbor_annotations(self, driver: Any, source: Descriptor) -> dict[str, str]:
        """Harbor's acceleration annotations of a converted object made from ``source`` (none when turned off)."""
        if not self.cfg.converter.harbor_annotation:
            return {}
        return {HARBOR_DRIVER_NAME: driver.name(), HARBOR_DRIVER_VERSION: driver.version(),
                HARBOR_SOURCE_DIGEST: source.digest}

    def cached_conversion(self, cache_key: str, source: Descriptor) -> tuple[Descriptor, str] | None:
        """A blob made from ``source`` before under ``cache_key`` (local layer cache, else the remote cache),
        with its note (a layer's diff_id); only while the blob is in the store or the target repository."""
        key = f"{cache_key}@{source.digest}"
        hit = self.store.cache_get(key)
        if hit is not None:
            desc = Descriptor.from_dict(hit[0])
            self.lease.add([desc.digest])  # lease before looking: a GC in another worker must not take it after
            if self.store.has(desc.digest) or (self.client is not None
                                               and self.client.blob_exists(self.target, desc.digest)):
                self._note_cache_entry(desc.digest, cache_key, source.digest)
                return desc, hit[1]
        remote = self.remote_cache.get(cache_key, source.digest) if self.remote_cache else None
        if remote is not None and self.client is not None and self.client.blob_exists(self.target, remote[0].digest):
            self.store.cache_put(key, remote[0].to_dict(), remote[1])
            self._note_cache_entry(remote[0].digest, cache_key, source.digest)
            return remote
        return None

    def remember_conversion(self, platform: dict, cache_key: str, source: Descriptor, desc: Descriptor,
                            note: str, *, local: bool = True) -> None:
        """Record a conversion in the local layer cache (unless ``local`` is false) and the remote cache."""
        if local:
            self.store.cache_put(f"{cache_key}@{source.digest}", desc.to_dict(), note)
        if self.remote_cache is not None:
            self.remote_cache.add(platform, cache_key, source.digest, desc, note)
        self._note_cache_entry(desc.digest, cache_key, source.digest)

    def _note_cache_entry(self, digest: str, cache_key: str, source_digest: str) -> None:
        with self.referenced_lock:
            self.cache_entries.setdefault(digest, set()).add((cache_key, source_digest))

    def forget_conversions(self, digests: list[str]) -> list[str]:
        """Drop the layer-cache entries (local and remote; the remote cache is saved) behind the converted
        blobs ``digests`` -- all of this conversion's when none of them came from one -- so the next run
        converts those layers afresh instead of reusing what failed. Returns the converted digests forgotten."""
        with self.referenced_lock:
            named = [d for d in dict.fromkeys(digests) if d in self.cache_entries]
            chosen = named or list(self.cache_entries)
            entries = [(d, entry) for d in chosen for entry in sorted(self.cache_entries[d])]
        for digest, (cache_key, source_digest) in entries:
            self.store.cache_delete(f"{cache_key}@{source_digest}")
            if self.remote_cache is not None:
                self.remote_cache.discard(cache_key, source_digest)
            log.warning("layer cache: forgot %s (made from %s) after a failed verify; the next run converts "
                        "it afresh", digest, source_digest)
        if entries and self.remote_cache is not None:
            self.remote_cache.save()  # logs and swallows its own errors
        return chosen

    def read_blob(self, desc: Descriptor, limit: int = 16 << 20) -> bytes:
        """A small blob (manifest, config), fetched into the store once; verified as it is read."""
        if desc.size > limit:
            raise ConversionError(f"blob {desc.digest} of {desc.size} bytes is too large for a manifest or config")
        self.fetch(desc, self.source)
        data = self.store.read_bytes(desc.digest, limit)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != desc.digest or len(data) != desc.size:  # the store is a cache on disk: see source_stream
            raise DigestMismatchError(f"blob {desc.digest} ({desc.size} bytes) in the content store reads as "
                                      f"{actual} ({len(data)} bytes): the stored file is damaged",
                                      digest=desc.digest, actual=actual)
        return data

    def fetch(self, desc: Descriptor, repository: Reference) -> None:
        """``desc``'s blob leased and in the store: downloaded from ``repository`` (verified) when missing."""
        self.lease.add([desc.digest])  # before has(): a GC elsewhere may run between the two
        if self.store.has(desc.digest):
            return
        if self.client is None:
            raise ContentError(f"blob {desc.digest} is not in the content store, and there is no registry "
                               "to fetch it from", digest=desc.digest)
        with self.store.writer(expected=desc.digest) as w:
            self.client.download_blob(repository, desc.digest, w, size=desc.size)
            w.commit()

    def read_manifest(self, desc: Descriptor) -> bytes:
        """A child manifest of an index: fetched by digest from /manifests/ (registries do not serve it as a blob)."""
        self.lease.add([desc.digest])  # before has(): a GC elsewhere may run between the two
        if not self.store.has(desc.digest):
            fetched = self.client.get_manifest(self.source.with_digest(desc.digest))
            self.store.write_bytes(fetched.raw, expected=desc.digest)
        return self.store.read_bytes(desc.digest)

    def put_json(self, obj: Any) -> tuple[str, int]:
        raw = oci.canonical_json(obj)
        digest = self.store.write_bytes(raw)
        self.lease.add([digest])
        return digest, len(raw)
