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

The code is split by noun: entries and whole tars in ``tar_entries``, hostile input in ``tar_hostile``,
big streams in ``tar_streams``; this module adds the feature tar and the expected view, and is the one
import point for tests.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from typing import Mapping

from tests.support.tar_entries import (  # noqa: F401 - the one import point for tests
    _KINDS, BLOCK, END_OF_ARCHIVE, GNU, MTIME, PAX, USTAR, Entry, blockdev, build_tar, chardev, directory, fifo,
    hardlink, payload, reg, symlink, write_tar)
from tests.support.tar_hostile import (  # noqa: F401
    garbage, hostile_tars, pax_block, pax_record, raw_header, truncated)
from tests.support.tar_streams import HashingSink, IterStream, generated_layer, many_files_layer, stream  # noqa: F401


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
