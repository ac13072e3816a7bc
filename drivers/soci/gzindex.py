"""One pass over a gzip stream: the inflated bytes, plus SOCI's checkpoints and span digests.

SOCI needs inflate state at deflate block ends (the bit offset and the 32 KiB window before it), which
Python's ``zlib`` module does not expose; zlib itself does (``inflate(Z_BLOCK)``, ``data_type``), so the
system libz is driven through ctypes. The loop mirrors upstream's ``generate_zinfo_from_fp``
(soci-snapshotter ztoc/compression/gzip_zinfo.c:204-300, zran.c's algorithm): the same 16 KiB input reads,
the same 32 KiB circular output window, a checkpoint at the end of the gzip header and then at the first block
end past ``span_size`` of output since the last one, never after the last block, inflate reset on
concatenated members. Everything that makes a checkpoint is decided by zlib at block ends, so the result is
the same as upstream's for the same bytes.
"""
from __future__ import annotations

import ctypes
import hashlib
import struct
from typing import BinaryIO

from acceleration_sdk.zlib_raw import Z_BLOCK, Z_NEED_DICT, Z_OK, Z_STREAM_END, ZStream as _ZStream, zlib_lib

CHUNK = 1 << 14  # upstream's input read size (gzip_zinfo.c:51)
WINSIZE = 32768  # the checkpoint window (gzip_zinfo.h:62)
_Z_OK, _Z_STREAM_END, _Z_NEED_DICT, _Z_BLOCK = Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BLOCK


class GzipIndexError(ValueError):
    """The stream is not a whole, valid gzip stream (bad header, corrupt data, truncated, trailing garbage)."""


class Checkpoint:
    __slots__ = ("inp", "out", "bits", "window")

    def __init__(self, inp: int, out: int, bits: int, window: bytes):
        self.inp, self.out, self.bits, self.window = inp, out, bits, window

    @property
    def start(self) -> int:
        """Where the span's compressed bytes begin: one byte early when bits of it are still unread."""
        return self.inp - 1 if self.bits else self.inp


class GzipIndexer:
    """A readable stream of the inflated bytes of ``raw``; checkpoints and span digests are built on the way.

    Read it to its end (``drain``), then ``zinfo()`` and ``span_digests`` describe the whole stream. Only the
    windows of the checkpoints are kept (32 KiB each, one per ``span_size`` of output).
    """

    def __init__(self, raw: BinaryIO, span_size: int):
        self._raw, self._span = raw, span_size
        self._lib = zlib_lib()
        self._strm = _ZStream()
        self._window = ctypes.create_string_buffer(WINSIZE)
        self._waddr = ctypes.addressof(self._window)
        self._input = ctypes.create_string_buffer(CHUNK)
        self._iaddr = ctypes.addressof(self._input)
        version = self._lib.zlibVersion()
        if self._lib.inflateInit2_(ctypes.byref(self._strm), 47, version, ctypes.sizeof(_ZStream)) != _Z_OK:
            raise MemoryError("zlib inflateInit2 failed")
        self._open = True
        self.totin = self.totout = self._last = 0
        self.checkpoints: list[Checkpoint] = []
        self.span_digests: list[str] = []
        self._hash = None  # the current span's sha256 (None before checkpoint 0)
        self._hashed = 0  # compressed offset up to which bytes went into a hash (or were skipped)
        self._chunk = b""  # the current input chunk, and where it starts in the compressed stream
        self._chunk_off = 0
        self._tail = b""  # the byte before the current chunk: a span may start there (bits != 0)
        self._pending = bytearray()  # inflated, not yet read
        self._eof = False
        self._member_end = False

    # ------------------------------------------------------------------ the compressed side
    def _compressed(self, a: int, b: int) -> bytes:
        """Bytes [a, b) of the compressed stream; only the current chunk and the byte before it are at hand."""
        lo = self._chunk_off - len(self._tail)
        if a < lo or b > self._chunk_off + len(self._chunk):
            raise AssertionError(f"compressed bytes [{a},{b}) are not at hand")
        if a >= self._chunk_off:
            return memoryview(self._chunk)[a - self._chunk_off:b - self._chunk_off]
        return (self._tail + self._chunk)[a - lo:b - lo]

    def _hash_upto(self, end: int) -> None:
        if self._hash is not None and end > self._hashed:
            self._hash.update(self._compressed(self._hashed, end))
        self._hashed = max(self._hashed, end)

    def _add_checkpoint(self, bits: int, left: int) -> None:
        win = ctypes.string_at(self._waddr, WINSIZE)
        window = win[WINSIZE - left:] + win[:WINSIZE - left] if left else win
        cp = Checkpoint(self.totin, self.totout, bits, window)
        # upstream's span i is [start(i), in(i+1)): when bits of the byte before ``in`` are still unread, that
        # byte ends one span and begins the next (zinfo_builder.go getPerSpanDigests, gzip_zinfo.go:155-169)
        if self._hash is not None:
            self._hash_upto(cp.inp)
            self.span_digests.append("sha256:" + self._hash.hexdigest())
        self._hashed = cp.inp
        self._hash = hashlib.sha256(self._compressed(cp.start, cp.inp))
        self.checkpoints.append(cp)
        self._last = self.totout

    def _next_chunk(self) -> bool:
        self._hash_upto(self._chunk_off + len(self._chunk) - 1)  # all but the last byte (see _tail)
        if self._chunk:
            self._tail = self._chunk[-1:]
        self._chunk_off += len(self._chunk)
        data = self._raw.read(CHUNK)
        self._chunk = bytes(data or b"")
        if not self._chunk:
            return False
        ctypes.memmove(self._iaddr, self._chunk, len(self._chunk))
        self._strm.next_in = self._iaddr
        self._strm.avail_in = len(self._chunk)
        return True

    # ------------------------------------------------------------------ inflating
    def _advance(self) -> None:
        """One inflate call: until out of input, a full window, a block end or a member's end."""
        s, lib = self._strm, self._lib
        if self._member_end:
            # upstream: another member follows iff input remains (ungetc(getc(in))); trailing garbage
            # then fails as a bad header, like gzip_zinfo.c:257-268
            if s.avail_in == 0 and not self._next_chunk():
                self._done()
                return
            if lib.inflateReset2(ctypes.byref(s), 47) != _Z_OK:
                raise GzipIndexError("zlib inflateReset2 failed")
            self._member_end = False
        if s.avail_in == 0 and not self._next_chunk():
            raise GzipIndexError(f"truncated gzip stream: it ends at byte {self._chunk_off} before the end of "
                                 "the compressed data")
        if s.avail_out == 0:
            s.avail_out, s.next_out = WINSIZE, self._waddr
        start = s.next_out - self._waddr
        in_before, out_before = s.avail_in, s.avail_out
        ret = lib.inflate(ctypes.byref(s), _Z_BLOCK)
        self.totin += in_before - s.avail_in
        produced = out_before - s.avail_out
        self.totout += produced
        if produced:
            self._pending += ctypes.string_at(self._waddr + start, produced)
        if ret == _Z_NEED_DICT or (ret < 0 and ret != -5):  # -5 Z_BUF_ERROR: no progress, not fatal
            msg = s.msg.decode("utf-8", "replace") if s.msg else f"zlib error {ret}"
            raise GzipIndexError(f"not a valid gzip stream at compressed byte {self.totin}: {msg}")
        if ret == _Z_STREAM_END:
            self._member_end = True
            return
        dt = s.data_type
        if dt & 128 and not dt & 64 and (self.totout == 0 or self.totout - self._last > self._span):
            self._add_checkpoint(dt & 7, s.avail_out)

    def _done(self) -> None:
        """The input ended right after a member: the last span runs to the end of the stream."""
        end = self._chunk_off
        if self._hash is None:
            raise GzipIndexError("gzip stream without a deflate block")
        self._hash_upto(end)
        self.span_digests.append("sha256:" + self._hash.hexdigest())
        self._hash = None
        self.compressed_size = end
        self._eof = True
        self.close()

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._pending) < n):
            self._advance()
        if n < 0 or n >= len(self._pending):
            out, self._pending = bytes(self._pending), bytearray()
        else:
            out = bytes(self._pending[:n])
            del self._pending[:n]
        return out

    def drain(self) -> None:
        while not self._eof:
            self.read(1 << 20)
        self._pending.clear()

    def zinfo(self) -> bytes:
        """The checkpoints as upstream's v2 blob: int32 count, int64 span size, then packed checkpoints."""
        parts = [struct.pack("<iq", len(self.checkpoints), self._span)]
        for cp in self.checkpoints:
            parts.append(struct.pack("<qqB", cp.inp, cp.out, cp.bits))
            parts.append(cp.window)
        return b"".join(parts)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._lib.inflateEnd(ctypes.byref(self._strm))

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
