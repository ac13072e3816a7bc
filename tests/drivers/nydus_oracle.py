"""What a merged nydus image must show, computed from the source tars with the stdlib ``tarfile`` only.

    expected = flatten(three_layers())                # path -> Expect (implied-only directories: attrs None)
    compare(expected, erofs.snapshot(mountpoint))     # every path, every attribute, hard-link groups

OCI layer semantics: a directory a layer implies but does not list keeps its lower attributes; ``.wh.NAME`` deletes NAME from lower layers, ``.wh..wh..opq`` empties its directory of
lower-layer entries; a later entry of the same name wins; a hard link shares its target's inode (attributes,
bytes, inode number), and keeps that inode when a later layer replaces the target's name.
"""
from __future__ import annotations

import dataclasses
import math
import os

from tests.support import tars


@dataclasses.dataclass(frozen=True)
class Expect:
    kind: str
    mode: int | None = None          # None: a directory no tar listed (attributes are the builder's choice)
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    target: str = ""
    xattrs: tuple = ()
    rdev: tuple = (0, 0)
    sha256: str = ""
    group: tuple = ()                # hard-link group identity: (layer, final target name)


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def flatten(layers: list[bytes]) -> dict[str, Expect]:
    tree: dict[str, Expect] = {"": Expect("dir")}
    for number, layer in enumerate(layers):
        view = tars.expected_view(layer)
        whiteouts = [n for n in view if os.path.basename(n).startswith(".wh.")]
        for name in whiteouts:
            base, leaf = os.path.dirname(name), os.path.basename(name)
            prefix = (base + "/") if base else ""
            if leaf == ".wh..wh..opq":
                for path in [p for p in tree if p.startswith(prefix) and p != base]:
                    del tree[path]
            else:
                gone = prefix + leaf[len(".wh."):]
                for path in [p for p in tree if p == gone or p.startswith(gone + "/")]:
                    del tree[path]
        for name, v in view.items():
            if os.path.basename(name).startswith(".wh."):
                continue
            for parent in _parents(name):
                if parent not in tree or tree[parent].kind != "dir":
                    tree[parent] = Expect("dir")   # implied by this layer alone: the builder picks attributes
            if v.kind != "dir":   # a non-directory replaces a whole subtree
                for path in [p for p in tree if p.startswith(name + "/")]:
                    del tree[path]
            kind, target, group = v.kind, v.linkname, ()
            if kind == "hardlink":
                final = view[v.linkname]
                kind, target, group = final.kind, final.linkname, (number, v.linkname)
                v = final
            elif kind != "dir":
                group = (number, name)
            xattrs = tuple(sorted(v.xattrs.items()))
            tree[name] = Expect(kind, v.mode, v.uid, v.gid, v.size, math.floor(v.mtime), target if kind == "symlink"
                                else "", xattrs, (v.devmajor, v.devminor), v.sha256, group)
    # a hard-link group is only a group if its names still share the inode: a replaced target breaks nothing
    return tree


def compare(expected: dict[str, Expect], seen: dict, *, inodes: bool = True, xattrs: bool = True,
            mode_mask: int = 0o7777) -> None:
    """Assert ``seen`` (erofs.snapshot output) shows exactly ``expected`` (modes under ``mode_mask``)."""
    assert sorted(seen) == sorted(expected), (sorted(set(seen) ^ set(expected)))
    groups: dict[tuple, set[int]] = {}
    for path, exp in expected.items():
        got = seen[path]
        assert got.kind == exp.kind, path
        if exp.mode is None:
            continue
        want = (exp.mode & mode_mask, exp.uid, exp.gid, exp.mtime, exp.target, exp.rdev if exp.kind in ("char", "block")
                else (0, 0))
        assert (got.mode & mode_mask, got.uid, got.gid, got.mtime, got.target, got.rdev) == want, (path, got)
        if exp.kind == "reg":
            assert (got.size, got.sha256) == (exp.size, exp.sha256), path
        if exp.kind == "symlink":
            assert got.size == len(exp.target.encode()), path
        if xattrs:
            assert got.xattrs == tuple((k, v) for k, v in exp.xattrs), path
        if exp.group:
            groups.setdefault(exp.group, set()).add(got.ino)
    if inodes:
        by_group: dict[tuple, list[str]] = {}
        for path, exp in expected.items():
            if exp.group:
                by_group.setdefault(exp.group, []).append(path)
        for group, paths in by_group.items():
            assert len(groups[group]) == 1, (group, paths)         # one inode per hard-link group
            assert seen[paths[0]].nlink == len(paths), (group, paths)
        inos = [next(iter(v)) for v in groups.values()]
        assert len(set(inos)) == len(inos), "two hard-link groups share an inode"


# -- source layers the nydus tests convert ------------------------------------------------------------

def feature_layer(chunk_size: int = 0x1000) -> bytes:
    # nydus-image refuses ids beyond 32 bits (tarball.rs:481-497): that entry has its own refusal test
    return tars.build_tar([e for e in tars.feature_entries(chunk_size) if e.name != "gnu-bigids"])


def three_layers() -> list[bytes]:
    big = tars.payload(3 * 0x1000 + 100, "big")
    base = tars.build_tar([
        tars.directory("etc"), tars.reg("etc/passwd", b"root:x:0:0\n"), tars.reg("etc/group", b"root:x:0:\n"),
        tars.directory("var/lib/apt", mode=0o700), tars.reg("var/lib/apt/lists", b"lists\n"),
        tars.reg("var/lib/dpkg", b"dpkg\n", uid=5, gid=6), tars.directory("opt"), tars.reg("opt/big", big),
        tars.hardlink("opt/big-link", "opt/big"), tars.reg("opt/keep", b"keep"), tars.hardlink("opt/keep2", "opt/keep"),
        tars.symlink("bin", "usr/bin"), tars.reg("usr/bin/tool", b"#!/bin/true\n", mode=0o755),
        tars.reg("gone/deep/file", b"to be whited out"),
        tars.symlink("long-inline", "i" * 4000), tars.symlink("long-plain", "p" * 4095),   # tail inline / own block
    ] + [tars.reg(f"many/entry-with-a-long-name-{i:04d}", b"") for i in range(300)])      # a 4-block directory
    middle = tars.build_tar([
        tars.reg("etc/.wh.group"), tars.reg("var/lib/.wh..wh..opq"), tars.reg("var/lib/new", b"after opaque\n"),
        tars.reg(".wh.gone"), tars.reg("opt/big", b"replaced: the old inode stays with opt/big-link\n"),
        tars.directory("etc", mode=0o750, uid=1, gid=2, xattrs={"user.layer": b"middle"}),
        tars.reg("usr/bin/tool", tars.payload(2 * 0x1000, "tool"), mode=0o4755,
                 xattrs={"security.capability": tars.CAPABILITY}),
        tars.reg("opt/.wh.keep2"),
    ])
    top = tars.build_tar([
        tars.reg("etc/group", b"wheel:x:10:\n", uid=0, gid=10), tars.fifo("run/initctl"),
        tars.chardev("dev/console", 5, 1), tars.reg("usr/bin/tool2", tars.payload(2 * 0x1000, "tool")),  # dedup
        tars.reg("bin", b"a file where a symlink was\n"), tars.reg("many/entry-with-a-long-name-0150", b"new"),
        tars.reg("etc/trusted", b"t", xattrs={"trusted.overlay.origin": b"o", "user.u": b"", "security.ima": b"i"}),
    ])
    return [base, middle, top]


def device_files(tmp_path, blobs, rafs) -> list:
    """One device file per entry of ``rafs``'s blob table, in table order (device i = blob i), each written from
    ``blobs[blob id]`` (a BlobFile): what the kernel's EROFS ``device=`` options take, through loop devices."""
    devices = []
    for i, entry in enumerate(rafs.blobs):
        dev = tmp_path / f"device{i}"
        blobs[entry.blob_id].write_device(dev, entry.compressor)
        devices.append(dev)
    return devices
