"""acceleration_sdk.zlib_raw: the one raw-inflate binding SOCI and nydus zran share, on zlib-ng and the system zlib."""
from __future__ import annotations

import ctypes
import os
import gzip
import random

import pytest

from acceleration_sdk import zlib_raw
from acceleration_sdk.zlib_raw import WINSIZE, Z_BLOCK, Z_OK, Z_STREAM_END

# without the zlib-ng wheel its cases are left out on a developer machine; never in CI (`CI` set), where
# requirements.txt installs it and its absence fails instead of shrinking the test
BACKENDS = ["zlib"] + (["zlib-ng"] if zlib_raw.available("zlib-ng") or os.environ.get("CI") else [])


def _data() -> bytes:
    rng = random.Random(7)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(400)]
    return b" ".join(rng.choice(words) for _ in range(120_000))   # compressible: many deflate blocks


def _block_ends(z, gz: bytes) -> list[tuple[int, int, int, bytes]]:
    """(total_in, total_out, data_type, window) at every block end, walking with inflate(Z_BLOCK)."""
    s = z.stream()
    ref = ctypes.byref(s)
    inbuf, out = ctypes.create_string_buffer(gz, len(gz)), ctypes.create_string_buffer(1 << 16)
    window, size = ctypes.create_string_buffer(WINSIZE), ctypes.c_uint32(0)
    assert z.init(ref, 31) == Z_OK
    s.next_in, s.avail_in = ctypes.addressof(inbuf), len(gz)
    ends, total_out = [], 0
    try:
        while True:
            s.next_out, s.avail_out = ctypes.addressof(out), len(out)
            ret = z.inflate(ref, Z_BLOCK)
            total_out += len(out) - s.avail_out
            if ret == Z_STREAM_END:
                return ends
            assert ret == Z_OK
            if s.data_type & 0x80 and not s.data_type & 0x40:
                assert z.get_dictionary(ref, window, ctypes.byref(size)) == Z_OK
                ends.append((len(gz) - s.avail_in, total_out, s.data_type, window.raw[:size.value]))
    finally:
        z.end(ref)


def _resume(z, gz: bytes, at: tuple[int, int, int, bytes], n: int) -> bytes:
    """``n`` bytes inflated from a block end: raw inflate primed with the pending bits, then the window."""
    in_pos, _, data_type, window = at
    s = z.stream()
    ref = ctypes.byref(s)
    assert z.init(ref, -15) == Z_OK
    try:
        bits = data_type & 7
        if bits:
            assert z.prime(ref, bits, gz[in_pos - 1] >> (8 - bits)) == Z_OK
        assert z.set_dictionary(ref, window, len(window)) == Z_OK
        inbuf, out = ctypes.create_string_buffer(gz[in_pos:]), ctypes.create_string_buffer(n)
        s.next_in, s.avail_in = ctypes.addressof(inbuf), len(gz) - in_pos
        s.next_out, s.avail_out = ctypes.addressof(out), n
        assert z.inflate(ref, 0) in (Z_OK, Z_STREAM_END)
        return out.raw[:n - s.avail_out]
    finally:
        z.end(ref)


def test_both_libraries_give_the_same_block_ends_and_resume_from_them():
    data = _data()
    gz = gzip.compress(data, 6, mtime=0)
    found = {name: _block_ends(zlib_raw.backend(name), gz) for name in BACKENDS}
    ends = found["zlib"]
    assert len(ends) > 3
    assert all(other == ends for other in found.values())   # block ends belong to the deflate stream
    mid = ends[len(ends) // 2]
    for name in BACKENDS:
        assert _resume(zlib_raw.backend(name), gz, mid, 5000) == data[mid[1]:mid[1] + 5000], name


def test_reset_and_reset2_start_the_next_member():
    for name in BACKENDS:
        z = zlib_raw.backend(name)
        s, out = z.stream(), ctypes.create_string_buffer(64)
        ref = ctypes.byref(s)
        assert z.init(ref, 31) == Z_OK
        try:
            for payload, reset in ((b"first", None), (b"second", z.reset), (b"third", lambda r: z.reset2(r, 31))):
                if reset is not None:
                    assert reset(ref) == Z_OK
                member = ctypes.create_string_buffer(gzip.compress(payload))
                s.next_in, s.avail_in = ctypes.addressof(member), len(member) - 1
                s.next_out, s.avail_out = ctypes.addressof(out), len(out)
                assert z.inflate(ref, 0) == Z_STREAM_END
                assert out.raw[:len(out) - s.avail_out] == payload
        finally:
            z.end(ref)


def test_auto_prefers_zlib_ng_and_names_say_which():
    auto = zlib_raw.backend("auto")
    assert auto is zlib_raw.backend(BACKENDS[-1])
    assert str(zlib_raw.backend("zlib")).startswith("zlib ")
    with pytest.raises(ValueError, match="known: auto, zlib-ng, zlib"):
        zlib_raw.backend("isal")


@pytest.mark.skipif("zlib-ng" not in BACKENDS, reason="the zlib-ng wheel is not installed (never skipped in CI)")
def test_a_zlib_ng_with_another_stream_layout_is_not_used(monkeypatch):
    """zlib-ng is reached through its wheel's exported C API: a wheel whose zng_stream differs from ours must
    fail zlib-ng's own size check when loaded, so the system zlib is used instead of a mis-read structure."""

    class Wider(ctypes.Structure):
        _fields_ = zlib_raw.ZngStream._fields_ + [("extra", ctypes.c_long)]

    monkeypatch.setattr(zlib_raw, "ZngStream", Wider)
    assert zlib_raw._zlib_ng() is None
    monkeypatch.undo()
    assert zlib_raw._zlib_ng() is not None
