"""The file tree a bootstrap describes: one layer read from its tar stream, and layers merged as nydus merges them.

    root = ingest_layer(stream, blob_writer)       # file data goes to the blob chunk by chunk as it is read
    merged = merge([root0, root1, root2])          # OCI whiteouts and opaque directories applied

A layer keeps its ``.wh.*`` entries (nydus-image builds each layer with ``--whiteout-spec none``); ``merge``
applies them (builder/src/core/tree.rs:215-262). Root and parents a tar never lists are ``0755 root:root mtime 0``
(builder/src/lib.rs:336-367, tarball.rs:209-212). Unlike ``nydus-image merge`` -- where such an implied directory
replaces the lower layer's attributes (tree.rs:248-256), so adding /etc/x in a layer that does not list /etc
resets /etc to 0755 root -- an implied directory here keeps the lower layer's attributes, as OCI appliers (and
so the source image) do. "Implied" is read from the attributes (0755, root:root, mtime 0, no xattrs) so that a
tree rebuilt from a cached blob's per-layer bootstrap (:func:`from_bootstrap`) merges exactly like a fresh one; a
tar that lists a directory with exactly those attributes over a different lower one is the price. A hard link is the *same*
:class:`Node` under two names, so a merge that replaces one name leaves the other on the old inode.
Mtimes are whole seconds (tarball.rs:428 stores ``i_mtime_nsec`` 0); uid/gid must fit 32 bits.
"""
from __future__ import annotations

import dataclasses
import stat
from typing import BinaryIO, Callable

from acceleration_sdk.errors import LayerError
from acceleration_sdk.tar import TarEntry, TarReader

from .layout import Chunk

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
NAME_MAX = 255             # a path component (Linux NAME_MAX; nydusd's RAFS_MAX_NAME)
TARGET_MAX = 4095          # a symlink target (Linux PATH_MAX less its NUL: nothing longer can exist)


@dataclasses.dataclass(eq=False, slots=True)
class Node:
    """One inode. ``children`` only for directories; ``chunks`` only for regular files (their
    ``blob_index`` is the layer's position until the bootstrap writer maps it to the blob table)."""

    kind: str
    mode: int                   # permission bits incl. setuid/setgid/sticky
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    target: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[bytes, bytes] = dataclasses.field(default_factory=dict)
    chunks: list[Chunk] = dataclasses.field(default_factory=list)
    children: dict[bytes, "Node"] | None = None

    @classmethod
    def implicit_dir(cls) -> "Node":
        return cls("dir", 0o755, children={})

    @property
    def implicit(self) -> bool:
        """A directory with the attributes nydus gives a directory a layer implies but does not list."""
        return (self.kind == "dir" and self.mode == 0o755 and not self.uid and not self.gid and not self.mtime
                and not self.xattrs)


def _components(name: str) -> list[bytes]:
    """Path components of a name the SDK's tar reader already cleaned (no ``.``, ``..`` or empty parts)."""
    parts = name.encode("utf-8", "surrogateescape").split(b"/") if name else []
    if any(len(p) > NAME_MAX for p in parts):   # nydusd refuses longer names (RAFS_MAX_NAME), Linux too
        raise LayerError(f"tar entry name has a component longer than {NAME_MAX} bytes: {name[:80]!r}...")
    return parts


def _lookup(root: Node, parts: list[bytes], create: bool) -> Node | None:
    node = root
    for part in parts:
        child = node.children.get(part)
        if child is None or child.kind != "dir":
            if not create:
                return None
            child = Node.implicit_dir()
            node.children[part] = child
        node = child
    return node


def ingest_layer(stream: BinaryIO, add_file: Callable[[BinaryIO, int], list[Chunk]]) -> Node:
    """Read one uncompressed layer tar from ``stream`` into a tree; ``add_file(reader, size)`` chunks each regular
    file's data into the blob as it is read and returns its chunks. The SDK's :class:`TarReader` refuses broken
    and hostile tars (truncation, bad checksums or PAX records, ``..`` names, sparse files, unknown types)."""
    root = Node.implicit_dir()
    reader = TarReader(stream)   # surrogateescape: a name that is not UTF-8 keeps its bytes
    while (entry := reader.next()) is not None:
        if entry.kind != "global":   # a PAX global header's records already apply to the entries after it
            _ingest_entry(root, reader, entry, add_file)
    return root


def _ingest_entry(root: Node, reader: TarReader, entry: TarEntry, add_file) -> None:
    kind = entry.kind
    if entry.uid > 0xFFFF_FFFF or entry.gid > 0xFFFF_FFFF:  # as nydus-image refuses them (tarball.rs:481-497)
        raise LayerError(f"tar entry {entry.name!r}: uid {entry.uid} or gid {entry.gid} does not fit 32 bits")
    parts = _components(entry.name)
    if not parts:   # the layer root ("./"); the reader refuses a root that is not a directory
        _set_attrs(root, entry)
        return
    parent = _lookup(root, parts[:-1], create=True)
    name = parts[-1]
    if kind == "hardlink":
        target_parts = _components(entry.linkname)
        target_parent = _lookup(root, target_parts[:-1], create=False)
        target = target_parent.children.get(target_parts[-1]) if target_parent else None
        if target is None:
            raise LayerError(f"hard link {entry.name!r} names {entry.linkname!r}, which the layer has not written")
        if target.kind == "dir":
            raise LayerError(f"hard link {entry.name!r} names a directory")
        if parent.children.get(name) is target:
            raise LayerError(f"hard link {entry.name!r} links a name to itself (a cycle)")
        parent.children[name] = target
        return
    old = parent.children.get(name)
    if kind == "dir" and old is not None and old.kind == "dir":
        _set_attrs(old, entry)   # a directory listed again keeps its children
        return
    node = Node(kind, 0)
    _set_attrs(node, entry)
    if kind == "dir":
        node.children = {}
    elif kind == "symlink":
        node.target = entry.linkname.encode("utf-8", "surrogateescape")
        if not node.target or len(node.target) > TARGET_MAX:
            raise LayerError(f"symlink {entry.name!r} has an empty target or one longer than {TARGET_MAX} bytes")
    elif kind in ("char", "block"):
        node.rdev = (entry.devmajor, entry.devminor)
    elif kind == "reg":
        node.size = entry.size
        node.chunks = add_file(reader, entry.size) if entry.size else []
    parent.children[name] = node


def _set_attrs(node: Node, entry: TarEntry) -> None:
    node.mode = entry.mode   # permission bits only (the reader keeps & 0o7777)
    node.uid, node.gid = entry.uid, entry.gid
    # whole seconds (nydus stores i_mtime_nsec 0): the floor, entry.mtime_ns is dropped. nydus-image reads only the
    # ustar field (tarball.rs:276): for tars whose writer put the time only in a PAX record (Python does, for
    # sub-second or pre-1970 times) it shows 0; we keep the real second, which is what it shows for Go-written
    # layers (both fields set).
    node.mtime = entry.mtime
    node.xattrs = {k.encode("utf-8", "surrogateescape"): v for k, v in entry.xattrs.items()}


def merge(layers: list[Node]) -> Node:
    """The merged tree of ``layers`` (lowest first). Layer trees are not modified; file nodes are shared."""
    merged = Node.implicit_dir()
    for layer in layers:
        _apply(merged, layer)
    return merged


def _apply(lower: Node, upper: Node) -> None:
    """Lay ``upper`` over ``lower`` in place; iterative (a layer can nest deeper than Python's recursion limit)."""
    stack = [(lower, upper)]
    while stack:
        low, up = stack.pop()
        if not up.implicit:
            low.mode, low.uid, low.gid, low.mtime = up.mode, up.uid, up.gid, up.mtime
            low.xattrs = dict(up.xattrs)
        if OPAQUE in up.children:
            low.children = {}
        for name in up.children:
            if name.startswith(WHITEOUT) and name != OPAQUE:
                low.children.pop(name[len(WHITEOUT):], None)
        for name, child in up.children.items():
            if name.startswith(WHITEOUT):
                continue
            if child.kind == "dir":
                old = low.children.get(name)
                base = Node.implicit_dir()   # merged directories are fresh nodes: layer trees stay untouched
                if old is not None and old.kind == "dir":
                    base = dataclasses.replace(old, children=dict(old.children), xattrs=dict(old.xattrs))
                low.children[name] = base
                stack.append((base, child))
            else:
                low.children[name] = child


def from_bootstrap(rafs, position: int, labels: dict[int, int] | None = None) -> Node:
    """Rebuild a layer tree from its per-layer bootstrap (a cached nydus blob's image.boot), chunks labelled with
    the layer's ``position`` (or ``labels[blob table index]``: a chunk dict's blobs); hard links come back as one
    shared node. ``rafs`` is a :class:`reader.Rafs`."""
    kinds = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
             stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}
    nodes: dict[int, Node] = {}
    root = None
    for path, inode in rafs.walk():
        node = nodes.get(inode.nid)
        if node is None:
            kind = kinds.get(stat.S_IFMT(inode.mode))
            if kind is None:
                raise LayerError(f"{path}: file type {inode.mode:o} cannot come from a tar")
            node = Node(kind, stat.S_IMODE(inode.mode), inode.uid, inode.gid, inode.mtime,
                        xattrs={k.encode("utf-8", "surrogateescape"): v for k, v in inode.xattrs.items()})
            if kind == "dir":
                node.children = {}
            elif kind == "symlink":
                node.target = rafs.symlink(inode)
            elif kind in ("char", "block"):
                node.rdev = inode.rdev
            elif kind == "reg":
                node.size = inode.size
                node.chunks = [dataclasses.replace(c, blob_index=labels[c.blob_index] if labels else position)
                               for c in rafs.file_chunks(inode)]
            nodes[inode.nid] = node
        if root is None:
            root = node
            continue
        parent_path, _, name = path.rpartition("/")
        parent = _lookup(root, parent_path.encode("utf-8", "surrogateescape").split(b"/") if parent_path else [],
                         create=False)
        parent.children[name.encode("utf-8", "surrogateescape")] = node
    return root
