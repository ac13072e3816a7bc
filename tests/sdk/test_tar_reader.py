"""The SDK's streaming tar reader: what the drivers choose (how non-UTF-8 bytes decode, each its own mtime rule)
and what it hands them. Refusals of hostile tars are held through both drivers (test_estargz_writer,
test_nydus_writer, e2e/test_hostile_layers), since a refusal only counts where a driver meets it."""
from __future__ import annotations

import io

import pytest

from acceleration_sdk.tar import TarEntry, TarReader
from tests.support import tars


def entries(data: bytes, **kw) -> list[TarEntry]:
    reader = TarReader(tars.stream(data, 700), **kw)   # short reads, not on block boundaries
    out = []
    while (entry := reader.next()) is not None:
        out.append(entry)
    return out


def test_names_that_are_not_utf8_keep_their_bytes_or_are_replaced_on_request():
    layer = tars.raw_header(b"caf\xe9", linkname=b"", size=0) + tars.END_OF_ARCHIVE
    lossless, = entries(layer)
    assert lossless.name.encode("utf-8", "surrogateescape") == b"caf\xe9"
    replaced, = entries(layer, errors="replace")
    assert replaced.name == "caf\ufffd"


@pytest.mark.parametrize("pax, seconds, nanos", [
    (b"1700000000.25", 1_700_000_000, 250_000_000),
    (b"1700000000", 1_700_000_000, 0),
    (b"-1.25", -2, 750_000_000),              # the floor, as st_mtime shows a time before 1970
    (b"-3.", -3, 0),
    (b"7.1234567891", 7, 123_456_789),        # digits past the ninth cut off, as Go's parsePAXTime does
])
def test_pax_mtimes_are_floor_seconds_plus_nanoseconds(pax, seconds, nanos):
    layer = tars.pax_block(tars.pax_record("mtime", pax)) + tars.reg("f", b"x").to_bytes() + tars.END_OF_ARCHIVE
    entry, = entries(layer)
    assert (entry.mtime, entry.mtime_ns) == (seconds, nanos)


def test_global_records_apply_to_later_entries_and_payloads_are_read_or_skipped():
    glob = tars.raw_header("././@GlobalHead", b"g", len(rec := tars.pax_record("SCHILY.xattr.user.k", b"v")))
    layer = (tars.reg("before", b"a" * 700).to_bytes() + glob + rec + bytes(-len(rec) % tars.BLOCK)
             + tars.reg("after", b"b" * 10).to_bytes() + tars.END_OF_ARCHIVE + b"trailing bytes are read, ignored")
    reader = TarReader(io.BytesIO(layer))
    first = reader.next()
    assert first.name == "before" and first.xattrs == {} and reader.read(3) == b"aaa"   # the rest is skipped
    assert reader.next().kind == "global"
    after = reader.next()
    assert after.name == "after" and after.xattrs == {"user.k": b"v"} and reader.read(100) == b"b" * 10
    assert reader.next() is None and reader.pos == len(layer)
