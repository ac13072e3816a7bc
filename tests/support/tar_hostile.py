"""Hostile tars: hand-crafted header blocks (:func:`raw_header`) and the named tars a converter must refuse.

Tests import these through :mod:`tests.support.tars`.
"""
from __future__ import annotations

import random

from tests.support.tar_entries import BLOCK, END_OF_ARCHIVE, MTIME, build_tar, directory, hardlink, reg


def raw_header(name: bytes | str, typeflag: bytes = b"0", size: int = 0, *, mode: int = 0o644,
               linkname: bytes | str = b"", size_field: bytes | None = None, checksum: int | None = None,
               magic: bytes = b"ustar\x0000") -> bytes:
    """A hand-made 512-byte header; ``size_field`` and ``checksum`` override the computed fields (to lie)."""
    name = name.encode() if isinstance(name, str) else name
    linkname = linkname.encode() if isinstance(linkname, str) else linkname
    block = bytearray(BLOCK)
    block[0:len(name[:100])] = name[:100]
    block[100:108] = b"%07o\x00" % mode
    block[108:116] = b"0000000\x00"
    block[116:124] = b"0000000\x00"
    block[124:136] = size_field if size_field is not None else b"%011o\x00" % size
    block[136:148] = b"%011o\x00" % MTIME
    block[156:157] = typeflag
    block[157:157 + len(linkname[:100])] = linkname[:100]
    block[257:257 + len(magic)] = magic
    block[148:156] = b" " * 8
    value = sum(block) if checksum is None else checksum
    block[148:156] = b"%06o\x00 " % value
    return bytes(block)


def pax_block(records: bytes) -> bytes:
    """A PAX extended header ('x') carrying ``records`` verbatim (so they can be malformed)."""
    return raw_header("././@PaxHeader", b"x", len(records)) + records + bytes(-len(records) % BLOCK)


def pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def truncated(tar: bytes, at: int) -> bytes:
    return tar[:at]


def garbage(size: int = 4096, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def hostile_tars() -> dict[str, bytes]:
    """Named tars that a converter must refuse (with a clear error), never crash on or write from."""
    ok = build_tar([reg("a", b"x" * 1000), reg("b", b"y" * 10)])
    body = reg("victim", b"data").to_bytes()
    return {
        "truncated-in-header": truncated(ok, 300),
        "truncated-in-payload": truncated(ok, 900),
        "truncated-in-padding": truncated(ok, 1520),
        "truncated-in-second-header": truncated(ok, 1600),
        "garbage": garbage(),
        "text": b"this is not a tar archive\n" * 100,
        "bad-checksum": raw_header("a", b"0", 0, checksum=12345) + END_OF_ARCHIVE,
        "dotdot-name": build_tar([reg("../../etc/passwd", b"pwned")]),
        "dotdot-inside-name": build_tar([directory("a"), reg("a/../../escape", b"pwned")]),
        "dotdot-hardlink": build_tar([hardlink("h", "../../etc/shadow")]),
        "dangling-hardlink": build_tar([hardlink("h", "missing")]),
        "hardlink-before-target": build_tar([hardlink("h", "t"), reg("t", b"t")]),
        "hardlink-to-dir": build_tar([directory("d"), hardlink("h", "d")]),
        "hardlink-self": build_tar([hardlink("h", "h")]),
        "hardlink-cycle": build_tar([reg("a", b"a"), hardlink("b", "a"), hardlink("a", "b")]),
        "empty-name": raw_header("", b"0", 0) + END_OF_ARCHIVE,
        "nul-in-pax-path": pax_block(pax_record("path", b"a\x00b")) + body + END_OF_ARCHIVE,
        "malformed-pax-length": pax_block(b"99 path=short\n") + body + END_OF_ARCHIVE,
        "malformed-pax-no-equals": pax_block(b"11 pathfoo\n") + body + END_OF_ARCHIVE,
        "bad-pax-uid": pax_block(pax_record("uid", b"12ab")) + body + END_OF_ARCHIVE,
        "bad-pax-size": pax_block(pax_record("size", b"-5")) + body + END_OF_ARCHIVE,
        "huge-pax-header": raw_header("././@PaxHeader", b"x", 1 << 30) + bytes(BLOCK),
        "pax-then-eof-marker": pax_block(pax_record("path", b"x")) + END_OF_ARCHIVE,
        "bad-octal-size": raw_header("a", b"0", size_field=b"12x4567\x00\x00\x00\x00\x00") + END_OF_ARCHIVE,
        "negative-base256-size": raw_header("a", b"0", size_field=b"\xff" * 11 + b"\xfe") + END_OF_ARCHIVE,
        "gnu-sparse": raw_header("s", b"S", 0) + END_OF_ARCHIVE,
        "pax-sparse": pax_block(pax_record("GNU.sparse.size", b"100")) + body + END_OF_ARCHIVE,
        "unknown-type": raw_header("v", b"V", 0) + END_OF_ARCHIVE,
        "huge-size-truncated": raw_header("big", b"0", 1 << 40) + b"z" * 4096,
    }
