"""Does a merged bootstrap show what its blob layers' own trees merge to? (``accelctl check`` on a nydus image)

    problems = difference(merge(layer_trees), Rafs(merged_bootstrap))   # [] when they agree

Each blob layer was already read through its own bootstrap, every chunk verified against the blob's data (and,
with ``--source``, every file compared with the source layer). What nydusd mounts is the *merged* bootstrap, so
here it is held to the layers' trees merged with OCI rules (:func:`.tree.merge`): the same paths; for every
non-directory the same kind, mode, owner, mtime, size, xattrs, symlink target, device numbers and chunk digests
(the merged chunk table's agreement with each blob's blob.meta is :func:`.validate.validate`'s). A directory is
compared by its entries only: ``nydus-image merge`` gives a directory that an upper layer implies without listing
0755 root (builder/src/core/tree.rs:248-256) where OCI appliers keep the lower one's, and either is nydus output.
"""
from __future__ import annotations

import stat

from .reader import Rafs
from .tree import Node

_KIND = {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR,
         "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}


def _paths(root: Node) -> dict[str, Node]:
    out, stack = {"": root}, [("", root)]
    while stack:
        path, node = stack.pop()
        for name, child in (node.children or {}).items():
            cpath = (path + "/" if path else "") + name.decode("utf-8", "surrogateescape")
            out[cpath] = child
            if child.kind == "dir":
                stack.append((cpath, child))
    return out


def difference(expected: Node, rafs: Rafs) -> list[str]:
    """One line per path that differs, in path order."""
    want = _paths(expected)
    got = dict(rafs.walk())
    problems = [f"{p!r} is missing" for p in sorted(want.keys() - got.keys())]
    problems += [f"{p!r} is in no layer" for p in sorted(got.keys() - want.keys())]
    for path in sorted(want.keys() & got.keys()):
        node, inode = want[path], got[path]
        if stat.S_IFMT(inode.mode) != _KIND[node.kind]:
            problems.append(f"{path!r}: file type {stat.S_IFMT(inode.mode):o}, the layers give {node.kind}")
            continue
        if node.kind == "dir":
            continue
        facts = {"mode": (stat.S_IMODE(inode.mode), node.mode), "uid": (inode.uid, node.uid),
                 "gid": (inode.gid, node.gid), "mtime": (inode.mtime, node.mtime),
                 "size": (inode.size, node.size if node.kind != "symlink" else len(node.target)),
                 "xattrs": ({k.encode("utf-8", "surrogateescape"): v for k, v in inode.xattrs.items()}, node.xattrs)}
        if node.kind == "symlink":
            facts["target"] = (rafs.symlink(inode), node.target)
        elif node.kind in ("char", "block"):
            facts["rdev"] = (inode.rdev, node.rdev)
        elif node.kind == "reg":
            facts["chunks"] = ([c.digest for c in rafs.file_chunks(inode)], [c.digest for c in node.chunks])
        for key, (mine, theirs) in facts.items():
            if mine != theirs:
                if key != "chunks":
                    problems.append(f"{path!r}: {key} {mine!r}, the layers give {theirs!r}")
                else:
                    first = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b),
                                 min(len(mine), len(theirs)))
                    problems.append(f"{path!r}: chunk {first} is not the layer's ({len(mine)} chunks, the layers "
                                    f"give {len(theirs)})")
                break
    return problems
