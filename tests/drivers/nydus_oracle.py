"""What a merged nydus image must show, computed from the source tars with the stdlib ``tarfile`` only.

    expected = flatten([layer0_tar, layer1_tar])      # path -> Expect (implicit directories: attrs None)
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
