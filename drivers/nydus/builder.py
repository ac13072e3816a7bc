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
from .blob import DEFAULT_CHUNK_SIZE, BlobResult, BlobWriter, check_chunk_size
from .bootstrap import build_bootstrap
from .layout import RafsError
from .tree import Node, ingest_layer, merge


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    compressor: str = "zstd"
    digester: str = "blake3"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prefetch: tuple[str, ...] = ()
    crc: bool = True

    def __post_init__(self):
        codec.Compressor(self.compressor)
        codec.digest(self.digester, b"")
        check_chunk_size(self.chunk_size)


@dataclasses.dataclass
class LayerResult:
    blob: BlobResult
    root: Node                  # the layer's own tree, whiteouts kept (merge_bootstrap applies them)


def convert_layer(stream: BinaryIO, sink: BinaryIO, opts: BuildOptions, position: int = 0) -> LayerResult:
    """Read an uncompressed layer tar from ``stream``; write its nydus blob to ``sink``. ``position`` is the
    layer's place in the image: its chunks carry it until the merged bootstrap maps it to a blob table index."""
    writer = BlobWriter(sink, compressor=opts.compressor, digester=opts.digester, chunk_size=opts.chunk_size,
                        crc=opts.crc, blob_index=position)
    root = ingest_layer(stream, writer.add_file)

    def per_layer(entry):
        return build_bootstrap(root, [entry] if entry else [], blob_of_layer={position: 0}, compressor=opts.compressor,
                               digester=opts.digester, chunk_size=opts.chunk_size, prefetch=list(opts.prefetch))
    return LayerResult(writer.finish(per_layer), root)


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


def merge_bootstrap(layers: list[LayerResult], opts: BuildOptions) -> bytes:
    """The merged bootstrap of ``layers`` (lowest first)."""
    merged = merge([layer.root for layer in layers])
    order = blob_order(merged)
    entries = []
    for index, position in enumerate(order):
        if position >= len(layers) or layers[position].blob.entry is None:
            raise RafsError(f"a chunk names layer {position}, which has no blob (convert_layer position?)")
        entries.append(layers[position].blob.merged_entry(index))
    return build_bootstrap(merged, entries, blob_of_layer={p: i for i, p in enumerate(order)},
                           compressor=opts.compressor, digester=opts.digester, chunk_size=opts.chunk_size,
                           prefetch=list(opts.prefetch))
