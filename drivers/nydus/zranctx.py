"""A zran checkpoint (``ZranInflateContext``), the ZRAN tables of blob.meta, and decoding a checkpoint's slice.

    tables = pack_contexts(contexts)                 # after the chunk-info array: contexts, then their windows
    contexts = unpack_contexts(tables, count)
    data = decode_context(ctx, gzip[ctx.in_offset:ctx.in_offset + ctx.in_len])

Sources (dragonflyoss/nydus; /work/shared/NYDUS.md section 4): the 40-byte context (storage/src/meta/zran.rs:17-37)
and ``ZranContextGenerator::to_vec`` (zran.rs:188-216); the window lookup (storage/src/meta/mod.rs:1076-1100);
``ZranDecoder::uncompress`` (utils/src/compress/zlib_random.rs:99-181), whose loop :func:`decode_context` follows
exactly, so a slice nydusd cannot decode is refused here too. Reading uses the system zlib (``inflatePrime`` and
``inflateSetDictionary`` through ``acceleration_sdk.zlib_raw.backend("zlib")``).
"""
from __future__ import annotations

import ctypes
import dataclasses
import struct

from acceleration_sdk.zlib_raw import Z_BLOCK, Z_OK, Z_STREAM_END, WINSIZE, Inflate, backend

from .layout import RafsError

MAX_OUT = 16 << 20                         # nydusd refuses a slice whose out_len exceeds RAFS_MAX_CHUNK_SIZE
CONTEXT = struct.Struct("<QQQIIIBBBB")     # ZranInflateContext, 40 bytes (zran.rs:17-37)


@dataclasses.dataclass(slots=True)
class Context:
    """One checkpoint: decode ``out_len`` bytes at ``out_offset`` from ``in_len`` gzip bytes at ``in_offset``."""

    in_offset: int
    out_offset: int
    bits: int = 0              # unread bits of the byte before in_offset (data_type & 7)
    byte: int = 0              # that byte
    window: bytes = b""        # the 32 KiB (or fewer, at a member's start) before out_offset
    in_len: int = 0
    out_len: int = 0


def pack_contexts(contexts: list[Context]) -> bytes:
    """The ZRAN tables that follow the chunk-info array: contexts, then their windows back to back
    (ZranContextGenerator::to_vec, zran.rs:188-216)."""
    table, dict_offset = [], 0
    for c in contexts:
        table.append(CONTEXT.pack(c.in_offset, c.out_offset, dict_offset, c.in_len, c.out_len, len(c.window),
                                  c.byte, c.bits, 0, 0))
        dict_offset += len(c.window)
    return b"".join(table + [c.window for c in contexts])   # one copy of the windows


def unpack_contexts(data: bytes, count: int) -> list[Context]:
    """The inverse of :func:`pack_contexts`; every window must lie in the table (meta/mod.rs:1076-1100)."""
    table = count * CONTEXT.size
    if len(data) < table:
        raise RafsError(f"the ZRAN table holds {len(data)} bytes, fewer than {count} contexts")
    out = []
    for i in range(count):
        in_off, out_off, dict_off, in_len, out_len, dict_size, byte, bits, _r1, _r2 = CONTEXT.unpack_from(
            data, i * CONTEXT.size)
        start = table + dict_off
        if dict_size > WINSIZE or start + dict_size > len(data):
            raise RafsError(f"ZRAN context {i}: its window ({dict_off}+{dict_size}) lies outside the table")
        if bits > 7 or out_len > MAX_OUT:
            raise RafsError(f"ZRAN context {i}: {bits} pending bits / {out_len}-byte slice")
        out.append(Context(in_off, out_off, bits, byte, data[start:start + dict_size], in_len, out_len))
    return out


def decode_context(ctx: Context, data: bytes) -> bytes:
    """Inflate checkpoint ``ctx``'s ``out_len`` bytes from ``data`` (the ``in_len`` gzip bytes at ``in_offset``);
    a member end inside the slice skips the trailer and the next header (zlib_random.rs:99-181)."""
    if len(data) != ctx.in_len:
        raise RafsError(f"a ZRAN slice needs {ctx.in_len} gzip bytes, got {len(data)}")
    z = backend("zlib")
    s = z.stream()
    if z.init(ctypes.byref(s), -15) != Z_OK:
        raise MemoryError("zlib inflateInit2 failed")
    try:
        inbuf = ctypes.create_string_buffer(data, len(data) or 1)
        out = ctypes.create_string_buffer(ctx.out_len or 1)
        if ctx.bits and z.prime(ctypes.byref(s), ctx.bits, ctx.byte >> (8 - ctx.bits)) != Z_OK:
            raise RafsError("zlib inflatePrime failed")
        if ctx.window and z.set_dictionary(ctypes.byref(s), ctx.window, len(ctx.window)) != Z_OK:
            raise RafsError("zlib inflateSetDictionary failed: a bad ZRAN window")
        s.next_in, s.avail_in = ctypes.addressof(inbuf), len(data)
        done = 0
        while True:   # nydusd's loop exactly: what it cannot decode, this refuses too
            s.next_out, s.avail_out = ctypes.addressof(out) + done, ctx.out_len - done
            ret = z.inflate(ctypes.byref(s), 0)
            done = ctx.out_len - s.avail_out
            if ret == Z_OK and done == ctx.out_len:
                return out.raw[:ctx.out_len]
            if ret == Z_STREAM_END:   # even with the output complete, nydusd goes on past the member's end
                _skip_member_boundary(z, s)
                continue
            msg = s.msg.decode("utf-8", "replace") if s.msg else f"zlib error {ret}"
            raise RafsError(f"a ZRAN slice at gzip byte {ctx.in_offset} does not inflate as nydusd inflates it "
                            f"({done} of {ctx.out_len} bytes): {msg}")
    finally:
        z.end(ctypes.byref(s))


def _skip_member_boundary(z: Inflate, s) -> None:
    if s.avail_in < 8:
        raise RafsError("a ZRAN slice ends inside a gzip trailer")
    s.next_in, s.avail_in = s.next_in + 8, s.avail_in - 8
    scratch = ctypes.create_string_buffer(WINSIZE)
    if z.reset2(ctypes.byref(s), 31) != Z_OK:
        raise RafsError("zlib inflateReset2 failed")
    while True:   # the next member's header: inflate(Z_BLOCK) stops right after it
        s.next_out, s.avail_out = ctypes.addressof(scratch), WINSIZE
        ret = z.inflate(ctypes.byref(s), Z_BLOCK)
        if ret != Z_OK:
            raise RafsError(f"a ZRAN slice crosses a gzip member boundary it cannot decode (zlib {ret})")
        if s.data_type & 0x80:
            break
    if z.reset2(ctypes.byref(s), -15) != Z_OK:
        raise RafsError("zlib inflateReset2 failed")
