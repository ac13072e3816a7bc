"""One pass over a gzip stream: the inflated bytes, plus SOCI's checkpoints and span digests.

The rule is upstream's ``generate_zinfo_from_fp`` (soci-snapshotter ztoc/compression/gzip_zinfo.c:204-300,
zran.c's algorithm): a checkpoint at the end of the gzip header and then at the first block end past
``span_size`` of output since the last one, never after the last block, inflate reset on concatenated
members; the window is the last 32 KiB of output (zeros before its start).

Where a block ends, how many bits of its last byte are unused and what the window holds are properties of
the deflate stream, not of how it is fed, so this loop differs from upstream's in how it gets there, not in
what it finds:

* zlib-ng's inflate when installed (``acceleration_sdk.zlib_raw.backend``);
* ``Z_BLOCK`` (one call per block) only where a checkpoint can fall: until the first one, and once
  ``span_size`` of output has passed since the last one. Before that, plain inflate calls are capped so
  output stops exactly at ``span_size`` past the last checkpoint: no block end they cross can qualify;
* 256 KiB reads, 1 MiB output segments;
* inflating runs on a thread of its own, ahead of the reader by at most a 4 MiB ring of output segments:
  zlib releases the GIL, so the tar reader's Python work overlaps it; the span digests (sha256, which
  releases the GIL too) are computed on the reader's side, off the inflating thread's path.
  Inflated bytes are copied only where the reader asks for them (``read``): ``skip`` (file contents, which
  the TOC does not need) copies nothing.
"""
from __future__ import annotations

import ctypes
import hashlib
import queue
import struct
import threading
from typing import BinaryIO

from acceleration_sdk.zlib_raw import Z_BLOCK, Z_NEED_DICT, Z_OK, Z_STREAM_END, backend

CHUNK = 1 << 18  # compressed bytes per read (upstream reads 16 KiB; the result does not depend on it)
SEG = 1 << 20  # output segment: the unit handed to the reader
NSEG = 4  # segments in the ring: how far inflating may run ahead of the reader
RING = SEG * NSEG
NCHUNK = 8  # input chunks queued for the span digests at most (a stream of empty blocks makes no output)
WINSIZE = 32768  # the checkpoint window (gzip_zinfo.h:62)
_Z_NO_FLUSH, _Z_BUF_ERROR = 0, -5


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


class _SpanHasher:
    """The span digests: sha256 of each span's compressed bytes, upstream's span i being [start(i), in(i+1)).

    When bits of the byte before ``in`` are still unread, that byte ends one span and begins the next
    (zinfo_builder.go getPerSpanDigests, gzip_zinfo.go:155-169). Fed, in stream order, each input chunk
    and each checkpoint as the inflating thread met them; it runs on the reader's thread, which has time to
    spare, so sha256 is off the inflating thread's path. Holds the current chunk and the byte before it.
    """

    def __init__(self) -> None:
        self.digests: list[str] = []
        self._hash = None  # the current span's sha256 (None before checkpoint 0)
        self._hashed = 0  # compressed offset up to which bytes went into a hash (or were skipped)
        self._chunk = b""  # the current input chunk, and where it starts in the compressed stream
        self._off = 0
        self._tail = b""  # the byte before the current chunk: a span may start there (bits != 0)

    def _pieces(self, a: int, b: int) -> list:
        off = self._off
        if a < off - len(self._tail) or b > off + len(self._chunk):
            raise AssertionError(f"compressed bytes [{a},{b}) are not at hand")
        if a >= off:
            return [memoryview(self._chunk)[a - off:b - off]]
        return [self._tail[a - off + 1:b - off + 1], memoryview(self._chunk)[:max(b - off, 0)]]

    def _upto(self, end: int) -> None:
        if self._hash is not None and end > self._hashed:
            for piece in self._pieces(self._hashed, end):
                self._hash.update(piece)
        self._hashed = max(self._hashed, end)

    def chunk(self, data: bytes) -> None:
        self._upto(self._off + len(self._chunk) - 1)  # all but the last byte (see _tail)
        if self._chunk:
            self._tail = self._chunk[-1:]
        self._off += len(self._chunk)
        self._chunk = data

    def checkpoint(self, inp: int, start: int) -> None:
        if self._hash is not None:
            self._upto(inp)
            self.digests.append("sha256:" + self._hash.hexdigest())
        self._hashed = inp
        self._hash = hashlib.sha256()
        for piece in self._pieces(start, inp):
            self._hash.update(piece)

    def end(self, end: int) -> None:
        self._upto(end)
        self.digests.append("sha256:" + self._hash.hexdigest())
        self._hash = None


class _Stopped(Exception):
    """The reader closed the indexer before the end: the inflating thread leaves."""


class GzipIndexer:
    """A readable stream of the inflated bytes of ``raw``; checkpoints and span digests are built on the way.

    Read it to its end (``read``/``skip``, then ``drain``); then ``zinfo()``, ``span_digests`` and
    ``compressed_size`` describe the whole stream. ``close()`` (also on every error path) stops and joins the
    inflating thread, so ``raw`` is no longer read once it returns. Only the windows of the checkpoints are
    kept (32 KiB each, one per ``span_size``).
    """

    def __init__(self, raw: BinaryIO, span_size: int, inflate: str = "auto"):
        self._raw, self._span = raw, span_size
        self._z = backend(inflate)
        self._strm = self._z.stream()
        self._sref = ctypes.byref(self._strm)
        self._out = ctypes.create_string_buffer(RING)
        self._obase = ctypes.addressof(self._out)
        self._input = ctypes.create_string_buffer(CHUNK)
        self._iaddr = ctypes.addressof(self._input)
        if self._z.init(self._sref, 47) != Z_OK:
            raise MemoryError(f"{self._z}: inflateInit2 failed")
        self.totin = self.totout = self._last = 0
        self.checkpoints: list[Checkpoint] = []
        self._hasher = _SpanHasher()
        self.span_digests = self._hasher.digests
        self.compressed_size = 0
        self._chunk_len = self._chunk_off = 0  # the current input chunk: its size and where it starts
        self._member_end = False
        self._done = False
        # the ring: the thread fills a segment, hands it over (``_ready``), and takes the next one only when
        # the reader gave one back (``_free``): it never writes where the reader has yet to read
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._free = threading.Semaphore(NSEG - 1)
        self._chunks_free = threading.Semaphore(NCHUNK)  # and input chunks, the same way
        self._stop = False
        self._rpos = self._rend = 0  # the reader's unread part of its current segment (ring addresses)
        self._holding = False  # the reader holds a segment (to give back when it moves on)
        self._eof = False  # the reader has seen the end
        self._thread = threading.Thread(target=self._run, name="soci-inflate", daemon=True)
        self._thread.start()

    # ================================================================== the inflating thread
    def _run(self) -> None:
        try:
            seg, pos = 0, 0
            while not self._done:
                if pos == SEG:
                    self._ready.put((seg, SEG))
                    self._free.acquire()
                    if self._stop:
                        raise _Stopped()
                    seg, pos = (seg + 1) % NSEG, 0
                pos += self._advance(seg * SEG + pos, SEG - pos)
            if pos:
                self._ready.put((seg, pos))
            self._ready.put(None)
        except _Stopped:
            pass
        except BaseException as exc:  # the reader raises it where it stands
            self._ready.put(exc)
        finally:
            self._z.end(self._sref)

    def _window(self, w: int) -> bytes:
        """The 32 KiB of output before ring address ``w`` (the ring wraps; zeros before the stream's start)."""
        base = self._obase
        if w >= WINSIZE:
            return ctypes.string_at(base + w - WINSIZE, WINSIZE)
        return ctypes.string_at(base + RING - (WINSIZE - w), WINSIZE - w) + ctypes.string_at(base, w)

    def _add_checkpoint(self, bits: int, w: int) -> None:
        cp = Checkpoint(self.totin, self.totout, bits, self._window(w))
        self._ready.put(("checkpoint", cp.inp, cp.start))  # for the span digests (_SpanHasher)
        self.checkpoints.append(cp)
        self._last = self.totout

    def _next_chunk(self) -> bool:
        if self._stop:
            raise _Stopped()
        self._chunk_off += self._chunk_len
        data = self._raw.read(CHUNK)
        data = data if type(data) is bytes else bytes(data or b"")
        self._chunk_len = len(data)
        if not data:
            return False
        self._chunks_free.acquire()
        if self._stop:
            raise _Stopped()
        self._ready.put(("chunk", data))  # for the span digests (_SpanHasher)
        ctypes.memmove(self._iaddr, data, len(data))
        self._strm.next_in = self._iaddr
        self._strm.avail_in = len(data)
        return True

    def _advance(self, start: int, room: int) -> int:
        """One inflate call into ring addresses [start, start + room); returns the bytes it produced."""
        s = self._strm
        if self._member_end:
            # upstream: another member follows iff input remains (ungetc(getc(in))); trailing garbage
            # then fails as a bad header, like gzip_zinfo.c:257-268
            if s.avail_in == 0 and not self._next_chunk():
                self._finish()
                return 0
            if self._z.reset2(self._sref, 47) != Z_OK:
                raise GzipIndexError(f"{self._z}: inflateReset2 failed")
            self._member_end = False
        if s.avail_in == 0 and not self._next_chunk():
            raise GzipIndexError(f"truncated gzip stream: it ends at byte {self._chunk_off} before the end of "
                                 "the compressed data")
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
        if ret == Z_NEED_DICT or (ret < 0 and ret != _Z_BUF_ERROR):  # Z_BUF_ERROR: no progress, not fatal
            msg = s.msg.decode("utf-8", "replace") if s.msg else f"zlib error {ret}"
            raise GzipIndexError(f"not a valid gzip stream at compressed byte {self.totin}: {msg}")
        if ret == Z_STREAM_END:
            self._member_end = True
        elif flush == Z_BLOCK:
            dt = s.data_type
            if dt & 128 and not dt & 64 and (self.totout == 0 or self.totout - self._last > self._span):
                self._add_checkpoint(dt & 7, start + produced)
        return produced

    def _finish(self) -> None:
        """The input ended right after a member: the last span runs to the end of the stream."""
        if not self.checkpoints:
            raise GzipIndexError("gzip stream without a deflate block")
        self.compressed_size = self._chunk_off
        self._ready.put(("end", self._chunk_off))
        self._done = True

    # ================================================================== the reader's side
    def _next_segment(self) -> bool:
        if self._holding:
            self._holding = False
            self._free.release()
        if self._eof:
            return False
        item = self._ready.get()
        while type(item) is tuple and type(item[0]) is str:  # span digest work, in stream order
            if item[0] == "chunk":
                self._hasher.chunk(item[1])
                self._chunks_free.release()
            elif item[0] == "checkpoint":
                self._hasher.checkpoint(item[1], item[2])
            else:
                self._hasher.end(item[1])
            item = self._ready.get()
        if item is None:
            self._eof = True
            self._thread.join()
            return False
        if isinstance(item, BaseException):
            self._eof = True
            self._thread.join()
            raise item
        seg, n = item
        self._holding = True
        self._rpos, self._rend = seg * SEG, seg * SEG + n
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` inflated bytes (fewer only at the end); ``n < 0``: all that is left (tests only)."""
        at = self._rpos
        if 0 < n <= self._rend - at:  # the usual case: a tar header inside the current segment
            self._rpos = at + n
            return ctypes.string_at(self._obase + at, n)
        parts = []
        while n:
            have = self._rend - self._rpos
            if have:
                take = have if n < 0 else min(have, n)
                parts.append(ctypes.string_at(self._obase + self._rpos, take))
                self._rpos += take
                n -= take if n > 0 else 0
            elif not self._next_segment():
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip(self, n: int) -> int:
        """Pass over ``n`` inflated bytes without copying them; returns how many there were (< n at the end)."""
        left = n
        while left:
            have = self._rend - self._rpos
            if have:
                take = min(have, left)
                self._rpos += take
                left -= take
            elif not self._next_segment():
                break
        return n - left

    def drain(self) -> None:
        """Inflate to the end (raising what the stream holds: corrupt data, trailing garbage, truncation)."""
        self._rpos = self._rend
        while self._next_segment():
            self._rpos = self._rend

    def zinfo(self) -> bytes:
        """The checkpoints as upstream's v2 blob: int32 count, int64 span size, then packed checkpoints."""
        parts = [struct.pack("<iq", len(self.checkpoints), self._span)]
        for cp in self.checkpoints:
            parts.append(struct.pack("<qqB", cp.inp, cp.out, cp.bits))
            parts.append(cp.window)
        return b"".join(parts)

    def close(self) -> None:
        """Stop the inflating thread (if it still runs) and wait for it: ``raw`` is the caller's again."""
        if self._thread.is_alive():
            self._stop = True
            self._free.release(NSEG)  # wherever it waits, for a segment or a chunk slot, it wakes up and
            self._chunks_free.release(NCHUNK)  # sees ``_stop``
            self._thread.join()
