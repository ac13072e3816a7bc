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
import math
import re
import stat
import tarfile
from typing import BinaryIO, Callable

from acceleration_sdk.errors import LayerError

from .layout import Chunk

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
META_LIMIT = 1 << 20       # PAX / GNU long-name payload cap (Go archive/tar's maxSpecialFileSize)
NAME_MAX = 255             # a path component (Linux NAME_MAX; nydusd's RAFS_MAX_NAME)
TARGET_MAX = 4095          # a symlink target (Linux PATH_MAX less its NUL: nothing longer can exist)
_KINDS = {tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.CONTTYPE: "reg", tarfile.DIRTYPE: "dir",
          tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char",
          tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}
_META_TYPES = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK}
_PAX_NUMBERS = {"uid": re.compile(r"[0-9]+"), "gid": re.compile(r"[0-9]+"), "size": re.compile(r"[0-9]+"),
                "mtime": re.compile(r"-?[0-9]+(\.[0-9]*)?")}


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


class _StrictInfo(tarfile.TarInfo):
    """tarfile stops silently at a bad header after the first one; a layer must not (truncation is an error)."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as exc:
            raise LayerError(f"broken tar header at byte {tf.offset}: {exc}") from exc

    def _proc_pax(self, tf):
        # tarfile skips a malformed PAX record silently (and keeps the rest); a layer with one is refused
        raw = tf.fileobj.read(self._block(self.size))
        _check_pax_records(raw[:self.size], self.offset)
        real = tf.fileobj
        tf.fileobj = _Replay(raw, real)
        try:
            return super()._proc_pax(tf)
        finally:
            tf.fileobj = real

    def _proc_member(self, tf):
        if self.type in _META_TYPES and self.size > META_LIMIT:
            raise LayerError(f"tar metadata header of {self.size} bytes at byte {self.offset} (limit {META_LIMIT})")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise LayerError(f"sparse tar entry {self.name!r} is not supported")
        return super()._proc_member(tf)


class _Replay:
    """Serves bytes already read from a stream, then the stream itself (tell() is the stream's)."""

    def __init__(self, first: bytes, rest):
        self._first, self._rest = first, rest

    def read(self, size: int) -> bytes:
        if self._first:
            out, self._first = self._first[:size], self._first[size:]
            return out + (self._rest.read(size - len(out)) if len(out) < size else b"")
        return self._rest.read(size)

    def tell(self) -> int:
        return self._rest.tell() - len(self._first)


_PAX_RECORD = re.compile(rb"([0-9]+) ")


def _check_pax_records(buf: bytes, offset: int) -> None:
    pos = 0
    while pos < len(buf) and buf[pos:].strip(b"\0"):
        m = _PAX_RECORD.match(buf, pos)
        length = int(m.group(1)) if m else 0
        record = buf[pos:pos + length]
        if not m or length < len(m.group(0)) + 2 or len(record) != length or not record.endswith(b"\n") \
                or b"=" not in record[len(m.group(0)):]:
            raise LayerError(f"malformed PAX record in the header at byte {offset}")
        pos += length


def clean_name(name: str) -> list[bytes]:
    """Path components of a tar name; refuses names that climb out of the layer."""
    raw = name.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise LayerError(f"tar entry name with a NUL byte: {name!r}")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise LayerError(f"tar entry name leaves the layer: {name!r}")
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


def _check_pax(info: tarfile.TarInfo) -> None:
    for key, value in info.pax_headers.items():
        pattern = _PAX_NUMBERS.get(key)
        if pattern is not None and not pattern.fullmatch(value):
            raise LayerError(f"tar entry {info.name!r}: bad PAX {key} {value!r}")
        if key.startswith("GNU.sparse."):
            raise LayerError(f"sparse tar entry {info.name!r} is not supported")


def ingest_layer(stream: BinaryIO, add_file: Callable[[BinaryIO, int], list[Chunk]]) -> Node:
    """Read one uncompressed layer tar from ``stream`` into a tree; ``add_file(reader, size)`` chunks each regular
    file's data into the blob as it is read and returns its chunks."""
    root = Node.implicit_dir()
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictInfo) as tf:
            for info in tf:
                tf.members.clear()  # tarfile keeps every TarInfo in stream mode; the tree is what we keep
                _ingest_entry(root, tf, info, add_file)
    except tarfile.TarError as exc:
        raise LayerError(f"broken tar: {exc}") from exc
    return root


def _ingest_entry(root: Node, tf: tarfile.TarFile, info: tarfile.TarInfo, add_file) -> None:
    kind = _KINDS.get(info.type)
    if kind is None:
        raise LayerError(f"tar entry {info.name!r} has unsupported type {info.type!r}")
    _check_pax(info)
    if info.size < 0 or info.uid < 0 or info.gid < 0:
        raise LayerError(f"tar entry {info.name!r} has a negative size or id")
    if info.uid > 0xFFFF_FFFF or info.gid > 0xFFFF_FFFF:  # as nydus-image refuses them (tarball.rs:481-497)
        raise LayerError(f"tar entry {info.name!r}: uid {info.uid} or gid {info.gid} does not fit 32 bits")
    if kind == "reg" and info.type == tarfile.AREGTYPE and info.name.endswith("/"):
        kind = "dir"
    parts = clean_name(info.name)
    if not parts:
        if kind != "dir":
            raise LayerError(f"tar entry {info.name!r} names the root but is not a directory")
        _set_attrs(root, info)
        return
    parent = _lookup(root, parts[:-1], create=True)
    name = parts[-1]
    if kind == "hardlink":
        target_parts = clean_name(info.linkname)
        target_parent = _lookup(root, target_parts[:-1], create=False) if target_parts else None
        target = target_parent.children.get(target_parts[-1]) if target_parent else None
        if target is None:
            raise LayerError(f"hard link {info.name!r} names {info.linkname!r}, which the layer has not written")
        if target.kind == "dir":
            raise LayerError(f"hard link {info.name!r} names a directory")
        if parent.children.get(name) is target:
            raise LayerError(f"hard link {info.name!r} links a name to itself (a cycle)")
        parent.children[name] = target
        return
    old = parent.children.get(name)
    if kind == "dir" and old is not None and old.kind == "dir":
        _set_attrs(old, info)   # a directory listed again keeps its children
        return
    node = Node(kind, 0)
    _set_attrs(node, info)
    if kind == "dir":
        node.children = {}
    elif kind == "symlink":
        node.target = info.linkname.encode("utf-8", "surrogateescape")
        if not node.target or len(node.target) > TARGET_MAX:
            raise LayerError(f"symlink {info.name!r} has an empty target or one longer than {TARGET_MAX} bytes")
    elif kind in ("char", "block"):
        node.rdev = (info.devmajor, info.devminor)
    elif kind == "reg":
        node.size = info.size
        node.chunks = add_file(tf.extractfile(info), info.size) if info.size else []
    parent.children[name] = node


def _set_attrs(node: Node, info: tarfile.TarInfo) -> None:
    node.mode = info.mode & 0o7777
    node.uid, node.gid = info.uid, info.gid
    # whole seconds (nydus stores i_mtime_nsec 0). nydus-image reads only the ustar field (tarball.rs:276): for
    # tars whose writer put the time only in a PAX record (Python does, for sub-second or pre-1970 times) it
    # shows 0; we keep the real second, which is what it shows for Go-written layers (both fields set).
    node.mtime = math.floor(info.mtime)
    node.xattrs = {k[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape"):
                   v.encode("utf-8", "surrogateescape")
                   for k, v in info.pax_headers.items() if k.startswith("SCHILY.xattr.")}


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


def from_bootstrap(rafs, position: int) -> Node:
    """Rebuild a layer tree from its per-layer bootstrap (a cached nydus blob's image.boot), chunks labelled with
    the layer's ``position``; hard links come back as one shared node. ``rafs`` is a :class:`reader.Rafs`."""
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
                node.chunks = [dataclasses.replace(c, blob_index=position) for c in rafs.file_chunks(inode)]
            nodes[inode.nid] = node
        if root is None:
            root = node
            continue
        parent_path, _, name = path.rpartition("/")
        parent = _lookup(root, parent_path.encode("utf-8", "surrogateescape").split(b"/") if parent_path else [],
                         create=False)
        parent.children[name.encode("utf-8", "surrogateescape")] = node
    return root
