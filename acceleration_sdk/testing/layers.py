"""The suite's source layers: header format x name prefix x source compression, each holding every entry kind.

    for cell in MATRIX:                          # 27 cells: (PAX|GNU|USTAR) x ("", "./", "/") x (gzip|zstd|none)
        entries = cell_entries(cell, chunk_size)  # what the layer holds (LayerEntry, names clean)
        tar = build_tar(entries, cell)            # those entries written with the cell's headers and prefix
        blob = compress(tar, cell.compression)

Modelled on stargz-snapshotter's ``estargz/testutil.go`` (``srcCompressions`` x ``allowedPrefix`` x
``tar.Format``); the entries are this project's own. Headers are written by the stdlib ``tarfile``, so the
source is an independent witness of what the driver should have kept. Some features need a header format
that can carry them (see :func:`cell_entries`): a cell holds everything its format can express.
"""
from __future__ import annotations

import dataclasses
import gzip
import random
import tarfile
from typing import Iterable

import zstandard

from .entries import LayerEntry

PAX, GNU, USTAR = tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT
FORMAT_NAMES = {PAX: "pax", GNU: "gnu", USTAR: "ustar"}
PREFIXES = ("", "./", "/")
COMPRESSIONS = ("gzip", "zstd", "none")
MTIME = 1_700_000_000  # a fixed, recent mtime: outputs are reproducible
BIG_ID = 3_000_000  # > 2097151, the largest id a 7-digit octal USTAR field holds
# A security.capability value (VFS_CAP_REVISION_2, capabilities 0-39 permitted): not valid UTF-8, so PAX
# must carry it with hdrcharset=BINARY.
CAPABILITY = bytes.fromhex("01000002ffffffff00000000ff01000000000000")
_TYPES = {"reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
          "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One source layer of the matrix."""

    format: int        # tarfile.PAX_FORMAT / GNU_FORMAT / USTAR_FORMAT
    prefix: str        # put before every entry name (and every hard link target): "", "./" or "/"
    compression: str   # "gzip", "zstd" or "none"

    @property
    def id(self) -> str:
        return f"{FORMAT_NAMES[self.format]}-prefix[{self.prefix}]-{self.compression}"


MATRIX = tuple(Cell(f, p, c) for f in (PAX, GNU, USTAR) for p in PREFIXES for c in COMPRESSIONS)


def _bytes(size: int, seed: str) -> bytes:
    return random.Random(f"{seed}:{size}").randbytes(size)


def _reg(name: str, data: bytes = b"", mode: int = 0o644, **kw) -> LayerEntry:
    kw.setdefault("mtime", MTIME)
    return LayerEntry(name, "reg", mode=mode, size=len(data), data=data, **kw)


def _node(name: str, kind: str, mode: int, **kw) -> LayerEntry:
    kw.setdefault("mtime", MTIME)
    return LayerEntry(name, kind, mode=mode, **kw)


def cell_entries(cell: Cell, chunk_size: int) -> list[LayerEntry]:
    """Every entry kind, sized around ``chunk_size`` (the driver's chunk size), as ``cell``'s format allows."""
    pax, ustar = cell.format == PAX, cell.format == USTAR
    # A > 100-byte name USTAR can still store (prefix field + name field, split at a '/').
    split_name = "long/" + "d" * 90 + "/" + "n" * 60
    out = [
        _node("etc", "dir", 0o755, uname="root", gname="root"),
        _node("tmp", "dir", 0o1777),
        _node("usr", "dir", 0o755), _node("usr/bin", "dir", 0o755),
        _node("data", "dir", 0o750, uid=33, gid=33, uname="www-data", gname="www-data"),
        # Sub-second mtimes need PAX; USTAR and GNU headers hold whole seconds.
        _reg("etc/hostname", b"acceld\n", mtime=MTIME + 0.75 if pax else MTIME, uname="root", gname="root"),
        _reg("etc/motd", b"welcome\n" * 40, mode=0o600, uid=1000, gid=1000, mtime=MTIME - 86400),
        _reg("empty"),
        _reg("data/exact-chunk", _bytes(chunk_size, "exact")),
        _reg("data/multi-chunk", _bytes(3 * chunk_size + 1234, "multi")),
        # Sparse-looking: whole chunks of zeros around a little data (a writer must not skip or merge them).
        _reg("data/zeros", bytes(2 * chunk_size) + b"island" + bytes(chunk_size + 17)),
        _reg("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o4755),
        _node("usr/bin/sh", "symlink", 0o777, linkname="/bin/busybox"),
        _node("usr/bin/rel", "symlink", 0o777, linkname="../../etc/motd"),
        _node("dangling", "symlink", 0o777, linkname="does/not/exist"),
        _node("etc/hostname.link", "hardlink", 0o644, linkname="etc/hostname"),
        _node("data/multi.link", "hardlink", 0o644, linkname="data/multi-chunk"),
        _node("dev", "dir", 0o755),
        _node("dev/null", "char", 0o666, devmajor=1, devminor=3),
        _node("dev/sda", "block", 0o660, devmajor=8, devminor=0),
        _node("dev/nvme", "block", 0o660, devmajor=259, devminor=65537),
        _node("fifo", "fifo", 0o600),
        _reg(split_name, b"a long name\n"),
        # OCI whiteouts: a deleted file and an opaque directory.
        _reg("etc/.wh.passwd"),
        _node("var", "dir", 0o755), _node("var/lib", "dir", 0o755), _reg("var/lib/.wh..wh..opq"),
    ]
    if cell.prefix:
        # The layer root as real layers write it ("./" or "/"); with no prefix there is no name for it.
        out.insert(0, _node("", "dir", 0o755))
    if not ustar:
        # Beyond USTAR: a name no prefix/name split can hold (> 255 bytes), link targets > 100 bytes (the
        # linkname field's size), and ids above the 7-digit octal field (GNU: base-256, PAX: records).
        deep = "deep/" + "/".join(["component-%02d-" % i + "x" * 40 for i in range(5)]) + "/file"
        out += [
            _reg(deep, b"deep\n"),
            _node("long-symlink", "symlink", 0o777, linkname="/" + "/".join(["target-%02d" % i for i in range(14)])),
            _node("long-hardlink", "hardlink", 0o644, linkname=split_name),
            _reg("bigids", b"big ids\n", uid=BIG_ID, gid=BIG_ID + 1),
        ]
    if pax:
        # Extended attributes exist only as PAX SCHILY.xattr records; USTAR and GNU headers cannot hold them.
        out += [
            _reg("usr/bin/ping", _bytes(700, "ping"), mode=0o755,
                 xattrs={"security.capability": CAPABILITY, "user.comment": "héllo wörld".encode()}),
            _node("secret", "dir", 0o700, xattrs={"user.dir": b"on a directory"}),
            _reg("usr/share-naïve-日本語.txt", "non-ASCII name\n".encode()),
        ]
    return out


def _tarinfo(entry: LayerEntry, prefix: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(prefix + entry.name)
    info.type = _TYPES[entry.kind]
    info.size = len(entry.data) if entry.kind == "reg" else 0
    info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, entry.mtime
    info.uname, info.gname = entry.uname, entry.gname
    info.linkname = prefix + entry.linkname if entry.kind == "hardlink" else entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    if entry.xattrs:
        # tarfile wants str values; surrogateescape round-trips bytes (tarfile then writes hdrcharset=BINARY)
        info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                            for k, v in entry.xattrs.items()}
    return info


def build_tar(entries: Iterable[LayerEntry], cell: Cell) -> bytes:
    """The uncompressed tar of ``entries`` with ``cell``'s header format and name prefix."""
    blocks = []
    for entry in entries:
        blocks.append(_tarinfo(entry, cell.prefix).tobuf(cell.format, "utf-8", "surrogateescape"))
        if entry.kind == "reg":
            blocks += [entry.data, bytes(-len(entry.data) % tarfile.BLOCKSIZE)]
    blocks.append(bytes(2 * tarfile.BLOCKSIZE))
    return b"".join(blocks)


def compress(tar: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(tar)
    if compression == "none":
        return tar
    raise ValueError(f"unknown source compression {compression!r} (known: {', '.join(COMPRESSIONS)})")
