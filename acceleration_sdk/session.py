"""One running conversion: what the walk, the providers drivers see, and the push share.

A :class:`ConversionSession` holds the references, the registry client, the content store and its lease,
the progress sink, the remote cache and the size counters of one ``engine.convert`` call. It is the
engine's: drivers never see it (they get an :class:`~acceleration_sdk.provider.EngineProvider`).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable

from . import oci
from .config import Config
from .content import ContentStore, Lease
from .driver import ProgressEvent
from .errors import ConversionError
from .oci import Descriptor
from .reference import Reference
from .registry import RegistryClient
from .remote_cache import RemoteCache

log = logging.getLogger("acceleration_sdk.engine")


@dataclasses.dataclass
class ConversionSession:
    cfg: Config
    source: Reference
    target: Reference
    client: RegistryClient
    store: ContentStore
    lease: Lease
    root: Descriptor  # the source's manifest or index, already in the store
    on_progress: Callable[[ProgressEvent], None] | None = None
    remote_cache: RemoteCache | None = None  # converted layers remembered under the cache tag
    stream_uploads: bool = True  # push converted blobs while they are written (see push.UploadingIngest)
    source_size: int = 0
    target_size: int = 0
    # set when one layer failed: the other layers' source streams stop at their next read
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    def progress(self, event: ProgressEvent) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(event)
            except Exception:  # a broken progress sink must not fail the conversion
                log.exception("progress callback failed")

    def read_blob(self, desc: Descriptor, limit: int = 16 << 20) -> bytes:
        """A small blob (manifest, config), fetched into the store once and verified."""
        if desc.size > limit:
            raise ConversionError(f"blob {desc.digest} of {desc.size} bytes is too large for a manifest or config")
        self.lease.add([desc.digest])  # before has(): a GC elsewhere may run between the two
        if not self.store.has(desc.digest):
            with self.store.writer(expected=desc.digest) as w:
                self.client.download_blob(self.source, desc.digest, w, size=desc.size)
                w.commit()
        return self.store.read_bytes(desc.digest, limit)

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
