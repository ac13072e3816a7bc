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

import collections
import concurrent.futures
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
    """``workers`` > 1 digests and compresses chunks on a thread pool (zstd, lz4, blake3 and crc32c release the
    GIL) with at most 2 x workers chunks in flight; chunks are still deduplicated and written in read order,
    so the blob is byte-identical to a single-threaded one. A file's chunk list is complete after ``finish``."""

    def __init__(self, sink: BinaryIO, *, compressor: str = "zstd", digester: str = "blake3",
                 chunk_size: int = DEFAULT_CHUNK_SIZE, crc: bool = True, blob_index: int = 0, workers: int = 1,
                 dict_lookup: Callable[[bytes, int], Chunk | None] | None = None):
        self._sink = sink
        # a chunk dict (chunkdict.ChunkDict.lookup): a chunk it holds is referenced there, never stored here
        self._dict = dict_lookup
        self.dict_used: dict[int, None] = {}   # dict blob labels in order of first use
        self.dict_bytes = 0                    # uncompressed bytes referenced instead of stored
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "nydus-chunk") if workers > 1 else None
        self._window: collections.deque = collections.deque()
        self._depth = 2 * workers
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

    def _prepare(self, data: bytes) -> tuple[bytes, bytes | None, int | None, int]:
        """(digest, stored bytes or None for a chunk already written, crc, size): the thread-safe part."""
        digest = codec.digest(self.digester, data)
        if digest in self._chunks or (self._dict is not None and self._dict(digest, len(data)) is not None):
            return digest, None, None, len(data)
        return digest, self._compressor.compress(data), codec.crc32c(data) if self._crc else None, len(data)

    def _commit(self, digest: bytes, stored: bytes | None, crc: int | None, size: int) -> Chunk:
        found = self._chunks.get(digest)
        if found is not None:
            return found
        if stored is None:   # not in this blob: the chunk dict has it (nydus looks there first, node.rs)
            found = self._dict(digest, size)
            self.dict_used.setdefault(found.blob_index)
            self.dict_bytes += size
            return found
        chunk = Chunk(digest, self.blob_index, len(self._chunks), self.pos, len(stored), self._uncompressed_end,
                      size, crc)
        self._write(stored)
        self._uncompressed_end = L.align(self._uncompressed_end + size, L.BLOCK_SIZE)
        self._chunks[digest] = chunk
        self._ci += L.pack_ci_v1(chunk)
        self._digests += digest
        return chunk

    def add_chunk(self, data: bytes, out: list[Chunk]) -> None:
        """Store one chunk (or find its twin already stored); its :class:`Chunk` is appended to ``out``."""
        if self._pool is None:
            out.append(self._commit(*self._prepare(data)))
            return
        self._window.append((self._pool.submit(self._prepare, data), out))
        if len(self._window) > self._depth:
            self._settle_one()

    def _settle_one(self) -> None:
        future, out = self._window.popleft()
        out.append(self._commit(*future.result()))

    def close(self) -> None:
        """Stop the pool (also after a failure: nothing more is written)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._window.clear()

    def add_file(self, reader: BinaryIO, size: int) -> list[Chunk]:
        """Chunk ``size`` bytes from ``reader`` (fs_chunk_size pieces, the last one shorter)."""
        out: list[Chunk] = []
        left = size
        while left:
            want = min(left, self.chunk_size)
            data = reader.read(want)
            while len(data) < want:
                more = reader.read(want - len(data))
                if not more:
                    raise RafsError(f"file data ends {left - len(data)} bytes early")
                data += more
            self.add_chunk(data, out)
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
        while self._window:
            self._settle_one()
        self.close()
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
