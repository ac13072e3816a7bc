"""Random access into a gzip layer, the way nydus's zran does it (OCI-ref images, ``oci_ref: true``).

    inflater = ZranInflater(gzip_stream)        # a readable stream of the layer's tar, inflated once
    zran = ZranIndex(inflater)                  # checkpoints chosen per file chunk, as nydus chooses them
    zran.begin(tar_pos, chunk_size)             # around each file chunk's read: begin at its tar offset,
    where = zran.end(tar_pos_after)             # ... end after it: a ZranChunk (context, offset, size)
    data = decode_context(ctx, gzip_bytes_of_ctx)           # any checkpoint's slice, later (``zranctx``)

Sources (dragonflyoss/nydus; /work/shared/NYDUS.md section 4): the inflater is ``ZranReader`` (gzip-mode
inflate with ``Z_BLOCK``, 64 KiB input reads, the state at every deflate block end remembered with its window:
utils/src/compress/zlib_random.rs:462-640); the checkpoint choice is ``ZranGenerator::begin_read``/``end_read``
(zlib_random.rs:231-327) with storage/src/meta/zran.rs:113-128's limits; a checkpoint is a
``ZranInflateContext`` (40 bytes, zran.rs:17-37); decoding is ``ZranDecoder::uncompress`` (zlib_random.rs:99-181).

The tar parser reads ahead of the file data it hands out, so positions are not the inflater's *current*
ones (nydus's tar crate reads exactly): every block end is kept until the parser has passed it, and the
compressed position of an uncompressed one is the input consumed by the inflate call that produced it --
enough input to decode that far, which is what a checkpoint's ``in_len`` must be.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import hashlib
from typing import BinaryIO

from acceleration_sdk.zlib_raw import Z_BLOCK, Z_BUF_ERROR, Z_OK, Z_STREAM_END, WINSIZE, backend

from .layout import RafsError
from .zranctx import MAX_OUT, Context

READ_SIZE = 64 << 10                       # ZRAN_READER_BUF_SIZE (zlib_random.rs:26)
OUT_SIZE = 256 << 10                       # inflate output per call (a block end stops a call earlier)
DEFAULT_CHUNK = 1 << 20                    # RAFS_DEFAULT_CHUNK_SIZE: the limits derive from it, not from --chunk-size
MIN_COMP, MAX_COMP, MAX_UNCOMP = DEFAULT_CHUNK // 2, DEFAULT_CHUNK, 2 * DEFAULT_CHUNK   # zran.rs:113-128
GZIP_MAGIC = b"\x1f\x8b\x08"


@dataclasses.dataclass(slots=True)
class _Block:
    in_pos: int
    out_pos: int
    bits: int
    byte: int
    window: bytes


class ZranInflater:
    """The inflated bytes of a gzip stream (``read``), with the inflate state at every deflate block end.

    Also the sha256 and size of the compressed bytes read: the blob id and compressed size of a zran blob.
    Concatenated members are followed (inflate reset at each member end); zero bytes after the last member
    are allowed (registries pad some layers), anything else there is refused.

    Each inflate call's results (bytes, block ends, member starts) are taken together, so what the checkpoint
    choice sees depends on positions only, never on how far ahead of the tar parser the inflater ran. (An
    inflate thread ahead of the parser was tried: with zlib-ng it cost more in queue hand-offs than it saved.)
    """

    def __init__(self, raw: BinaryIO, hashing: bool = True, inflate: str = "auto"):
        # ``inflate``: the library (acceleration_sdk.zlib_raw.backend), zlib-ng when installed; both give the
        # same block ends, pending bits and windows (they are the deflate stream's), hence the same blob
        self._raw, self._z = raw, backend(inflate)
        self._hashing = hashing    # off when the caller knows (and verifies) the layer digest
        self._strm = self._z.stream()
        self._inbuf = ctypes.create_string_buffer(READ_SIZE)
        self._outbuf = ctypes.create_string_buffer(OUT_SIZE)
        self._dict = ctypes.create_string_buffer(WINSIZE)
        if self._z.init(ctypes.byref(self._strm), 31) != Z_OK:
            raise MemoryError("zlib inflateInit2 failed")
        self._open = True
        self.sha = hashlib.sha256()
        self.size = 0              # compressed bytes read (final once read() returned b"")
        # the inflating side
        self._total_in = self._total_out = 0
        self._chunk = b""          # the current input piece (for the byte before a checkpoint)
        self._chunk_start = 0
        self._last_byte = 0
        self._member_end = False
        self._done = False
        # the reading side: what arrived with the bytes read so far
        self.blocks: collections.deque[_Block] = collections.deque()
        self.marks: collections.deque[tuple[int, int]] = collections.deque()   # (total_out, total_in) per call
        self.switches: collections.deque[int] = collections.deque()   # output positions where a member starts
        self._pending: collections.deque[bytes] = collections.deque()
        self._eof = False

    # ------------------------------------------------------------------ the inflating side
    def _feed(self) -> bool:
        data = self._raw.read(READ_SIZE)
        if not data:
            return False
        if self._chunk:
            self._last_byte = self._chunk[-1]
        self._chunk, self._chunk_start = bytes(data), self._total_in
        if self._hashing:
            self.sha.update(self._chunk)
        self.size += len(self._chunk)
        ctypes.memmove(self._inbuf, self._chunk, len(self._chunk))
        self._strm.next_in, self._strm.avail_in = ctypes.addressof(self._inbuf), len(self._chunk)
        return True

    def _more(self) -> bytes:
        data = self._raw.read(READ_SIZE)
        if data:
            if self._hashing:
                self.sha.update(data)
            self.size += len(data)
        return data or b""

    def _trailing(self, items: list) -> None:
        """After a member: another member, or zero padding to the end, or an error."""
        s = self._strm
        rest = ctypes.string_at(s.next_in, s.avail_in) if s.avail_in else b""
        while len(rest) < len(GZIP_MAGIC) and (more := self._more()):
            rest += more
        if rest.startswith(GZIP_MAGIC):
            self._chunk, self._chunk_start = rest, self._total_in
            if len(rest) > len(self._inbuf):
                self._inbuf = ctypes.create_string_buffer(len(rest))
            ctypes.memmove(self._inbuf, rest, len(rest))
            s.next_in, s.avail_in = ctypes.addressof(self._inbuf), len(rest)
            if self._z.reset(ctypes.byref(s)) != Z_OK:
                raise RafsError("zlib inflateReset failed")
            items.append(("switch", self._total_out))
            return
        while rest:
            if rest.strip(b"\0"):
                raise RafsError(f"the gzip layer has non-gzip data after its last member (at byte {self._total_in})")
            rest = self._more()
        s.avail_in = 0
        self._done = True
        items.append(("end",))

    def _step(self) -> list:
        """One inflate call (to a block end, a member end or a full buffer): what it produced, as items."""
        s, items = self._strm, []
        if self._member_end:
            self._member_end = False
            self._trailing(items)
            if self._done:
                return items
        if s.avail_in == 0 and not self._feed():
            raise RafsError(f"the gzip layer is truncated: it ends at byte {self._total_in} inside a member")
        s.next_out, s.avail_out = ctypes.addressof(self._outbuf), OUT_SIZE
        before_in = s.avail_in
        ret = self._z.inflate(ctypes.byref(s), Z_BLOCK)
        used, made = before_in - s.avail_in, OUT_SIZE - s.avail_out
        self._total_in += used
        self._total_out += made
        if ret == Z_STREAM_END:
            self._member_end = True
        elif ret not in (Z_OK, Z_BUF_ERROR):
            msg = s.msg.decode("utf-8", "replace") if s.msg else f"zlib error {ret}"
            raise RafsError(f"the layer is not a valid gzip stream at byte {self._total_in}: {msg}")
        elif s.data_type & 0x80:   # a block end (or the end of a member's header): a possible checkpoint
            bits = s.data_type & 7
            byte = 0
            if bits:
                at = self._total_in - 1 - self._chunk_start
                byte = self._chunk[at] if at >= 0 else self._last_byte
            size = ctypes.c_uint32(0)
            if self._z.get_dictionary(ctypes.byref(s), self._dict, ctypes.byref(size)) != Z_OK:
                raise RafsError("zlib inflateGetDictionary failed")
            items.append(("block", _Block(self._total_in, self._total_out, bits, byte,
                                          ctypes.string_at(self._dict, size.value))))
        if made:   # the bytes go last: whoever reads them has everything known about them
            items.append(("data", ctypes.string_at(self._outbuf, made), self._total_out, self._total_in))
        return items

    # ------------------------------------------------------------------ the reading side
    def _take(self) -> None:
        for item in self._step():
            kind = item[0]
            if kind == "data":
                self._pending.append(item[1])
                self.marks.append((item[2], item[3]))
            elif kind == "block":
                self.blocks.append(item[1])
            elif kind == "switch":
                self.switches.append(item[1])
            else:   # "end"
                self._eof = True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` inflated bytes (fewer is fine: readers of pipes loop); ``b""`` only at the end."""
        while not self._pending and not self._eof:
            self._take()
        if not self._pending:
            return b""
        if n < 0:
            while not self._eof:
                self._take()
            out = b"".join(self._pending)
            self._pending.clear()
            return out
        piece = self._pending[0]
        if len(piece) <= n:
            return self._pending.popleft()
        self._pending[0] = piece[n:]
        return piece[:n]

    def in_at(self, out_pos: int) -> int:
        """Compressed bytes that suffice to inflate the first ``out_pos`` bytes (marks before it are dropped)."""
        while len(self.marks) > 1 and self.marks[1][0] <= out_pos:
            self.marks.popleft()
        for total_out, total_in in self.marks:
            if total_out >= out_pos:
                return total_in
        raise RafsError(f"uncompressed byte {out_pos} has not been inflated yet")

    def block_at(self, out_pos: int) -> _Block:
        """The last block end at or before ``out_pos`` (earlier ones are dropped: positions only grow)."""
        while len(self.blocks) > 1 and self.blocks[1].out_pos <= out_pos:
            self.blocks.popleft()
        if not self.blocks or self.blocks[0].out_pos > out_pos:
            raise RafsError(f"no gzip block boundary before uncompressed byte {out_pos}")
        return self.blocks[0]

    def switched_by(self, out_pos: int) -> bool:
        """Whether a gzip member started at or before ``out_pos`` since the last call."""
        found = False
        while self.switches and self.switches[0] <= out_pos:
            self.switches.popleft()
            found = True
        return found

    def close(self) -> None:
        if self._open:
            self._open = False
            self._z.end(ctypes.byref(self._strm))

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


@dataclasses.dataclass(frozen=True, slots=True)
class ZranChunk:
    """Where one chunk's bytes are: ``size`` bytes at ``offset`` in checkpoint ``index``'s slice."""

    index: int
    offset: int
    size: int
    in_pos: int                # compressed position when the chunk's read began (the chunk table's offset)
    in_len: int


class ZranIndex:
    """Chooses checkpoints for file chunks as nydus's ZranGenerator does (zlib_random.rs:231-327)."""

    def __init__(self, inflater: ZranInflater):
        self.inflater = inflater
        self.contexts: list[Context] = []
        self._block_start = -1
        self._start = self._start_in = 0
        self._last_end: tuple[int, int] | None = None   # (context, position) of the last chunk's end

    def _new_context(self, block: _Block) -> int:
        self.contexts.append(Context(block.in_pos, block.out_pos, block.bits, block.byte, block.window))
        self._block_start = block.in_pos
        return len(self.contexts) - 1

    def begin(self, pos: int, chunk_size: int) -> None:
        """A chunk's data starts at uncompressed ``pos`` (the tar offset); ``chunk_size`` bytes will follow."""
        z = self.inflater
        self.settle()
        block = z.block_at(pos)
        in_pos = z.in_at(pos)
        if self.contexts:
            ctx = self.contexts[-1]
            comp, uncomp = in_pos - ctx.in_offset, pos - ctx.out_offset
            first = block.in_pos == self._block_start     # no block end passed since: no new checkpoint yet
            switched = z.switched_by(pos)
            if switched and not first:
                self._new_context(block)
            elif not first and (comp >= MAX_COMP // 2 or uncomp + chunk_size >= MAX_UNCOMP):
                self._new_context(block)
            elif not first and comp > 2 * ctx.in_len and ctx.in_len > MIN_COMP:
                self._new_context(block)   # a long gap since the last chunk of this slice
        else:
            self._new_context(block)
            z.switched_by(pos)
        self._start, self._start_in = pos, in_pos

    def end(self, pos: int) -> ZranChunk:
        """The chunk read since :meth:`begin` ends at uncompressed ``pos``."""
        index = len(self.contexts) - 1
        ctx = self.contexts[index]
        in_pos = self.inflater.in_at(pos)
        ctx.out_len, ctx.in_len = pos - ctx.out_offset, in_pos - ctx.in_offset
        if ctx.out_len > MAX_OUT:
            raise RafsError(f"a gzip slice of {ctx.out_len} bytes without a deflate block end: nydusd reads at "
                            f"most {MAX_OUT} bytes per checkpoint")
        self._last_end = (index, pos)
        return ZranChunk(index, self._start - ctx.out_offset, pos - self._start, self._start_in,
                         in_pos - self._start_in)

    def settle(self) -> None:
        """A slice that ends exactly where a gzip member ends reaches one byte into the next member: nydusd's
        decoder always goes on past a member's end (trailer, next header) and fails on a slice that stops
        there (zlib_random.rs:135-172). Called before the next chunk and once the layer is read."""
        if self._last_end is None:
            return
        index, end = self._last_end
        self._last_end = None
        z = self.inflater
        if end not in z.switches:
            return
        try:
            in_pos = z.in_at(end + 1)
        except RafsError:   # the stream ends there: nothing follows to reach into
            return
        ctx = self.contexts[index]
        ctx.out_len = max(ctx.out_len, end + 1 - ctx.out_offset)
        ctx.in_len = max(ctx.in_len, in_pos - ctx.in_offset)
