"""Independent (Python-side) readers of eStargz and zstd:chunked blobs, for structure checks the Go reader hides.

Written from the format descriptions in /work/shared/FORMATS.md and stargz-snapshotter's docs, not from the
writer's code: footers are parsed byte by byte, members are decompressed one at a time.
"""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import zstandard


def decompress_all(blob: bytes, compression: str) -> bytes:
    """The whole uncompressed stream (every gzip member / zstd frame; skippable frames yield nothing)."""
    if compression == "gzip":
        out, rest = [], blob
        while rest:
            d = zlib.decompressobj(31)
            out.append(d.decompress(rest))
            assert d.eof, "a gzip member is cut short"
            rest = d.unused_data
        return b"".join(out)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    return reader.read()


def member_at(blob: bytes, offset: int, compression: str) -> tuple[bytes, int]:
    """Decompress exactly one member starting at ``offset``: (its bytes, its compressed length).

    Fails unless a member really starts at ``offset``.
    """
    if compression == "gzip":
        assert blob[offset:offset + 3] == b"\x1f\x8b\x08", f"no gzip member at {offset}"
        d = zlib.decompressobj(31)
        data = d.decompress(blob[offset:])
        assert d.eof
        return data, len(blob) - offset - len(d.unused_data)
    assert blob[offset:offset + 4] == b"\x28\xb5\x2f\xfd", f"no zstd frame at {offset}"
    d = zstandard.ZstdDecompressor().decompressobj()
    data = d.decompress(blob[offset:])
    assert d.eof
    return data, len(blob) - offset - len(d.unused_data)


def estargz_footer(blob: bytes) -> int:
    """The TOC offset from the 51-byte eStargz footer (an empty gzip member with an ``SG`` extra subfield)."""
    footer = blob[-51:]
    assert footer[:4] == b"\x1f\x8b\x08\x04", "footer is not a gzip header with FEXTRA"
    (xlen,) = struct.unpack("<H", footer[10:12])
    assert xlen == 26
    extra = footer[12:12 + xlen]
    assert extra[:2] == b"SG" and struct.unpack("<H", extra[2:4])[0] == 22 and extra[20:26] == b"STARGZ"
    assert zlib.decompress(footer, 31) == b""
    return int(extra[4:20], 16)


def zstdchunked_footer(blob: bytes) -> tuple[int, int, int, int]:
    """(toc offset, compressed length, uncompressed length, manifest type) from the 40-byte footer,
    checking that it sits in a skippable frame at the very end."""
    frame = blob[-48:]
    assert frame[:4] == b"\x50\x2a\x4d\x18" and struct.unpack("<I", frame[4:8])[0] == 40
    footer = frame[8:]
    assert footer[32:] == b"GnUlInUx"
    return struct.unpack("<QQQQ", footer[:32])


def read_toc(blob: bytes, compression: str) -> tuple[dict, bytes]:
    """(parsed TOC, raw TOC JSON bytes) found through the footer."""
    if compression == "gzip":
        offset = estargz_footer(blob)
        data, length = member_at(blob, offset, "gzip")
        assert offset + length == len(blob) - 51, "the TOC member must end where the footer starts"
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            member = tf.next()
            assert member.name == "stargz.index.json"
            raw = tf.extractfile(member).read()
    else:
        offset, clen, ulen, mtype = zstdchunked_footer(blob)
        assert mtype == 1
        assert blob[offset - 8:offset - 4] == b"\x50\x2a\x4d\x18"
        assert struct.unpack("<I", blob[offset - 4:offset])[0] == clen
        raw = zstandard.ZstdDecompressor().decompress(blob[offset:offset + clen])
        assert len(raw) == ulen
    return json.loads(raw), raw
