"""Chunk compressors and digesters, as nydus-image applies them to each chunk.

- compressors (utils/src/compress/mod.rs:22-28, 100-145): ``none``; ``lz4_block`` = a raw LZ4 block with no size
  prefix and no frame; ``zstd`` = one zstd frame, level 3, content size included. A chunk whose compressed form
  is not smaller is stored raw (the chunk is then "not compressed": compressed size == uncompressed size).
- digesters: ``blake3`` (nydus-image's default) or ``sha256`` of the uncompressed chunk; CRC-32C (Castagnoli)
  of the uncompressed chunk is recorded too (builder/src/core/node.rs:492-497, context.rs:1438).
"""
from __future__ import annotations

import hashlib
import threading

import blake3
import crc32c as _crc32c
import lz4.block
import zstandard

from .layout import RafsError

COMPRESSORS = ("zstd", "lz4_block", "none")
DIGESTERS = ("blake3", "sha256")
ZSTD_LEVEL = 3  # zstd::bulk::compress level in utils/src/compress/mod.rs:249-251


class Compressor:
    """Compresses one chunk at a time; keeps one zstd context per thread (a context is not thread-safe, and
    reusing it is cheaper than one per chunk)."""

    def __init__(self, name: str):
        if name not in COMPRESSORS:
            raise RafsError(f"unsupported compressor {name!r}: use one of {', '.join(COMPRESSORS)}")
        self.name = name
        self._local = threading.local()

    def compress(self, data: bytes) -> bytes:
        """The bytes to store for ``data``: compressed, or ``data`` itself when compression does not help."""
        if self.name == "none" or not data:
            return data
        if self.name == "zstd":
            ctx = getattr(self._local, "zstd", None)
            if ctx is None:
                ctx = self._local.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
            out = ctx.compress(data)
        else:
            out = lz4.block.compress(data, store_size=False)
        return out if len(out) < len(data) else data


def decompress(name: str, data: bytes, uncompressed_size: int) -> bytes:
    """Undo :meth:`Compressor.compress` for a chunk known to be compressed; errors become RafsError."""
    try:
        if name == "zstd":
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=uncompressed_size)
        elif name == "lz4_block":
            out = lz4.block.decompress(data, uncompressed_size=uncompressed_size)
        elif name == "none":
            out = data
        else:
            raise RafsError(f"unsupported compressor {name!r}")
    except (zstandard.ZstdError, lz4.block.LZ4BlockError) as exc:
        raise RafsError(f"a {name} chunk does not decompress: {exc}") from exc
    if len(out) != uncompressed_size:
        raise RafsError(f"a {name} chunk decompressed to {len(out)} bytes, expected {uncompressed_size}")
    return out


def digest(name: str, data: bytes) -> bytes:
    if name == "blake3":
        return blake3.blake3(data).digest()
    if name == "sha256":
        return hashlib.sha256(data).digest()
    raise RafsError(f"unsupported digester {name!r}: use one of {', '.join(DIGESTERS)}")


def crc32c(data: bytes) -> int:
    return _crc32c.crc32c(data)
