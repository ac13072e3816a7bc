"""Tar entries for tests: :class:`Entry` values, their helpers, and whole tars built from them.

Each entry picks its own header format (PAX by default, GNU or USTAR), so one tar can mix PAX records,
GNU long names and base-256 numbers; headers are written by the stdlib ``tarfile``. Tests import these
through :mod:`tests.support.tars`.
"""
from __future__ import annotations

import dataclasses
import random
import tarfile
from typing import Iterable, Mapping

BLOCK = 512
PAX, GNU, USTAR = tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT
MTIME = 1_700_000_000  # a fixed, recent mtime so outputs are reproducible
_TYPES = {"reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}
_KINDS = {v: k for k, v in _TYPES.items()}
_KINDS[tarfile.AREGTYPE] = "reg"
_KINDS[tarfile.CONTTYPE] = "reg"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tar entry to write. ``kind`` is a TOC type name: reg, dir, symlink, hardlink, char, block, fifo."""

    name: str
    kind: str = "reg"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: float = MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    format: int = PAX

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = _TYPES[self.kind]
        info.size = len(self.data) if self.kind == "reg" else 0
        info.mode, info.uid, info.gid = self.mode, self.uid, self.gid
        info.uname, info.gname, info.mtime = self.uname, self.gname, self.mtime
        info.linkname, info.devmajor, info.devminor = self.linkname, self.devmajor, self.devminor
        if self.xattrs:
            # tarfile takes str values; surrogateescape round-trips binary (it then adds hdrcharset=BINARY)
            info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                                for k, v in self.xattrs.items()}
        return info

    def to_bytes(self) -> bytes:
        """Header blocks, payload and padding of this entry."""
        header = self.tarinfo().tobuf(self.format, "utf-8", "surrogateescape")
        payload = self.data if self.kind == "reg" else b""
        return header + payload + bytes(-len(payload) % BLOCK)


def reg(name: str, data: bytes = b"", **kw) -> Entry:
    return Entry(name, "reg", data, **kw)


def directory(name: str, **kw) -> Entry:
    kw.setdefault("mode", 0o755)
    return Entry(name, "dir", **kw)


def symlink(name: str, target: str, **kw) -> Entry:
    kw.setdefault("mode", 0o777)
    return Entry(name, "symlink", linkname=target, **kw)


def hardlink(name: str, target: str, **kw) -> Entry:
    return Entry(name, "hardlink", linkname=target, **kw)


def chardev(name: str, major: int, minor: int, **kw) -> Entry:
    kw.setdefault("mode", 0o666)
    return Entry(name, "char", devmajor=major, devminor=minor, **kw)


def blockdev(name: str, major: int, minor: int, **kw) -> Entry:
    kw.setdefault("mode", 0o660)
    return Entry(name, "block", devmajor=major, devminor=minor, **kw)


def fifo(name: str, **kw) -> Entry:
    return Entry(name, "fifo", **kw)


END_OF_ARCHIVE = bytes(2 * BLOCK)


def build_tar(entries: Iterable[Entry], *, end: bool = True) -> bytes:
    """The uncompressed tar of ``entries`` (with the two zero blocks unless ``end=False``)."""
    return b"".join(e.to_bytes() for e in entries) + (END_OF_ARCHIVE if end else b"")


def write_tar(path, entries: Iterable[Entry], *, end: bool = True):
    """Write the tar of ``entries`` to ``path`` entry by entry; returns ``path``."""
    with open(path, "wb") as fh:
        for e in entries:
            fh.write(e.to_bytes())
        if end:
            fh.write(END_OF_ARCHIVE)
    return path


def payload(size: int, seed: int | str = 0, *, text: bool = False) -> bytes:
    """Deterministic file content: incompressible by default, compressible (text-like) with ``text=True``."""
    if text:
        line = b"the quick brown fox %d jumps over the lazy dog\n"
        out = b"".join(line % i for i in range(size // 40 + 1))
        return out[:size]
    return random.Random(f"{seed}:{size}").randbytes(size)
