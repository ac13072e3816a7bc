"""Compressed members (gzip members or zstd frames), compressed in order on a bounded thread pool.

An eStargz blob is a sequence of independently compressed members; the TOC records the compressed offset at
which a file's (or chunk's) member starts. :class:`MemberPipeline` receives uncompressed bytes in output
order, cuts them into members where the writer says so, compresses each member as one job (zlib, zlib-ng and
zstandard release the GIL, so ``workers`` threads really run in parallel), and writes the results to ``dst``
strictly in order, recording each member's offset. Small members are batched (``BATCH_BYTES``) so a thread
hand-off is never per tiny file; at most ``2 * workers`` batches are in flight, so memory is a few chunks per
worker whatever the layer size.

Also here: the two footers and the zstd skippable frame (byte layouts from stargz-snapshotter
``estargz/gzip.go`` and ``estargz/zstdchunked/zstdchunked.go``).
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import struct
import threading
from typing import BinaryIO, Iterable

import zstandard

from acceleration_sdk.errors import DriverError

from . import libdeflate

try:  # zlib-ng is ~1.3x faster at level 9 and ~3x at level 1; same output format
    from zlib_ng import zlib_ng as _zlib
except ImportError:  # pragma: no cover - the optional "fast" extra
    import zlib as _zlib

GZIP_WBITS = 31  # 16 + 15: a gzip wrapper around a 32 KiB-window deflate stream
ESTARGZ_FOOTER_SIZE = 51
ZSTD_SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
ZSTDCHUNKED_FOOTER_MAGIC = b"GnUlInUx"
ZSTDCHUNKED_MANIFEST_TYPE = 1  # manifestTypeCRFS
BATCH_BYTES = 1 << 20  # uncompressed bytes per pool job (small members travel together)


class GzipCodec:
    """Each member is a complete gzip stream (RFC 1952), so ``gzip -d`` reads the blob as one tar."""

    name = "gzip"

    def __init__(self, level: int):
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 9:
            raise DriverError(f"estargz: gzip level must be an integer 0-9, got {level!r}")
        self.level = level

    def compress(self, pieces: list[bytes]) -> bytes:
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if libdeflate.available:  # same format, same level meaning, faster and a little smaller
            return libdeflate.gzip_compress(data, self.level)
        # one-shot: with zlib-ng ~40% cheaper per small member than a compressobj
        return _zlib.compress(data, self.level, GZIP_WBITS)

    def streamer(self, size: int):
        """A compressobj-like object for one member of ``size`` bytes fed piece by piece."""
        return _zlib.compressobj(self.level, _zlib.DEFLATED, GZIP_WBITS)


class ZstdCodec:
    """Each member is one zstd frame with content size and checksum; a zstd decoder reads across frames."""

    name = "zstd"

    def __init__(self, level: int):
        if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 22:
            raise DriverError(f"zstdchunked: zstd level must be an integer 1-22, got {level!r}")
        self.level = level
        self._local = threading.local()  # a ZstdCompressor is not safe to share between threads

    def compress(self, pieces: list[bytes]) -> bytes:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
        return cctx.compress(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def streamer(self, size: int):
        """A compressobj-like object for one frame of ``size`` bytes (the size goes in the frame header)."""
        return zstandard.ZstdCompressor(level=self.level, write_checksum=True).compressobj(size=size)


def estargz_footer(toc_offset: int) -> bytes:
    """The 51-byte footer: an empty gzip member whose FEXTRA subfield ``SG`` is ``%016x`` of the TOC offset + STARGZ."""
    subfield = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(subfield)) + subfield
    header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + struct.pack("<H", len(extra)) + extra
    empty_stored_block = b"\x01\x00\x00\xff\xff"  # final, stored, length 0 (Go writes it at NoCompression)
    footer = header + empty_stored_block + struct.pack("<II", 0, 0)  # CRC32 and ISIZE of nothing
    assert len(footer) == ESTARGZ_FOOTER_SIZE
    return footer


def zstd_skippable(payload: bytes) -> bytes:
    """A zstd skippable frame (magic 0x184D2A50, little-endian length) around ``payload``."""
    return ZSTD_SKIPPABLE_MAGIC + struct.pack("<I", len(payload)) + payload


def zstdchunked_footer(toc_offset: int, compressed_len: int, raw_len: int) -> bytes:
    """The 40-byte zstd:chunked footer (stargz-snapshotter flavour): offset, sizes, type, ``GnUlInUx``."""
    return struct.pack("<QQQQ", toc_offset, compressed_len, raw_len, ZSTDCHUNKED_MANIFEST_TYPE) + \
        ZSTDCHUNKED_FOOTER_MAGIC


class MemberPipeline:
    """Ordered, bounded member compression into ``dst``; hashes both sides as the bytes pass.

    ``diff`` is sha256 of every uncompressed byte (the diff_id), ``blob`` sha256 of every byte written.
    ``offsets[i]`` is the compressed offset of member ``i`` once it has been written.
    """

    def __init__(self, dst: BinaryIO, codec: GzipCodec | ZstdCodec, workers: int = 1):
        self._dst = dst
        self._codec = codec
        self.diff = hashlib.sha256()
        self.blob = hashlib.sha256()
        self.uncompressed_size = 0
        self.written = 0
        self.offsets: list[int] = []
        self._members = 0
        self._open = False
        self._pieces: list[bytes] = []
        self.member_size = 0  # uncompressed bytes in the open member
        self._pool = (concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="estargz-z")
                      if workers > 1 else None)
        self._inflight: collections.deque[concurrent.futures.Future] = collections.deque()
        self._limit = 2 * workers  # batches in flight: memory stays at a few chunks per worker
        self._batch: list[list[bytes]] = []
        self._batch_bytes = 0

    def start_member(self) -> int:
        """Close the open member (if any) and open the next; returns the new member's index."""
        self._submit()
        self._open = True
        self._members += 1
        return self._members - 1

    def write(self, data: bytes) -> None:
        """Append uncompressed bytes to the open member."""
        if not self._open:
            raise RuntimeError("write before start_member")
        if data:
            self.diff.update(data)
            self.uncompressed_size += len(data)
            self._pieces.append(data)
            self.member_size += len(data)

    def flush(self) -> None:
        """Close the open member and wait until every member is written; ``offsets`` is then complete."""
        self._submit()
        self._dispatch()
        while self._inflight:
            self._emit_all(self._inflight.popleft().result())

    def stream_member(self, pieces: Iterable[bytes], size: int) -> int:
        """Write one member of ``size`` uncompressed bytes, compressing ``pieces`` as they come (the TOC);
        only between members. Returns the member's index."""
        if self._open or self._inflight or self._batch:
            raise RuntimeError("stream_member while members are pending")
        self.offsets.append(self.written)
        self._members += 1
        compressor = self._codec.streamer(size)
        seen = 0
        for piece in pieces:
            self.diff.update(piece)
            seen += len(piece)
            out = compressor.compress(piece)
            if out:
                self._write(out)
        self._write(compressor.flush())
        if seen != size:
            raise RuntimeError(f"stream_member: {seen} bytes, announced {size}")
        self.uncompressed_size += seen
        return self._members - 1

    def write_raw(self, data: bytes) -> None:
        """Bytes that bypass compression (footers, skippable frames); only between members."""
        if self._open or self._inflight or self._batch:
            raise RuntimeError("write_raw while members are pending")
        self._write(data)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _submit(self) -> None:
        if not self._open:
            return
        pieces, size = self._pieces, self.member_size
        self._pieces, self.member_size, self._open = [], 0, False
        if self._pool is None:
            self._emit(self._codec.compress(pieces) if pieces else b"")
            return
        # Members are handed to the pool in batches of at least BATCH_BYTES: most files of a layer are
        # small, and one thread hand-off per small member costs more than compressing it.
        self._batch.append(pieces)
        self._batch_bytes += size
        if self._batch_bytes >= BATCH_BYTES:
            self._dispatch()

    def _dispatch(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._inflight.append(self._pool.submit(self._compress_batch, batch))
        while len(self._inflight) > self._limit:
            self._emit_all(self._inflight.popleft().result())

    def _compress_batch(self, batch: list[list[bytes]]) -> list[bytes]:
        return [self._codec.compress(pieces) if pieces else b"" for pieces in batch]

    def _emit_all(self, members: list[bytes]) -> None:
        for data in members:
            self._emit(data)

    def _emit(self, data: bytes) -> None:
        self.offsets.append(self.written)
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        n = self._dst.write(data)
        if n is not None and n < len(data):  # a raw file object may take only part of a buffer
            view = memoryview(data)[n:]
            while view:
                n = self._dst.write(view)
                view = view[len(view) if n is None else n:]
        self.blob.update(data)
        self.written += len(data)
