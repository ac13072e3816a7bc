"""One pass over a gzip stream: the inflated bytes, plus SOCI's checkpoints and span digests.

SOCI needs inflate state at deflate block ends (the bit offset and the 32 KiB window before it), which
Python's ``zlib`` module does not expose; zlib itself does (``inflate(Z_BLOCK)``, ``data_type``), so zlib is
driven through ctypes. The rule is upstream's ``generate_zinfo_from_fp`` (soci-snapshotter
ztoc/compression/gzip_zinfo.c:204-300, zran.c's algorithm): a checkpoint at the end of the gzip header and
then at the first block end past ``span_size`` of output since the last one, never after the last block,
inflate reset on concatenated members; the window is the last 32 KiB of output (zeros before its start).

Where a block end happens, how many bits of its last byte are unused and what the window holds are
properties of the deflate stream, not of how it is fed: they do not depend on upstream's 16 KiB reads, its
32 KiB output steps or on which zlib decodes it. So, for speed, this loop differs from upstream's in how
it gets there, not in what it finds:

* zlib-ng's native API (the ``zlib-ng`` wheel's own library, inflate ~1.8x zlib's speed here) when present,
  else the system zlib: the same ``Z_BLOCK`` / ``data_type`` contract (zlib-ng's inflate is zlib's);
* ``Z_BLOCK`` (one call per block) only where a checkpoint can fall: until the first one, and once
  ``span_size`` of output has passed since the last one. Before that, plain inflate calls are capped so
  output stops exactly at ``span_size`` past the last checkpoint: no block end they cross can qualify;
* 256 KiB reads and a 1 MiB output buffer; inflated bytes are copied out only when the reader asks for
  them (``read``): ``skip`` (file contents, which the TOC does not need) copies nothing.
"""
from __future__ import annotations

import ctypes
import hashlib
import struct
from typing import BinaryIO

from acceleration_sdk.zlib_raw import Z_BLOCK, Z_NEED_DICT, Z_OK, Z_STREAM_END, ZStream as _ZStream, zlib_lib

CHUNK = 1 << 18  # compressed bytes per read (upstream reads 16 KiB; the result does not depend on it)
OUTSIZE = 1 << 20  # the output buffer; its last 32 KiB before the write position are the window
WINSIZE = 32768  # the checkpoint window (gzip_zinfo.h:62)
_Z_NO_FLUSH, _Z_BUF_ERROR = 0, -5


class GzipIndexError(ValueError):
    """The stream is not a whole, valid gzip stream (bad header, corrupt data, truncated, trailing garbage)."""


class _Inflate:
    """inflateInit2 / inflate / inflateReset2 / inflateEnd of one library, its stream structure and name."""

    def __init__(self, name: str, stream, init, inflate, reset, end):
        self.name, self.stream = name, stream
        self.init, self.inflate, self.reset, self.end = init, inflate, reset, end


class _ZngStream(ctypes.Structure):
    """zlib-ng's ``zng_stream``: ``z_stream`` with a uint32 ``adler`` (104 bytes, not 112 on LP64)."""
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint32), ("total_in", ctypes.c_size_t),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint32), ("total_out", ctypes.c_size_t),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_uint32), ("reserved", ctypes.c_ulong)]


def _zlib_ng() -> _Inflate | None:
    """zlib-ng's native ``zng_*`` functions, exported by the ``zlib-ng`` wheel's extension module.

    ``zng_inflateInit2_`` checks the structure size we pass against its own (a layout change fails there).
    """
    try:
        import zlib_ng.zlib_ng as ext

        lib = ctypes.CDLL(ext.__file__)
        lib.zlibng_version.restype = ctypes.c_char_p
        ver = lib.zlibng_version()
        ptr = ctypes.POINTER(_ZngStream)
        lib.zng_inflateInit2_.argtypes = [ptr, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.zng_inflate.argtypes = [ptr, ctypes.c_int]
        lib.zng_inflateReset2.argtypes = [ptr, ctypes.c_int]
        lib.zng_inflateEnd.argtypes = [ptr]
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    return _Inflate("zlib-ng " + ver.decode(), _ZngStream,
                    lambda strm, wbits: lib.zng_inflateInit2_(strm, wbits, ver, ctypes.sizeof(_ZngStream)),
                    lib.zng_inflate, lib.zng_inflateReset2, lib.zng_inflateEnd)


def _zlib() -> _Inflate:
    lib = zlib_lib()
    ver = lib.zlibVersion()
    return _Inflate("zlib " + ver.decode(), _ZStream,
                    lambda strm, wbits: lib.inflateInit2_(strm, wbits, ver, ctypes.sizeof(_ZStream)),
                    lib.inflate, lib.inflateReset2, lib.inflateEnd)


_BACKENDS: dict[str, _Inflate | None] = {}


def backend(name: str = "auto") -> _Inflate:
    """``"zlib-ng"``, ``"zlib"`` or ``"auto"`` (zlib-ng when installed); loaded once."""
    if name not in _BACKENDS:
        if name == "zlib":
            _BACKENDS[name] = _zlib()
        elif name == "zlib-ng":
            _BACKENDS[name] = _zlib_ng()
        else:
            _BACKENDS[name] = backend("zlib-ng") if backend("zlib-ng") is not None else backend("zlib")
    found = _BACKENDS[name]
    if found is None:
        raise RuntimeError(f"inflate backend {name!r} is not available")
    return found


def available(name: str) -> bool:
    try:
        backend(name)
    except RuntimeError:
        return False
    return True


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

    Read it to its end (``read``/``skip``, then ``drain``); then ``zinfo()`` and ``span_digests`` describe
    the whole stream. Only the windows of the checkpoints are kept (32 KiB each, one per ``span_size``).
    """

    def __init__(self, raw: BinaryIO, span_size: int, inflate: str = "auto"):
        self._raw, self._span = raw, span_size
        self._z = backend(inflate)
        self._strm = self._z.stream()
        self._sref = ctypes.byref(self._strm)
        self._out = ctypes.create_string_buffer(OUTSIZE)
        self._obase = ctypes.addressof(self._out)
        self._input = ctypes.create_string_buffer(CHUNK)
        self._iaddr = ctypes.addressof(self._input)
        if self._z.init(self._sref, 47) != Z_OK:
            raise MemoryError(f"{self._z.name}: inflateInit2 failed")
        self._open = True
        self.totin = self.totout = self._last = 0
        self.checkpoints: list[Checkpoint] = []
        self.span_digests: list[str] = []
        self._hash = None  # the current span's sha256 (None before checkpoint 0)
        self._hashed = 0  # compressed offset up to which bytes went into a hash (or were skipped)
        self._chunk = b""  # the current input chunk, and where it starts in the compressed stream
        self._chunk_off = 0
        self._tail = b""  # the byte before the current chunk: a span may start there (bits != 0)
        self._wpos = 0  # where inflate writes next in the output buffer
        self._rpos = 0  # the first inflated byte in the buffer not yet read or skipped ([rpos, wpos))
        self._discard = 0  # inflated bytes still to skip as they come
        self._eof = False
        self._member_end = False

    # ------------------------------------------------------------------ the compressed side
    def _compressed(self, a: int, b: int) -> list:
        """Bytes [a, b) of the compressed stream, in pieces; only the current chunk and the byte before it
        are at hand."""
        off = self._chunk_off
        if a < off - len(self._tail) or b > off + len(self._chunk):
            raise AssertionError(f"compressed bytes [{a},{b}) are not at hand")
        if a >= off:
            return [memoryview(self._chunk)[a - off:b - off]]
        return [self._tail[a - off + 1:b - off + 1], memoryview(self._chunk)[:max(b - off, 0)]]

    def _hash_upto(self, end: int) -> None:
        if self._hash is not None and end > self._hashed:
            for piece in self._compressed(self._hashed, end):
                self._hash.update(piece)
        self._hashed = max(self._hashed, end)

    def _window(self) -> bytes:
        """The last 32 KiB of output (the buffer wraps at OUTSIZE; zeros before the stream's start)."""
        w, base = self._wpos, self._obase
        if w >= WINSIZE:
            return ctypes.string_at(base + w - WINSIZE, WINSIZE)
        return ctypes.string_at(base + OUTSIZE - (WINSIZE - w), WINSIZE - w) + ctypes.string_at(base, w)

    def _add_checkpoint(self, bits: int) -> None:
        cp = Checkpoint(self.totin, self.totout, bits, self._window())
        # upstream's span i is [start(i), in(i+1)): when bits of the byte before ``in`` are still unread, that
        # byte ends one span and begins the next (zinfo_builder.go getPerSpanDigests, gzip_zinfo.go:155-169)
        if self._hash is not None:
            self._hash_upto(cp.inp)
            self.span_digests.append("sha256:" + self._hash.hexdigest())
        self._hashed = cp.inp
        self._hash = hashlib.sha256()
        for piece in self._compressed(cp.start, cp.inp):
            self._hash.update(piece)
        self.checkpoints.append(cp)
        self._last = self.totout

    def _next_chunk(self) -> bool:
        self._hash_upto(self._chunk_off + len(self._chunk) - 1)  # all but the last byte (see _tail)
        if self._chunk:
            self._tail = self._chunk[-1:]
        self._chunk_off += len(self._chunk)
        data = self._raw.read(CHUNK)
        self._chunk = data if type(data) is bytes else bytes(data or b"")
        if not self._chunk:
            return False
        ctypes.memmove(self._iaddr, self._chunk, len(self._chunk))
        self._strm.next_in = self._iaddr
        self._strm.avail_in = len(self._chunk)
        return True

    # ------------------------------------------------------------------ inflating
    def _advance(self) -> None:
        """One inflate call into the free part of the buffer (only called when everything in it was read)."""
        s = self._strm
        if self._member_end:
            # upstream: another member follows iff input remains (ungetc(getc(in))); trailing garbage
            # then fails as a bad header, like gzip_zinfo.c:257-268
            if s.avail_in == 0 and not self._next_chunk():
                self._done()
                return
            if self._z.reset(self._sref, 47) != Z_OK:
                raise GzipIndexError(f"{self._z.name}: inflateReset2 failed")
            self._member_end = False
        if s.avail_in == 0 and not self._next_chunk():
            raise GzipIndexError(f"truncated gzip stream: it ends at byte {self._chunk_off} before the end of "
                                 "the compressed data")
        if self._wpos == OUTSIZE:
            self._wpos = self._rpos = 0
        start = self._wpos
        room = OUTSIZE - start
        to_span = self._last + self._span - self.totout
        if self.totout and to_span > 0:
            # no block end before ``_last + span_size`` of output can be a checkpoint: inflate freely up to it
            flush, room = _Z_NO_FLUSH, min(room, to_span)
        else:
            flush = Z_BLOCK
        s.next_out, s.avail_out = self._obase + start, room
        in_before = s.avail_in
        ret = self._z.inflate(self._sref, flush)
        self.totin += in_before - s.avail_in
        produced = room - s.avail_out
        self.totout += produced
        self._wpos = start + produced
        if self._discard:
            d = min(self._discard, produced)
            self._discard -= d
            self._rpos = start + d
        else:
            self._rpos = start
        if ret == Z_NEED_DICT or (ret < 0 and ret != _Z_BUF_ERROR):  # Z_BUF_ERROR: no progress, not fatal
            msg = s.msg.decode("utf-8", "replace") if s.msg else f"zlib error {ret}"
            raise GzipIndexError(f"not a valid gzip stream at compressed byte {self.totin}: {msg}")
        if ret == Z_STREAM_END:
            self._member_end = True
            return
        if flush == Z_BLOCK:
            dt = s.data_type
            if dt & 128 and not dt & 64 and (self.totout == 0 or self.totout - self._last > self._span):
                self._add_checkpoint(dt & 7)

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
        """Up to ``n`` inflated bytes (fewer only at the end); ``n < 0``: all that is left (tests only)."""
        parts = []
        while n:
            have = self._wpos - self._rpos
            if have:
                take = have if n < 0 else min(have, n)
                parts.append(ctypes.string_at(self._obase + self._rpos, take))
                self._rpos += take
                n -= take if n > 0 else 0
            elif self._eof:
                break
            else:
                self._advance()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip(self, n: int) -> int:
        """Pass over ``n`` inflated bytes without copying them; returns how many there were (< n at the end)."""
        have = self._wpos - self._rpos
        if n <= have:
            self._rpos += n
            return n
        self._rpos = self._wpos
        self._discard = n - have
        while self._discard and not self._eof:
            self._advance()
        left, self._discard = self._discard, 0
        return n - left

    def drain(self) -> None:
        self._rpos = self._wpos
        while not self._eof:
            self._discard = OUTSIZE
            self._advance()
        self._discard = 0
        self._rpos = self._wpos

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
            self._z.end(self._sref)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
