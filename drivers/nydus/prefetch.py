"""The merged bootstrap's prefetch table: which inodes nydusd reads ahead when it mounts the image.

    wanted = patterns(prefetch_patterns, prioritized_files)    # ("/",) when both are empty
    keys, problems = resolve(wanted, lookup)                     # table keys in pattern order; warnings

What nydus does, and so what this does (dragonflyoss/nydus):

- ``nydus-image`` reads the patterns one a line, trims each, skips relative ones, and drops a pattern that an
  earlier one equals or contains (``/usr`` then ``/usr/bin``: only ``/usr``), builder/src/core/prefetch.rs:67-107.
- The table holds the nid of the inode each pattern names *exactly*, in pattern order -- a directory pattern is
  one entry, the directory's own nid -- and nothing for a pattern that names no inode (prefetch.rs:155-180,
  224-248). An empty regular file is never matched (prefetch.rs:149-153).
- nydusd prefetches a directory entry's every descendant and a regular file's data (rafs/src/metadata/
  mod.rs:1013-1040); a table that is just the root means "prefetch every blob whole" (md_v6.rs:72-101,
  rafs/src/fs.rs:479-513).
- nydus-snapshotter (which acceld runs) passes ``/`` when no pattern is configured (pkg/converter/tool/
  builder.go:238-240), so a default image's table is ``[root]``: the patterns default to ``("/",)`` here too.

Prefetched files are not moved to the front of the blobs: ``nydus-image create --type tar-rafs`` (what
nydus-snapshotter runs) writes chunks in tar order whatever the patterns (builder/src/core/blob.rs:33-54 reorders
only directory sources), and here a blob must not depend on them (it is shared across images by the layer cache).
"""
from __future__ import annotations

from typing import Callable, Iterable

ROOT = "/"


def components(path: str) -> tuple[bytes, ...]:
    """An absolute path's components as Rust's ``Path::components`` sees them: ``.`` and empty parts dropped."""
    return tuple(p for p in path.encode("utf-8", "surrogateescape").split(b"/") if p not in (b"", b"."))


def patterns(prefetch_patterns: Iterable[str], prioritized_files: Iterable[str] = ()) -> tuple[str, ...]:
    """acceld's ``prefetch_patterns`` (absolute, checked when the config loads), then ``prioritized_files`` (the
    eStargz key: a name relative to the root is taken from the root), or ``("/",)`` when both are empty."""
    out = [p.strip() for p in prefetch_patterns if p.strip()]
    out += [p.strip() if p.strip().startswith("/") else "/" + p.strip() for p in prioritized_files if p.strip()]
    return tuple(out) or (ROOT,)


def resolve(wanted: Iterable[str], lookup: Callable[[bytes], object | None]) -> tuple[list[bytes], list[str]]:
    """The table's keys (paths as ``b"usr/bin"``, ``b""`` for the root) in pattern order, and one warning per
    pattern that adds nothing. ``lookup(path)`` returns the merged tree's node (``.kind``, ``.size``) or None."""
    keys: list[bytes] = []
    kept: set[tuple[bytes, ...]] = set()
    problems: list[str] = []
    for raw in wanted:
        path = raw.strip()
        if not path:
            continue
        if not path.startswith("/"):
            problems.append(f"prefetch pattern {path!r} is relative (nydus-image skips it): write it from the root")
            continue
        parts = components(path)
        cover = next((parts[:i] for i in range(len(parts), -1, -1) if parts[:i] in kept), None)
        if cover is not None:
            shown = "/" + "/".join(p.decode("utf-8", "surrogateescape") for p in cover)
            problems.append(f"prefetch pattern {path!r} is covered by the earlier pattern {shown!r}")
            continue
        kept.add(parts)   # as nydus-image: kept even when it names nothing, so it still covers later patterns
        node = lookup(b"/".join(parts))
        if node is None:
            problems.append(f"prefetch pattern {path!r} names nothing in the image: nydusd cannot prefetch it")
        elif getattr(node, "kind", "") == "reg" and not getattr(node, "size", 0):
            problems.append(f"prefetch pattern {path!r} is an empty file: nothing to prefetch")
        else:
            if getattr(node, "kind", "") == "symlink":   # kept, as nydus-image keeps it, but nydusd reads no data
                problems.append(f"prefetch pattern {path!r} is a symlink: nydusd does not follow it")
            keys.append(b"/".join(parts))
    return keys, problems
