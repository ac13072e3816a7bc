"""Building a ztoc (SOCI's per-layer index) in one pass, and its flatbuffer bytes (schema version 0.9).

The flatbuffer is written in the order upstream's marshaler writes it (soci-snapshotter
ztoc/ztoc_marshaler.go:163-294; table fields per ztoc/fbs/ztoc.fbs), so the bytes are the same as upstream's
for the same content. ``decode`` reads one back (tests, ``accelctl check``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import BinaryIO

import flatbuffers
from flatbuffers import number_types as N
from flatbuffers.table import Table

from .fbwriter import _ZEROS, FlatWriter
from .gzindex import GzipIndexer
from .tartoc import TarToc, TocEntry

VERSION = "0.9"
BUILD_TOOL = "AWS SOCI CLI v0.2"  # upstream's default identifier (soci_index.go:83); the runtime ignores it
GZIP, UNCOMPRESSED = "gzip", "uncompressed"
_ALGO_ENUM = {GZIP: 1, UNCOMPRESSED: 2}


@dataclasses.dataclass
class Ztoc:
    entries: list[TocEntry]
    compressed_size: int
    uncompressed_size: int
    algorithm: str
    max_span_id: int
    span_digests: list[str]
    checkpoints: bytes  # the gzip zinfo blob, or the TarZinfo flatbuffer
    version: str = VERSION
    build_tool: str = BUILD_TOOL
    # ``prepare(e)`` of each entry, made while the layer was read (``marshal`` is quicker with them)
    prepared: list | None = dataclasses.field(default=None, repr=False, compare=False)

    def has_xattrs(self) -> bool:
        """Upstream's xattr optimization test (soci_index.go:1084-1101): any SCHILY.xattr record or opaque dir."""
        for e in self.entries:
            if any(k.startswith("SCHILY.xattr.") for k in e.pax):
                return True
            if e.name.endswith(".wh..wh..opq"):  # upstream: strings.HasSuffix on the raw name
                return True
        return False


def build_gzip(raw: BinaryIO, span_size: int, inflate: str = "auto") -> Ztoc:
    """The ztoc of a gzip layer read once from ``raw`` (read to its end); ``inflate``: see gzindex.backend."""
    gz = GzipIndexer(raw, span_size, inflate)
    try:
        toc = TarToc(gz)
        entries, prepared = [], []
        for e in toc.entries():  # this thread has time to spare while the inflating thread works
            entries.append(e)
            prepared.append(prepare(e))
        gz.drain()
    finally:
        gz.close()  # on every path: the inflating thread no longer reads ``raw`` when we return
    return Ztoc(entries=entries, compressed_size=gz.compressed_size, uncompressed_size=toc.size,
                algorithm=GZIP, max_span_id=len(gz.checkpoints) - 1, span_digests=gz.span_digests,
                checkpoints=gz.zinfo(), prepared=prepared)


class _SpanHasher:
    """Reads a plain tar layer through, hashing each ``span_size`` slice (tar_zinfo.go: fixed spans)."""

    def __init__(self, raw: BinaryIO, span_size: int):
        self._raw, self._span = raw, span_size
        self._h, self._in_span, self.size = hashlib.sha256(), 0, 0
        self.digests: list[str] = []

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        view = memoryview(data)
        while view:
            take = min(len(view), self._span - self._in_span)
            self._h.update(view[:take])
            self._in_span += take
            view = view[take:]
            if self._in_span == self._span:
                self.digests.append("sha256:" + self._h.hexdigest())
                self._h, self._in_span = hashlib.sha256(), 0
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass
        if self._in_span:
            self.digests.append("sha256:" + self._h.hexdigest())
            self._in_span = 0


def build_tar(raw: BinaryIO, span_size: int) -> Ztoc:
    """The ztoc of an uncompressed tar layer: spans are fixed slices, the zinfo is a ``TarZinfo`` table."""
    hasher = _SpanHasher(raw, span_size)
    toc = TarToc(hasher)
    entries = list(toc.entries())
    hasher.drain()
    b = flatbuffers.Builder(0)
    b.StartObject(3)
    b.PrependInt32Slot(0, 2, 0)  # zinfoVersion 2 (tar_zinfo.go:30)
    b.PrependInt64Slot(1, span_size, 0)
    b.PrependInt64Slot(2, hasher.size, 0)
    b.Finish(b.EndObject())
    max_span = hasher.size // span_size - (1 if hasher.size % span_size == 0 else 0)
    return Ztoc(entries=entries, compressed_size=hasher.size, uncompressed_size=toc.size,
                algorithm=UNCOMPRESSED, max_span_id=max_span, span_digests=hasher.digests,
                checkpoints=bytes(b.Output()))


# ------------------------------------------------------------------ the flatbuffer
_I8, _I32, _U32 = struct.Struct("<b"), struct.Struct("<i"), struct.Struct("<I")


def _text(text: str) -> bytes:
    # the tar's bytes as they were (tartoc decodes with surrogateescape): Go strings are raw bytes, so a
    # binary xattr value (PAX hdrcharset=BINARY, e.g. security.capability) is written byte for byte too
    return text.encode("utf-8", "surrogateescape")


def _strings_and_xattrs(w: FlatWriter, e: TocEntry) -> tuple[int, ...]:
    """What upstream writes of an entry before its table: six strings, then the PAX records (a table of
    two strings each, in key order) and their vector; the offsets the entry's table refers to."""
    string = w.string
    name, typ, link = string(_text(e.name)), string(_text(e.type)), string(_text(e.linkname))
    uname, gname, mtime = string(_text(e.uname)), string(_text(e.gname)), string(_text(e.mod_time))
    pairs = []
    for k in sorted(e.pax):  # Go's sort.Strings: byte order, the same as Python's for UTF-8 text
        key, value = string(_text(k)), string(_text(e.pax[k]))
        w.start(2)
        w.ref(0, key)
        w.ref(1, value)
        pairs.append(w.end())
    return name, typ, link, uname, gname, mtime, w.offsets_vector(pairs)


def _metadata_table(w: FlatWriter, e: TocEntry, refs: tuple[int, ...]) -> int:
    name, typ, link, uname, gname, mtime, xattrs = refs
    w.start(14)
    w.ref(0, name)
    w.ref(1, typ)
    w.i64(2, e.offset)
    w.i64(3, e.size)
    w.ref(4, link)
    w.i64(5, e.mode)
    w.scalar(6, _U32, e.uid & 0xFFFFFFFF)
    w.scalar(7, _U32, e.gid & 0xFFFFFFFF)
    w.ref(8, uname)
    w.ref(9, gname)
    w.ref(10, mtime)
    w.i64(11, e.devmajor)
    w.i64(12, e.devminor)
    w.ref(13, xattrs)
    return w.end()


_PAIR_VTABLE = (8, 4, 12)  # a PAX record table's vtable key (FlatWriter.end): key and value refs, 12 bytes


def prepare(e: TocEntry) -> tuple:
    """``_strings_and_xattrs`` of an entry laid out ahead of ``marshal`` (on the tar reader's thread, while the
    inflating thread works): ``marshal`` then only places the bytes and writes the entry's table.

    They lay out the same wherever they land: every entry begins at an offset aligned to 4 (the tables and
    strings before it end so), and strings, references and vectors need no more, so this is FlatWriter's
    arithmetic from offset 0 (tests/drivers/test_soci_ztoc.py holds the bytes to upstream's). Only each record
    table's offset to its vtable depends on where it lands: left as (offset, vtable key) for ``_place``.
    """
    pack, zeros = _U32.pack, _ZEROS
    off, run, pieces, refs = 0, [], [], []

    def string(data: bytes) -> int:
        nonlocal off
        n = len(data)
        pad = -(off + n + 1) & 3
        run.append(pack(n) + data + zeros[pad + 1])
        off += n + 5 + pad
        return off

    for text in (e.name, e.type, e.linkname, e.uname, e.gname, e.mod_time):
        refs.append(string(_text(text)))
    pairs = []
    for k in sorted(e.pax):
        key, value = string(_text(k)), string(_text(e.pax[k]))
        run.append(pack(off + 4 - key))  # the table: its two references, then its vtable offset (below)
        run.append(pack(off + 8 - value))
        off += 12
        pieces.append(b"".join(reversed(run)))
        pieces.append((off, _PAIR_VTABLE))
        run = []
        pairs.append(off)
    n, end = len(pairs), off + 4 * len(pairs)
    run.append(pack(n) + struct.pack(f"<{n}I", *[end - 4 * i - o for i, o in enumerate(pairs)]))
    off = end + 4
    refs.append(off)
    pieces.append(b"".join(reversed(run)))
    return pieces, off, refs


def _place(w: FlatWriter, e: TocEntry, prepared: tuple) -> int:
    pieces, size, refs = prepared
    at = w.off
    vtables = w._vtables
    for p in pieces[1::2]:
        if p[1] not in vtables:  # the first record table of its shape writes its vtable inline: write it all
            return _metadata_table(w, e, _strings_and_xattrs(w, e))
    assert at % 4 == 0
    parts = w._parts
    for p in pieces:
        parts.append(p if type(p) is bytes else _I32.pack(vtables[p[1]] - (at + p[0])))
    w.off = at + size
    return _metadata_table(w, e, tuple(at + r for r in refs))


def marshal(z: Ztoc) -> bytes:
    """The ztoc's flatbuffer, field for field in upstream's order (ztoc_marshaler.go:163-294)."""
    w = FlatWriter()
    version, tool = w.string(_text(z.version)), w.string(_text(z.build_tool))
    metas = [0] * len(z.entries)
    for i in range(len(z.entries) - 1, -1, -1):  # upstream builds them last to first
        e = z.entries[i]
        if z.prepared is not None:
            metas[i] = _place(w, e, z.prepared[i])
        else:
            metas[i] = _metadata_table(w, e, _strings_and_xattrs(w, e))
    meta_vec = w.offsets_vector(metas)
    w.start(1)
    w.ref(0, meta_vec)
    toc = w.end()
    checkpoints = w.bytes_vector(z.checkpoints)
    digests = w.offsets_vector([w.string(_text(d)) for d in z.span_digests])
    w.start(4)
    w.scalar(1, _I32, z.max_span_id)
    w.ref(2, digests)
    w.ref(3, checkpoints)
    w.scalar(0, _I8, _ALGO_ENUM[z.algorithm], 1)
    info = w.end()
    w.start(6)
    w.ref(0, version)
    w.ref(1, tool)
    w.ref(4, toc)
    w.i64(2, z.compressed_size)
    w.i64(3, z.uncompressed_size)
    w.ref(5, info)
    return w.finish(w.end())


# ------------------------------------------------------------------ reading one back
class _T:
    def __init__(self, buf: bytes, pos: int):
        self.t = Table(buf, pos)

    def _off(self, slot: int) -> int:
        return self.t.Offset(4 + 2 * slot)

    def str(self, slot: int) -> str:
        o = self._off(slot)
        return self.t.String(o + self.t.Pos).decode("utf-8", "surrogateescape") if o else ""

    def num(self, slot: int, flags, default: int = 0) -> int:
        o = self._off(slot)
        return self.t.Get(flags, o + self.t.Pos) if o else default

    def table(self, slot: int) -> "_T | None":
        o = self._off(slot)
        return _T(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def tables(self, slot: int) -> list["_T"]:
        o = self._off(slot)
        if not o:
            return []
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return [_T(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(n)]

    def strings(self, slot: int) -> list[str]:
        o = self._off(slot)
        if not o:
            return []
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return [self.t.String(start + 4 * i).decode() for i in range(n)]

    def blob(self, slot: int) -> bytes:
        o = self._off(slot)
        if not o:
            return b""
        start, n = self.t.Vector(o), self.t.VectorLen(o)
        return bytes(self.t.Bytes[start:start + n])


def decode(data: bytes) -> dict:
    """A ztoc's fields as plain values (entries as dicts), for comparing two ztocs field by field."""
    buf = bytearray(data)
    root = _T(buf, flatbuffers.encode.Get(N.UOffsetTFlags.packer_type, buf, 0))
    toc, info = root.table(4), root.table(5)
    entries = []
    for m in (toc.tables(0) if toc else []):
        entries.append({
            "name": m.str(0), "type": m.str(1), "offset": m.num(2, N.Int64Flags), "size": m.num(3, N.Int64Flags),
            "linkname": m.str(4), "mode": m.num(5, N.Int64Flags), "uid": m.num(6, N.Uint32Flags),
            "gid": m.num(7, N.Uint32Flags), "uname": m.str(8), "gname": m.str(9), "mod_time": m.str(10),
            "devmajor": m.num(11, N.Int64Flags), "devminor": m.num(12, N.Int64Flags),
            "xattrs": [(x.str(0), x.str(1)) for x in m.tables(13)]})
    algo = info.num(0, N.Int8Flags, 1) if info else 1
    return {"version": root.str(0), "build_tool": root.str(1),
            "compressed_size": root.num(2, N.Int64Flags), "uncompressed_size": root.num(3, N.Int64Flags),
            "entries": entries, "algorithm": {1: GZIP, 2: UNCOMPRESSED}.get(algo, str(algo)),
            "max_span_id": info.num(1, N.Int32Flags) if info else 0,
            "span_digests": info.strings(2) if info else [], "checkpoints": info.blob(3) if info else b""}
