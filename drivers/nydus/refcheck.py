"""``accelctl check`` (and ``converter.verify``) for OCI-ref (zran) nydus images: the ``NydusChecker`` hands
layers annotated ``containerd.io/snapshot/nydus-ref`` and bootstraps naming zran blobs to these functions.

A zran layer cannot be read alone: its chunks are slices of the source gzip layer it names, which is not in
the manifest but in the same repository (where nydusd fetches it). The checker spools that gzip layer through
``bind``'s ``spool`` (acceleration_sdk.check: downloaded into the check's work directory, digest and size verified),
decodes every chunk from it through the blob's ZRAN contexts (sha256 against blob.digest, crc32c against the
chunk table) and yields the entries for ``--source``; the merged bootstrap is then held to nydusd's rules,
cross-checked against each zran blob's tables (``refblob.validate_ref``) and, by the checker, against the zran
layers' own trees merged (as for plain nydus blobs).
"""
from __future__ import annotations

import os
from typing import Iterator

from acceleration_sdk.errors import LayerError
from acceleration_sdk.oci import OCI_LAYER_GZIP, Descriptor
from acceleration_sdk.testing.entries import LayerEntry

from .layout import RafsError
from .reader import Rafs
from .refblob import REF_ANNOTATION, RefBlob, read_ref_layer, validate_ref
from .tree import from_bootstrap


def check_ref_layer(checker, index: int, desc: Descriptor, path: str) -> Iterator[LayerEntry]:
    """Parse the zran blob now (its tables are kept for the bootstrap), then read it with its gzip layer; once
    read, its own tree is kept for the merged bootstrap's comparison (``NydusChecker._trees``)."""
    source = desc.annotations[REF_ANNOTATION]
    if not source.startswith("sha256:") or len(source) != 71:
        raise LayerError(f"annotation {REF_ANNOTATION} is {source!r}, not a sha256 layer digest", digest=desc.digest)
    blob = RefBlob(path)
    checker.ref_blobs[source.split(":", 1)[1]] = (blob, desc)
    if blob.bootstrap is None:
        raise RafsError("the zran blob carries no image.boot")
    own = Rafs(blob.bootstrap)
    if own.blobs and own.blobs[0].blob_id != source.split(":", 1)[1]:
        raise LayerError(f"the blob's own bootstrap names gzip layer sha256:{own.blobs[0].blob_id}, but its annotation "
                         f"says {source}", digest=desc.digest)
    spool = getattr(checker, "spool", None)
    if spool is None:
        raise LayerError("a zran layer needs its source gzip layer, and this check cannot fetch blobs",
                         digest=desc.digest)
    size = own.blobs[0].compressed_size if own.blobs else None
    entries = _entries(path, spool, Descriptor(media_type=OCI_LAYER_GZIP, digest=source, size=size or 0), size)
    return _then_tree(checker, index, own, entries)


def _then_tree(checker, index: int, own: Rafs, entries: Iterator[LayerEntry]) -> Iterator[LayerEntry]:
    yield from entries
    checker._trees[index] = from_bootstrap(own, index)   # verified: what the merged bootstrap must show of it


def _entries(path: str, spool, gz: Descriptor, size: int | None) -> Iterator[LayerEntry]:
    if size is None:   # no file data: nothing to read from the gzip layer
        import io
        yield from read_ref_layer(path, io.BytesIO(), keep_data=False)
        return
    gz_path = spool(gz)   # the registry has the gzip layer under this digest and size, or the check fails here
    try:
        with open(gz_path, "rb") as fh:
            yield from read_ref_layer(path, fh, keep_data=False)
    finally:
        os.unlink(gz_path)


def check_ref_bootstrap(checker, rafs: Rafs, desc: Descriptor) -> None:
    """The merged bootstrap against the zran blobs the layers brought (their tables; chunk data was verified
    layer by layer)."""
    for b in rafs.blobs:
        if b.blob_id not in checker.ref_blobs:
            raise LayerError(f"the bootstrap names gzip layer sha256:{b.blob_id}, which no zran layer of the image "
                             "references", digest=desc.digest)
        layer = checker.ref_blobs[b.blob_id][1]
        # nydusd fetches blob.meta from the nydus blob layer the entry names (storage/src/device.rs:613-626)
        if (b.blob_meta_digest.hex(), b.blob_meta_size) != (layer.digest.split(":", 1)[1], layer.size):
            raise LayerError(f"the bootstrap's entry for gzip layer sha256:{b.blob_id} names blob.meta in "
                             f"sha256:{b.blob_meta_digest.hex()} ({b.blob_meta_size} bytes), not its zran layer "
                             f"{layer.digest}", digest=desc.digest)
    validate_ref(rafs, {b.blob_id: checker.ref_blobs[b.blob_id][0] for b in rafs.blobs})
