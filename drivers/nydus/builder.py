"""Convert layers and merge them: the two operations the nydus driver will call.

    opts = BuildOptions(compressor="zstd", digester="blake3", chunk_size=0x100000)
    layer = convert_layer(tar_stream, blob_sink, opts)      # one nydus blob per source layer, streamed
    boot = merge_bootstrap([layer0, layer1], opts)          # the image's bootstrap (image/image.boot)

The per-layer bootstrap inside each blob names its blob "x" * 64 (builder/src/lib.rs:108-115); the merged one
names each blob by its layer digest, drops blobs no file uses and orders the rest by first use in a breadth-first
walk of the merged tree (builder/src/merge.rs:306-330).
"""
from __future__ import annotations

import dataclasses
from typing import BinaryIO

from . import codec
from . import layout as L
from .blob import DEFAULT_CHUNK_SIZE, BlobResult, BlobWriter, check_chunk_size
from .blobfile import BlobFile
from .chunkdict import ChunkDict, is_dict_label
from .bootstrap import build_bootstrap
from .layout import RafsError
from .reader import Rafs
from .tree import Node, from_bootstrap, ingest_layer, merge
from .validate import validate


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    compressor: str = "zstd"
    digester: str = "blake3"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prefetch: tuple[str, ...] = ()
    crc: bool = True
    workers: int = 1            # threads digesting/compressing chunks (the output does not depend on it)

    def __post_init__(self):
        codec.Compressor(self.compressor)
        codec.digest(self.digester, b"")
        check_chunk_size(self.chunk_size)


@dataclasses.dataclass
class LayerResult:
    blob: BlobResult
    root: Node                  # the layer's own tree, whiteouts kept (merge_bootstrap applies them)
    dict_bytes: int = 0         # file bytes referenced in a chunk dict instead of stored (convert_layer)


def convert_layer(stream: BinaryIO, sink: BinaryIO, opts: BuildOptions, position: int = 0,
                  chunk_dict: ChunkDict | None = None) -> LayerResult:
    """Read an uncompressed layer tar from ``stream``; write its nydus blob to ``sink``. ``position`` is the
    layer's place in the image: its chunks carry it until the merged bootstrap maps it to a blob table index.
    The blob depends on the compressor, digester and chunk size only (prefetch patterns go to the merged
    bootstrap, as nydus-snapshotter passes them to ``nydus-image merge``), so it is reusable across images --
    and on ``chunk_dict``: a chunk the dict holds is not stored, the file points into the dict's blob, and the
    per-layer bootstrap's blob table lists this blob first, then the dict blobs used (their real ids)."""
    writer = BlobWriter(sink, compressor=opts.compressor, digester=opts.digester, chunk_size=opts.chunk_size,
                        crc=opts.crc, blob_index=position, workers=opts.workers,
                        dict_lookup=chunk_dict.lookup if chunk_dict is not None else None)
    try:
        root = ingest_layer(stream, writer.add_file)

        def per_layer(entry):
            blobs, table = ([entry], {position: 0}) if entry else ([], {})
            for label in writer.dict_used:
                table[label] = len(blobs)
                blobs.append(chunk_dict.entry(label, len(blobs)))
            return build_bootstrap(root, blobs, blob_of_layer=table,
                                   compressor=opts.compressor, digester=opts.digester, chunk_size=opts.chunk_size)
        result = LayerResult(writer.finish(per_layer), root)
        result.dict_bytes = writer.dict_bytes
        return result
    finally:
        writer.close()   # the chunk pool, also when the layer is refused halfway


def layer_from_blob(path, position: int, opts: BuildOptions, digest: str | None = None,
                    chunk_dict: ChunkDict | None = None) -> LayerResult:
    """A :class:`LayerResult` for a nydus blob converted earlier (the layer cache): its tree comes back from the
    blob's own image.boot, so the merged bootstrap needs neither the source layer nor a reconversion. The blob
    must have been built with ``opts``' compressor, digester and chunk size (a merged bootstrap has one of each),
    and any dict blob its bootstrap names must be one of ``chunk_dict``'s."""
    blob = BlobFile(path)
    if blob.bootstrap is None:
        raise RafsError(f"{path}: the blob carries no image.boot (not an inline-meta nydus blob)")
    rafs = Rafs(blob.bootstrap)
    own = [i for i, b in enumerate(rafs.blobs) if b.blob_id == L.INLINE_BLOB_ID]
    validate(rafs, {L.INLINE_BLOB_ID: blob} if own else None, verify_data=False, partial=True)
    if (rafs.compressor, rafs.digester, rafs.ext.chunk_size) != (opts.compressor, opts.digester, opts.chunk_size):
        raise RafsError(f"{path}: built with {rafs.compressor}/{rafs.digester}/{rafs.ext.chunk_size:#x}, "
                        f"not {opts.compressor}/{opts.digester}/{opts.chunk_size:#x}")
    labels = {}
    for i, b in enumerate(rafs.blobs):
        if b.blob_id == L.INLINE_BLOB_ID:
            labels[i] = position
        elif chunk_dict is None:
            raise RafsError(f"{path}: the blob was built against a chunk dict (blob sha256:{b.blob_id}), and "
                            "this conversion has no chunk_dict_ref")
        else:
            labels[i] = chunk_dict.label(b.blob_id)
    entry = rafs.blobs[own[0]] if own else None
    blob_meta = blob.ci + bytes(-len(blob.ci) % L.BLOCK_SIZE) + blob.header_bytes if entry else b""
    result = BlobResult(digest or blob.sha256(), blob.size, entry, blob_meta, blob.bootstrap)
    return LayerResult(result, from_bootstrap(rafs, position, labels))


def at_position(layer: LayerResult, position: int) -> LayerResult:
    """``layer`` (a :func:`convert_layer` result) with its chunks labelled with ``position``, its place in an
    image; the tree is relabelled in place (a hard-linked file node once)."""
    seen, stack = set(), [layer.root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.children:
            stack.extend(node.children.values())
        if any(c.blob_index != position and not is_dict_label(c.blob_index) for c in node.chunks):
            node.chunks = [c if is_dict_label(c.blob_index) else dataclasses.replace(c, blob_index=position)
                           for c in node.chunks]
    return layer


def blob_order(root: Node) -> list[int]:
    """Layer positions in order of first use by a file chunk, breadth first (children by name)."""
    order, queue, seen = [], [root], set()
    while queue:
        node = queue.pop(0)
        for name in sorted(node.children):
            child = node.children[name]
            if child.kind == "dir":
                queue.append(child)
            for chunk in child.chunks:
                if chunk.blob_index not in seen:
                    seen.add(chunk.blob_index)
                    order.append(chunk.blob_index)
    return order


def merge_bootstrap(layers: list[LayerResult], opts: BuildOptions, chunk_dict: ChunkDict | None = None) -> bytes:
    """The merged bootstrap of ``layers`` (lowest first); chunks in ``chunk_dict``'s blobs name those blobs."""
    merged = merge([layer.root for layer in layers])
    order = blob_order(merged)
    entries = []
    for index, position in enumerate(order):
        if is_dict_label(position):
            if chunk_dict is None:
                raise RafsError("a chunk names a chunk dict blob, and no chunk dict was given")
            entries.append(chunk_dict.entry(position, index))
            continue
        if position >= len(layers) or layers[position].blob.entry is None:
            raise RafsError(f"a chunk names layer {position}, which has no blob (convert_layer position?)")
        entries.append(layers[position].blob.merged_entry(index))
    return build_bootstrap(merged, entries, blob_of_layer={p: i for i, p in enumerate(order)},
                           compressor=opts.compressor, digester=opts.digester, chunk_size=opts.chunk_size,
                           prefetch=list(opts.prefetch))
