"""Build test tars: every tar feature a layer can carry, files around a chunk boundary, hostile tars, big streams.

    from tests.support import tars
    data = tars.feature_tar(64 << 10)                    # bytes of an uncompressed tar with every feature
    tars.write_tar(path, [tars.reg("a", b"x"), tars.symlink("b", "a")])
    view = tars.expected_view(data)                      # what a reader of the converted layer must show
    for name, bad in tars.hostile_tars().items(): ...    # each must be refused with LayerError
    src = tars.IterStream(tars.generated_layer(1 << 30))      # a 1 GiB tar, never held in memory
    src = tars.stream(data, 4096)                            # bytes as a non-seekable, short-reading stream
    dst = tars.HashingSink()                                 # write-only sink keeping size + sha256
    tars.many_files_layer(150_000)                           # a tar of many small files (entry scaling)

Entries are :class:`Entry` values (helpers ``reg``, ``directory``, ``symlink``, ``hardlink``, ``chardev``,
``blockdev``, ``fifo``); each picks its own header format (PAX by default, GNU or USTAR), so one tar can mix
PAX records, GNU long names and base-256 numbers. Headers are written by the stdlib ``tarfile``; the hostile
helpers hand-craft blocks with :func:`raw_header`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import tarfile
from typing import Iterable, Iterator, Mapping

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


def boundary_sizes(chunk_size: int) -> list[int]:
    """File sizes around the chunk boundary (and the tar block boundary) the writer must get right."""
    return [0, 1, 511, 512, 513, chunk_size - 1, chunk_size, chunk_size + 1, 2 * chunk_size, 2 * chunk_size + 7,
            3 * chunk_size + 512]


# A security.capability value (VFS_CAP_REVISION_2 with every capability 0-39 permitted).
CAPABILITY = bytes.fromhex("01000002ffffffff00000000ff01000000000000")  # not valid UTF-8: PAX hdrcharset=BINARY


def feature_entries(chunk_size: int = 64 << 10) -> list[Entry]:
    """Every feature a layer tar can carry, in one list (see the module docstring)."""
    long_dir = "usr/share/" + "/".join(["a-rather-long-directory-name-%02d" % i for i in range(6)])
    long_name = long_dir + "/and-a-file-name-that-makes-the-path-longer-than-255-bytes.txt"
    ustar_split = "opt/" + "p" * 90 + "/" + "n" * 60  # > 100 bytes: USTAR stores it as prefix + name
    out = [
        directory("./", mode=0o755),
        directory("etc"), directory("usr"), directory("usr/bin"), directory("var"), directory("dev"),
        directory("tmp", mode=0o1777), directory("srv", mode=0o2750, uid=33, gid=33, uname="www-data",
                                                 gname="www-data"),
        directory("secret", mode=0o700, xattrs={"user.dir": b"on a directory"}),
        reg("etc/hostname", b"acceld\n", mtime=MTIME + 0.75),            # sub-second mtime (PAX)
        reg("etc/os-release", payload(3000, text=True)),
        reg("etc/old", b"from 1960\n", mtime=-315619200.25),              # before the epoch
        reg("etc/future", b"2286\n", mtime=10_000_000_000),               # past the 11-digit octal field
        reg("etc/epoch", b"epoch\n", mtime=0),
        reg("usr/bin/ping", payload(2000, "ping"), mode=0o4755,
            xattrs={"security.capability": CAPABILITY, "user.comment": "héllo wörld".encode()}),
        reg("usr/bin/sgid", b"#!/bin/sh\n", mode=0o2755, uid=0, gid=42, uname="root", gname="shadow"),
        reg("empty"),
        reg("empty-too", mode=0o600),
        hardlink("empty-link", "empty"),
        reg("sub/stargz.index.json", b"{}\n"),               # only the root one is reserved
        reg("sub/.no.prefetch.landmark", b"\x0f"),
        reg("bigids", b"big ids\n", uid=100_000_000, gid=4_294_967_294, uname="nobody-ish", gname="nogroup-ish"),
        reg("gnu-bigids", b"base-256\n", uid=1 << 21, gid=(1 << 33) + 5, format=GNU),
        reg(long_name, b"long name\n"),
        reg("gnu/" + "g" * 150, b"GNU long name\n", format=GNU),
        reg(ustar_split, b"ustar prefix\n", format=USTAR),
        reg("./opt/dotslash", b"dot slash prefix\n"),
        reg("with space/file name with spaces.txt", b"spaces\n"),
        reg("usr/share/naïve café/日本語.txt", "非ASCII\n".encode()),
        symlink("usr/bin/sh", "/bin/busybox"),
        symlink("usr/bin/rel", "../share/x"),
        symlink("dangling", "does/not/exist"),
        symlink("long-link", "/" + "/".join(["target-component-%02d" % i for i in range(12)])),
        symlink("gnu-long-link", "t" * 140, format=GNU),
        symlink("space link", "with space/file name with spaces.txt"),
        hardlink("etc/hostname.link", "etc/hostname"),
        hardlink("link-to-link", "etc/hostname.link"),          # a chain: resolves to etc/hostname
        hardlink("hardlink-to-symlink", "usr/bin/sh"),
        hardlink("./etc/dotlink", "./etc/os-release"),
        hardlink("gnu-long-hardlink-" + "h" * 100, long_name, format=GNU),
        chardev("dev/null", 1, 3), chardev("dev/tty", 5, 0, mode=0o620),
        blockdev("dev/sda", 8, 0), blockdev("dev/big", 259, 1048575),
        fifo("var/fifo", mode=0o600),
        reg("etc/.wh.passwd", mode=0o000),                       # whiteout
        directory("var/lib", mode=0o755), reg("var/lib/.wh..wh..opq"),  # opaque dir
        reg("implicit/parent/file", b"parents never listed\n"),
        reg("dup", b"first version\n"),
        reg("dup", b"second version wins\n"),
    ]
    for size in boundary_sizes(chunk_size):
        out.append(reg(f"sizes/random-{size}", payload(size, "sizes")))
        out.append(reg(f"sizes/text-{size}", payload(size, text=True)))
    big = f"sizes/random-{2 * chunk_size + 7}"
    out.append(hardlink("sizes/link-to-chunked", big))
    return out


def feature_tar(chunk_size: int = 64 << 10) -> bytes:
    """The uncompressed tar of :func:`feature_entries`."""
    return build_tar(feature_entries(chunk_size))


# -- what a reader must see --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ViewEntry:
    """One name as a reader of the converted layer must present it (hard links resolved to the final target)."""

    name: str
    kind: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    linkname: str        # symlink target verbatim; hard link: normalised final target
    devmajor: int
    devminor: int
    xattrs: Mapping[str, bytes]
    size: int
    sha256: str          # of the bytes (hard links: of the target's bytes); "" for non-regular entries
    mtime: float


def clean(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def expected_view(tar: bytes) -> dict[str, ViewEntry]:
    """Parse ``tar`` with the stdlib ``tarfile`` (an independent reader) into name -> :class:`ViewEntry`.

    Later entries of the same name win; eStargz-reserved names (TOC, landmarks) are left out.
    """
    view: dict[str, ViewEntry] = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for info in tf:
            name = clean(info.name)
            if name in ("stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"):
                continue
            kind = _KINDS[info.type]
            if kind == "reg" and info.name.endswith("/") and info.type == tarfile.AREGTYPE:
                kind = "dir"
            xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                      for k, v in info.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            mode, uid, gid, uname, gname = info.mode & 0o7777, info.uid, info.gid, info.uname, info.gname
            digest, size, link = "", 0, info.linkname
            if kind == "reg":
                data = tf.extractfile(info).read()
                digest, size = "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
            if kind == "hardlink":
                # A hard link shares its target's inode: attributes and bytes are the target's; a link to a
                # link resolves to the final target (stored links are already resolved, so one step is enough).
                target = view[clean(link)]
                link = target.linkname if target.kind == "hardlink" else clean(link)
                target = view[link]
                mode, uid, gid, uname, gname = target.mode, target.uid, target.gid, target.uname, target.gname
                xattrs, digest, size = dict(target.xattrs), target.sha256, target.size
            device = kind in ("char", "block")
            view[name] = ViewEntry(name, kind, mode, uid, gid, uname, gname, link,
                                   info.devmajor if device else 0, info.devminor if device else 0,
                                   xattrs, size, digest, info.mtime)
    return view


# -- hostile input -------------------------------------------------------------------------------------

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


# -- big streams that are never held in memory -----------------------------------------------------

def generated_layer(total_size: int, *, file_size: int = 10 << 20, small_files: int = 8, seed: int = 1) -> Iterator[bytes]:
    """Yield an uncompressed tar of about ``total_size`` bytes piece by piece (at most ~1 MiB at a time).

    Big files (``file_size``, spanning several default 4 MiB chunks) alternate with groups of small ones;
    content repeats a 1 MiB random pattern at shifting offsets (incompressible to deflate's 32 KiB window).
    """
    rng = random.Random(seed)
    pattern = rng.randbytes(1 << 20) * 2
    written, n = 0, 0
    yield directory("data").to_bytes()
    while written < total_size:
        size = min(file_size, max(total_size - written, 1))
        header = reg(f"data/big-{n:05d}").tarinfo()
        header.size = size
        yield header.tobuf(PAX, "utf-8", "surrogateescape")
        left, shift = size, (n * 7919) % (1 << 20)
        while left:
            piece = min(left, 1 << 20)
            yield pattern[shift:shift + piece]
            left -= piece
        yield bytes(-size % BLOCK)
        written += size
        for i in range(small_files):
            yield reg(f"data/small-{n:05d}-{i}", pattern[i * 997:i * 997 + 3000 + i]).to_bytes()
        n += 1
    yield END_OF_ARCHIVE


def many_files_layer(count: int, *, max_size: int = 300) -> Iterator[bytes]:
    """Yield a tar of ``count`` small files (sizes 0..max_size-1) in 100 directories, cheaply (hand-made
    ustar headers): for entry-count scaling tests."""
    for d in range(100):
        yield raw_header(f"d{d:02d}/", b"5", mode=0o755)
    for i in range(count):
        size = i % max_size
        yield raw_header(f"d{i % 100:02d}/f{i:07d}", b"0", size) + b"x" * size + bytes(-size % BLOCK)
    yield END_OF_ARCHIVE


class IterStream(io.RawIOBase):
    """A read-only, non-seekable file object over an iterator of byte strings."""

    def __init__(self, pieces: Iterable[bytes]):
        self._it = iter(pieces)
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._left:
            try:
                self._left = memoryview(next(self._it))
            except StopIteration:
                return 0
        n = min(len(buf), len(self._left))
        buf[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def stream(data: bytes, piece: int = 4096) -> IterStream:
    """``data`` as a non-seekable stream that returns at most ``piece`` bytes per read (like a pipe)."""
    return IterStream(data[i:i + piece] for i in range(0, len(data), piece))


class HashingSink:
    """A write-only destination that keeps only the size and sha256 of what it was given."""

    def __init__(self) -> None:
        self.size = 0
        self._h = hashlib.sha256()

    def write(self, data) -> int:
        self._h.update(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()

