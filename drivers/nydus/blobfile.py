"""Read a nydus data blob from its tail, as nydusd and nydus-snapshotter do, and export it for the kernel.

    blob = BlobFile("/path/to/blob")       # parses the TOC, blob.meta + header, blob.digest, image.boot
    blob.verify()                          # every TOC digest, every chunk's digest (and crc when given)
    blob.write_device("/tmp/dev.img")      # uncompressed chunk data at each chunk's uncompressed offset

The tail is ``TOC entries | tar header "rafs.blob.toc"`` (storage/src/meta/toc.rs:421-505); each part is followed
by its own GNU tar header (builder/src/core/context.rs:862-889). The device file is what nydus's
service/src/block_device.rs exports to the kernel's EROFS driver: block N of device i is uncompressed block N of
blob i.
"""
from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from . import codec
from . import layout as L
from .layout import RafsError

_READ = 1 << 20


class BlobFile:
    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.size = os.path.getsize(self.path)
        with open(self.path, "rb") as fh:
            self._parse(fh)

    def _read(self, fh: BinaryIO, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > self.size:
            raise RafsError(f"blob part at {offset}+{size} lies outside the {self.size}-byte blob")
        fh.seek(offset)
        return fh.read(size)

    def _header_at(self, fh: BinaryIO, offset: int, name: str, size: int) -> bytes:
        block = self._read(fh, offset, L.TAR_BLOCK)
        got = L.parse_tar_header(block)
        if got != (name, size):
            raise RafsError(f"tar header at {offset} says {got}, expected {(name, size)}")
        return block

    def _parse(self, fh: BinaryIO) -> None:
        if self.size < L.TAR_BLOCK:
            raise RafsError("blob is smaller than one tar header: no TOC")
        name, toc_size = L.parse_tar_header(self._read(fh, self.size - L.TAR_BLOCK, L.TAR_BLOCK))
        if name != L.TOC_NAME or toc_size % L.TOC_ENTRY_SIZE or not toc_size:
            raise RafsError(f"blob does not end with a TOC (last tar header: {name!r}, {toc_size} bytes)")
        toc_data = self._read(fh, self.size - L.TAR_BLOCK - toc_size, toc_size + L.TAR_BLOCK)
        self.toc_offset = self.size - L.TAR_BLOCK - toc_size
        self.toc_digest = hashlib.sha256(toc_data).digest()   # blob entry blob_toc_digest (lib.rs:183-201)
        self.toc_size = len(toc_data)
        self.toc = {}
        for off in range(0, toc_size, L.TOC_ENTRY_SIZE):
            entry = L.TocEntry.unpack(toc_data, off)
            if entry.name in self.toc:
                raise RafsError(f"TOC names {entry.name} twice")
            self.toc[entry.name] = entry
        meta, header = self.toc.get(L.TOC_BLOB_META), self.toc.get(L.TOC_BLOB_META_HEADER)
        self.header = self.ci = self.header_bytes = None
        if meta is not None:
            if header is None or header.compressed_offset != meta.compressed_offset + meta.compressed_size:
                raise RafsError("blob.meta.header does not follow blob.meta in the TOC")
            self.header_bytes = self._read(fh, header.compressed_offset, L.META_HEADER_SIZE)
            self.header = L.MetaHeader.unpack(self.header_bytes)
            self._header_at(fh, header.compressed_offset + L.META_HEADER_SIZE, L.TOC_BLOB_META,
                            meta.compressed_size + L.META_HEADER_SIZE)
            raw = self._read(fh, meta.compressed_offset, meta.compressed_size)
            h = self.header
            if (h.ci_offset, h.ci_compressed_size, h.ci_uncompressed_size) != (
                    meta.compressed_offset, meta.compressed_size, meta.uncompressed_size):
                raise RafsError("blob.meta header and TOC disagree on the chunk-info array")
            self.ci = raw if h.ci_compressor == "none" else codec.decompress(h.ci_compressor, raw,
                                                                            h.ci_uncompressed_size)
            unit = L.CI_V2_SIZE if h.features & L.B_CHUNK_INFO_V2 else L.CI_V1_SIZE
            if len(self.ci) != h.ci_uncompressed_size or len(self.ci) < h.ci_entries * unit:
                raise RafsError("chunk-info array has the wrong size")
        self.digests = b""
        if L.TOC_BLOB_DIGEST in self.toc:
            e = self.toc[L.TOC_BLOB_DIGEST]
            self.digests = self._read(fh, e.compressed_offset, e.compressed_size)
            self._header_at(fh, e.compressed_offset + e.compressed_size, L.TOC_BLOB_DIGEST, e.compressed_size)
        self.bootstrap = None
        if L.TOC_BOOTSTRAP in self.toc:
            e = self.toc[L.TOC_BOOTSTRAP]
            raw = self._read(fh, e.compressed_offset, e.compressed_size)
            self._header_at(fh, e.compressed_offset + e.compressed_size, L.TOC_BOOTSTRAP, e.compressed_size)
            self.bootstrap = raw if e.compressor == "none" else codec.decompress(e.compressor, raw,
                                                                                e.uncompressed_size)
        self.chunk_data_size = 0
        if L.TOC_IMAGE_BLOB in self.toc:
            e = self.toc[L.TOC_IMAGE_BLOB]
            # nydus-image <= 2.2 wrote offset = size for image.blob (the golden fixture: 7802/7802)
            if e.compressed_offset not in (0, e.compressed_size):
                raise RafsError(f"image.blob TOC entry has offset {e.compressed_offset}, expected 0")
            self.chunk_data_size = e.compressed_size
            self._header_at(fh, e.compressed_size, L.TOC_IMAGE_BLOB, e.compressed_size)

    # -- chunk information ----------------------------------------------------------------------------

    @property
    def chunk_count(self) -> int:
        return self.header.ci_entries if self.header else 0

    @property
    def v2(self) -> bool:
        return bool(self.header and self.header.features & L.B_CHUNK_INFO_V2)

    def chunk(self, index: int) -> tuple[int, int, int, int]:
        """(compressed_offset, compressed_size, uncompressed_offset, uncompressed_size) of chunk ``index``."""
        if not 0 <= index < self.chunk_count:
            raise RafsError(f"chunk index {index} is not in the blob's {self.chunk_count} chunk infos")
        return L.unpack_ci(self.ci, index, self.v2)

    def chunk_digest(self, index: int) -> bytes:
        return self.digests[index * L.DIGEST_SIZE:(index + 1) * L.DIGEST_SIZE]

    @property
    def uncompressed_size(self) -> int:
        """Aligned end of the last chunk: the blob's uncompressed (device) size."""
        ends = [self.chunk(i)[2] + self.chunk(i)[3] for i in range(self.chunk_count)]
        return L.align(max(ends, default=0), L.BLOCK_SIZE)

    def read_chunk(self, fh: BinaryIO, index: int, compressor: str) -> bytes:
        coff, csize, _uoff, usize = self.chunk(index)
        if coff + csize > self.chunk_data_size:
            raise RafsError(f"chunk {index} lies outside image.blob")
        raw = self._read(fh, coff, csize)
        return raw if csize == usize else codec.decompress(compressor, raw, usize)

    # -- checks and export ----------------------------------------------------------------------------

    def verify(self, compressor: str, digester: str, crcs: dict[int, int] | None = None) -> None:
        """Check every TOC digest and every chunk against blob.digest (and ``crcs``: ci index -> CRC-32C)."""
        with open(self.path, "rb") as fh:
            if len(self.digests) != self.chunk_count * L.DIGEST_SIZE:
                raise RafsError(f"blob.digest holds {len(self.digests)} bytes for {self.chunk_count} chunks")
            for i in range(self.chunk_count):
                data = self.read_chunk(fh, i, compressor)
                if codec.digest(digester, data) != self.chunk_digest(i):
                    raise RafsError(f"chunk {i}: {digester} digest does not match blob.digest")
                if crcs and i in crcs and codec.crc32c(data) != crcs[i]:
                    raise RafsError(f"chunk {i}: crc32c does not match the chunk table")
            for entry in self.toc.values():   # after the chunks: a bad chunk is named as such, not as image.blob
                self._verify_toc_entry(fh, entry)

    def _verify_toc_entry(self, fh: BinaryIO, entry: L.TocEntry) -> None:
        if entry.name == L.TOC_IMAGE_BLOB:  # sha256 of the chunk data and its tar header (blob.rs:122-140)
            h, left, fh_pos = hashlib.sha256(), entry.compressed_size + L.TAR_BLOCK, 0
            fh.seek(0)
            while left:
                piece = fh.read(min(left, _READ))
                if not piece:
                    raise RafsError("image.blob is truncated")
                h.update(piece)
                left -= len(piece)
                fh_pos += len(piece)
            got = h.digest()
        elif entry.name == L.TOC_BLOB_META:
            got = hashlib.sha256(self.ci).digest()
        elif entry.name == L.TOC_BOOTSTRAP:
            got = hashlib.sha256(self.bootstrap).digest()
        else:
            got = hashlib.sha256(self._read(fh, entry.compressed_offset, entry.compressed_size)).digest()
        if got != entry.digest:
            raise RafsError(f"TOC entry {entry.name}: sha256 does not match")

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for piece in iter(lambda: fh.read(_READ), b""):
                h.update(piece)
        return "sha256:" + h.hexdigest()

    def write_device(self, out_path: str | os.PathLike, compressor: str) -> int:
        """Write the device image the kernel reads (returns its size, a multiple of 4096)."""
        size = self.uncompressed_size
        with open(self.path, "rb") as fh, open(out_path, "wb") as out:
            out.truncate(size)
            for i in range(self.chunk_count):
                out.seek(self.chunk(i)[2])
                out.write(self.read_chunk(fh, i, compressor))
        return size
