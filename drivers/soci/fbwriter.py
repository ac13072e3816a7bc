"""A small flatbuffer writer that lays bytes out exactly as the flatbuffers ``Builder`` (Go's and Python's) does.

The ztoc must be byte-identical to upstream's, which Go's builder writes; the ``flatbuffers`` package's Python
``Builder`` writes the same bytes, but spends ~50 µs of interpreted checks per TOC entry (0.33 s for a Debian
rootfs's 6,800 entries, as long as inflating it). This writer keeps the builder's layout rules and nothing
else: the buffer grows from the end (offsets count from there), ``Prep`` pads so a value is aligned after
the bytes that follow it, a table ends with its vtable unless an identical one (the same trimmed field
offsets and object size: the builder's dedup key) was written before, vtables drop trailing absent fields,
and ``finish`` aligns to the largest alignment used. Pieces are kept in a list in prepend order and joined,
reversed, a few thousand at a time.
"""
from __future__ import annotations

import struct

_I32, _U32, _I64, _U16 = struct.Struct("<i"), struct.Struct("<I"), struct.Struct("<q"), struct.Struct("<H")
_ZEROS = [bytes(n) for n in range(8)]


class FlatWriter:
    def __init__(self) -> None:
        self._parts: list[bytes] = []  # prepend order: the last piece is the start of the buffer
        self._blocks: list[bytes] = []  # earlier pieces, joined (in buffer order) a few thousand at a time
        self.off = 0  # bytes written so far (the builder's Offset())
        self._minalign = 1
        self._vtables: dict[tuple, int] = {}
        self._vt: list[int] = []
        self._end = 0  # the offset where the current table began

    def _prep(self, size: int, additional: int) -> None:
        if size > self._minalign:
            self._minalign = size
        pad = -(self.off + additional) & (size - 1)
        if pad:
            self._parts.append(_ZEROS[pad])
            self.off += pad

    # ------------------------------------------------------------------ vectors and strings
    def string(self, data: bytes) -> int:
        # _prep(4, n + 1) inlined (the hot path: ~11 strings per TOC entry); in the joined buffer the
        # padding follows the string's bytes
        n = len(data)
        pad = -(self.off + n + 1) & 3
        self._minalign = max(self._minalign, 4)
        self._parts.append(_U32.pack(n) + data + _ZEROS[pad + 1])
        self.off += n + 5 + pad
        return self.off

    def bytes_vector(self, data: bytes) -> int:
        n = len(data)
        self._prep(4, n)
        self._parts.append(_U32.pack(n) + data)
        self.off += n + 4
        return self.off

    def offsets_vector(self, offsets: list[int]) -> int:
        """A vector of references to tables/strings written before, in the given order."""
        n = len(offsets)
        self._prep(4, 4 * n)  # StartVector: the count, then the element alignment (also 4)
        end = self.off + 4 * n  # element i sits at offset end - 4 * i and points ``at - target`` onward
        self._parts.append(_U32.pack(n) + struct.pack(f"<{n}I", *[end - 4 * i - o for i, o in enumerate(offsets)]))
        self.off = end + 4
        return self.off

    # ------------------------------------------------------------------ tables
    def start(self, fields: int) -> None:
        self._vt = [0] * fields
        self._end = self.off

    def ref(self, slot: int, target: int) -> None:
        """A reference field (``PrependUOffsetTRelativeSlot``); 0 = absent."""
        if target:
            pad = -self.off & 3  # _prep(4, 0), inlined
            self.off += 4 + pad
            self._parts.append(_U32.pack(self.off - target) + _ZEROS[pad])
            self._vt[slot] = self.off

    def i64(self, slot: int, value: int, default: int = 0) -> None:
        if value != default:
            pad = -self.off & 7  # _prep(8, 0), inlined
            self._minalign = 8
            self.off += 8 + pad
            self._parts.append(_I64.pack(value) + _ZEROS[pad])
            self._vt[slot] = self.off

    def scalar(self, slot: int, packer: struct.Struct, value: int, default: int = 0) -> None:
        if value != default:
            size = packer.size
            self._prep(size, 0)
            self._parts.append(packer.pack(value))
            self.off += size
            self._vt[slot] = self.off

    def end(self) -> int:
        """Close the table: its vtable offset in front, and the vtable (or a reference to an equal one)."""
        self._prep(4, 0)
        self.off += 4
        obj = self.off
        hole = len(self._parts)
        self._parts.append(b"")  # the table's int32 offset to its vtable, filled in below
        vt = self._vt
        n = len(vt)
        while n and not vt[n - 1]:
            n -= 1
        fields = [obj - v if v else 0 for v in vt[:n]]
        size = obj - self._end
        key = (*fields, size)
        found = self._vtables.get(key)
        if found is None:
            # the builder prepends two bytes at a time, with no padding (the offset is already even)
            self._parts.append(struct.pack(f"<{n + 2}H", 2 * (n + 2), size, *fields))
            self.off += 2 * (n + 2)
            self._parts[hole] = _I32.pack(self.off - obj)
            self._vtables[key] = self.off
        else:
            self._parts[hole] = _I32.pack(found - obj)
        if len(self._parts) > 4096:  # ~30 bytes a piece: a small object each would cost more than the bytes
            self._blocks.append(b"".join(reversed(self._parts)))
            self._parts.clear()
        return obj

    def finish(self, root: int) -> bytes:
        self._prep(self._minalign, 4)
        self._prep(4, 0)
        self.off += 4
        self._parts.append(_U32.pack(self.off - root))
        self._blocks.append(b"".join(reversed(self._parts)))
        return b"".join(reversed(self._blocks))
