"""Big tars that are never held in memory, and the stream and sink objects tests read and write them with.

Tests import these through :mod:`tests.support.tars`.
"""
from __future__ import annotations

import hashlib
import io
import random
from typing import Iterable, Iterator

from tests.support.tar_entries import BLOCK, END_OF_ARCHIVE, PAX, directory, reg
from tests.support.tar_hostile import raw_header


def generated_layer(total_size: int, *, file_size: int = 10 << 20, small_files: int = 8, seed: int = 1) -> Iterator[bytes]:
    """Yield an uncompressed tar of about ``total_size`` bytes piece by piece (at most ~1 MiB at a time).

    Big files (``file_size``, spanning several default 4 MiB chunks) alternate with groups of small ones;
    content repeats a 1 MiB random pattern at shifting offsets (incompressible to deflate's 32 KiB window).
    """
    rng = random.Random(seed)
    pattern = rng.randbytes(1 << 20) * 2
    written, n = 0, 0
    yield directory("data").to_bytes()
    while written < total_size:
        size = min(file_size, max(total_size - written, 1))
        header = reg(f"data/big-{n:05d}").tarinfo()
        header.size = size
        yield header.tobuf(PAX, "utf-8", "surrogateescape")
        left, shift = size, (n * 7919) % (1 << 20)
        while left:
            piece = min(left, 1 << 20)
            yield pattern[shift:shift + piece]
            left -= piece
        yield bytes(-size % BLOCK)
        written += size
        for i in range(small_files):
            yield reg(f"data/small-{n:05d}-{i}", pattern[i * 997:i * 997 + 3000 + i]).to_bytes()
        n += 1
    yield END_OF_ARCHIVE


def many_files_layer(count: int, *, max_size: int = 300) -> Iterator[bytes]:
    """Yield a tar of ``count`` small files (sizes 0..max_size-1) in 100 directories, cheaply (hand-made
    ustar headers): for entry-count scaling tests."""
    for d in range(100):
        yield raw_header(f"d{d:02d}/", b"5", mode=0o755)
    for i in range(count):
        size = i % max_size
        yield raw_header(f"d{i % 100:02d}/f{i:07d}", b"0", size) + b"x" * size + bytes(-size % BLOCK)
    yield END_OF_ARCHIVE


class IterStream(io.RawIOBase):
    """A read-only, non-seekable file object over an iterator of byte strings."""

    def __init__(self, pieces: Iterable[bytes]):
        self._it = iter(pieces)
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._left:
            try:
                self._left = memoryview(next(self._it))
            except StopIteration:
                return 0
        n = min(len(buf), len(self._left))
        buf[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def stream(data: bytes, piece: int = 4096) -> IterStream:
    """``data`` as a non-seekable stream that returns at most ``piece`` bytes per read (like a pipe)."""
    return IterStream(data[i:i + piece] for i in range(0, len(data), piece))


class HashingSink:
    """A write-only destination that keeps only the size and sha256 of what it was given."""

    def __init__(self) -> None:
        self.size = 0
        self._h = hashlib.sha256()

    def write(self, data) -> int:
        self._h.update(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()
