"""The suite's harness: the engine's own provider over a local ContentStore, with no registry.

:class:`StoreProvider` *is* the :class:`~acceleration_sdk.provider.EngineProvider` a driver gets during a
real conversion, built on a :class:`~acceleration_sdk.session.ConversionSession` without a registry client:
source layers are put in the store with :meth:`StoreProvider.add_layer`, and every rule the engine enforces
holds here by the same code -- each source blob is hashed as it is read and checked at its end, a commit
(and leaving an ``open_*`` block) first reads what the driver left of every source it opened, unread
non-zero data is refused, and a refusal stands. A driver therefore behaves the same in the suite and in the
engine, and the rule lives in one place.
"""
from __future__ import annotations

import contextlib

from ..config import Config
from ..content import ContentStore
from ..driver import ProgressEvent
from ..oci import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor
from ..provider import EngineProvider
from ..reference import parse
from ..session import ConversionSession
from .layers import compress

_MEDIA_TYPES = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}
# Placeholders: there is no image, only layers in a store. ".invalid" is reserved, so they never resolve.
SOURCE = parse("conformance.invalid/source:layers")
TARGET = SOURCE.with_tag("layers-converted")


class StoreProvider(EngineProvider):
    """The engine's ContentProvider over ``store``: sources from the store, converted blobs into it.

    ``events`` collects the progress events a driver (and the provider) reports. Use one per test, or
    call :meth:`finish` after each ``convert_layer``, as the engine ends each layer with its own provider.
    """

    def __init__(self, store: ContentStore):
        self.events: list[ProgressEvent] = []
        self._lease = contextlib.ExitStack()
        lease = self._lease.enter_context(store.lease())
        super().__init__(ConversionSession(cfg=Config(), source=SOURCE, target=TARGET, client=None, store=store,
                                           lease=lease, root=None, on_progress=self.events.append,
                                           stream_uploads=False))

    def finish(self) -> None:
        """End one ``convert_layer`` as the engine does: verify every source, abort uncommitted writers.

        Raises :class:`~acceleration_sdk.errors.DigestMismatchError` for a source that does not match its
        digest and :class:`~acceleration_sdk.errors.LayerError` when non-zero layer data was left unread
        (:meth:`EngineProvider.verify_sources`). The sources are then forgotten: the next layer starts clean.
        """
        try:
            self.verify_sources()
        finally:
            super().close()
            with self._lock:
                self._streams.clear()

    def close(self) -> None:
        """Abort uncommitted writers and end the lease on what this provider used."""
        try:
            super().close()
        finally:
            self._lease.close()

    def add_layer(self, tar: bytes, compression: str = "gzip") -> Descriptor:
        """Store ``tar`` compressed with ``compression`` (gzip, zstd or none) as a source layer."""
        blob = compress(tar, compression)
        digest = self.store.write_bytes(blob)
        return Descriptor(media_type=_MEDIA_TYPES[compression], digest=digest, size=len(blob))
