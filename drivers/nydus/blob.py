"""Write a nydus data blob as ``nydus-image create --type tar-rafs --blob-inline-meta --features blob-toc`` does.

    blob = BlobWriter(sink, compressor="zstd", digester="blake3", chunk_size=0x100000)
    root = ingest_layer(stream, blob.add_file)       # chunk data is compressed and written as files are read
    result = blob.finish(lambda entry: build_bootstrap(root, [entry], ...))

Layout (builder/src/core/blob.rs:117-316, builder/src/lib.rs:126-201), each part followed by its GNU tar header:
``chunk data | "image.blob" | blob.meta (ci array) + 4 KiB header | "blob.meta" | blob.digest | "blob.digest" |
image.boot (zstd) | "image.boot" | TOC entries | "rafs.blob.toc"``. Chunks are aligned to 4 KiB in the
uncompressed address space (forced for v6) and deduplicated by digest inside the blob. ``sink`` only needs
``write``; the blob is never held in memory (only the per-chunk tables are: 48 bytes per chunk).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import BinaryIO, Callable

from . import codec
from . import layout as L
from .layout import Chunk, RafsError

MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 0x1000, 0x100_0000   # storage/src/lib.rs:71-73
DEFAULT_CHUNK_SIZE = 0x10_0000


def check_chunk_size(chunk_size: int) -> int:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size & (chunk_size - 1):
        raise RafsError(f"fs_chunk_size {chunk_size:#x} must be a power of two in 0x1000..0x1000000")
    return chunk_size


@dataclasses.dataclass
class BlobResult:
    """What a finished blob is: its digest and size (the OCI layer), and its entry for a merged bootstrap."""

    digest: str                 # "sha256:<hex>" of the whole blob = the layer digest = the blob id
    size: int
    entry: L.BlobEntry | None   # None for a layer without file data (no chunks: no blob in the bootstrap)
    blob_meta: bytes            # image/<hex>.blob.meta for the bootstrap layer: ci array, pad to 4K, header
    bootstrap: bytes            # the per-layer bootstrap written into the blob (uncompressed)

    def merged_entry(self, blob_index: int) -> L.BlobEntry:
        """The entry for a merged bootstrap: id = layer digest, INLINED_FS_META stripped (context.rs:638-645)."""
        return dataclasses.replace(self.entry, blob_id=self.digest.split(":", 1)[1], blob_index=blob_index,
                                   features=self.entry.features & ~L.B_INLINED_FS_META)


class BlobWriter:
    def __init__(self, sink: BinaryIO, *, compressor: str = "zstd", digester: str = "blake3",
                 chunk_size: int = DEFAULT_CHUNK_SIZE, crc: bool = True, blob_index: int = 0):
        self._sink = sink
        self._compressor = codec.Compressor(compressor)
        codec.digest(digester, b"")   # refuses an unknown digester now, not at the first chunk
        self.digester = digester
        self.chunk_size = check_chunk_size(chunk_size)
        self.blob_index = blob_index
        self._crc = crc
        self._hash = hashlib.sha256()
        self.pos = 0                  # compressed offset: bytes written so far
        self._uncompressed_end = 0    # aligned end of the last chunk in the uncompressed address space
        self._chunks: dict[bytes, Chunk] = {}
        self._ci = bytearray()
        self._digests = bytearray()
        self._toc: list[L.TocEntry] = []

    def _write(self, data: bytes) -> None:
        self._sink.write(data)
        self._hash.update(data)
        self.pos += len(data)

    def add_chunk(self, data: bytes) -> Chunk:
        """Store one chunk (or find its twin already stored) and return where it is."""
        digest = codec.digest(self.digester, data)
        found = self._chunks.get(digest)
        if found is not None:
            return found
        stored = self._compressor.compress(data)
        chunk = Chunk(digest, self.blob_index, len(self._chunks), self.pos, len(stored), self._uncompressed_end,
                      len(data), codec.crc32c(data) if self._crc else None)
        self._write(stored)
        self._uncompressed_end = L.align(self._uncompressed_end + len(data), L.BLOCK_SIZE)
        self._chunks[digest] = chunk
        self._ci += L.pack_ci_v1(chunk)
        self._digests += digest
        return chunk

    def add_file(self, reader: BinaryIO, size: int) -> list[Chunk]:
        """Chunk ``size`` bytes from ``reader`` (fs_chunk_size pieces, the last one shorter)."""
        out, left = [], size
        while left:
            want = min(left, self.chunk_size)
            data = reader.read(want)
            while len(data) < want:
                more = reader.read(want - len(data))
                if not more:
                    raise RafsError(f"file data ends {left - len(data)} bytes early")
                data += more
            out.append(self.add_chunk(data))
            left -= want
        return out

    def _part(self, name: str, data: bytes, compressor: str = "none", usize: int | None = None,
              digest: bytes | None = None) -> None:
        offset = self.pos
        self._write(data)
        self._write(L.tar_header(name, len(data)))
        if digest is not None:
            self._toc.append(L.TocEntry(name, compressor, digest, offset, len(data),
                                        len(data) if usize is None else usize))

    def finish(self, build_bootstrap: Callable[[L.BlobEntry | None], bytes]) -> BlobResult:
        """Write everything after the chunk data; ``build_bootstrap(entry)`` makes the per-layer bootstrap."""
        entry, blob_meta = None, b""
        count = len(self._chunks)
        if count:
            data_size = self.pos
            self._write(L.tar_header(L.TOC_IMAGE_BLOB, data_size))
            self._toc.append(L.TocEntry(L.TOC_IMAGE_BLOB, "none", self._hash.digest(), 0, data_size,
                                        self._uncompressed_end))
            ci = bytes(self._ci)
            packed = codec.Compressor(self._compressor.name).compress(ci)
            ci_compressor = self._compressor.name if packed is not ci else "none"
            header = L.MetaHeader(L.LAYER_BLOB_FEATURES, ci_compressor, count, self.pos, len(packed), len(ci))
            header_bytes = header.pack()
            self._toc.append(L.TocEntry(L.TOC_BLOB_META, ci_compressor, hashlib.sha256(ci).digest(), self.pos,
                                        len(packed), len(ci)))
            self._toc.append(L.TocEntry(L.TOC_BLOB_META_HEADER, "none", hashlib.sha256(header_bytes).digest(),
                                        self.pos + len(packed), len(header_bytes), len(header_bytes)))
            self._part(L.TOC_BLOB_META, packed + header_bytes)
            self._part(L.TOC_BLOB_DIGEST, bytes(self._digests), digest=hashlib.sha256(self._digests).digest())
            entry = L.BlobEntry(L.INLINE_BLOB_ID, 0, self.chunk_size, count, self._compressor.name, self.digester,
                                L.LAYER_BLOB_FEATURES, self.pos, self._uncompressed_end, ci_compressor,
                                header.ci_offset, len(packed), len(ci))
            # the uncompressed ci array padded to 4 KiB, then the header (snapshotter pkg/converter/utils.go)
            blob_meta = ci + bytes(-len(ci) % L.BLOCK_SIZE) + header_bytes
        bootstrap = build_bootstrap(entry)
        packed = codec.Compressor("zstd").compress(bootstrap)
        self._part(L.TOC_BOOTSTRAP, packed, "zstd" if packed is not bootstrap else "none", len(bootstrap),
                   hashlib.sha256(bootstrap).digest())
        toc = b"".join(e.pack() for e in self._toc)
        self._part(L.TOC_NAME, toc)
        return BlobResult("sha256:" + self._hash.hexdigest(), self.pos, entry, blob_meta, bootstrap)
