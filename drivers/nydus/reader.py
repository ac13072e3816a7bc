"""A RAFS v6 bootstrap reader that applies the rules nydusd applies when it loads one.

    rafs = Rafs(open("image.boot", "rb").read())
    rafs.validate()                    # RafsError naming the first rule nydusd would refuse the bootstrap on
    for path, inode in rafs.walk():    # every path once, depth first; hard links share ``inode.nid``
        chunks = rafs.file_chunks(inode)

Rules (sources in /work/shared/NYDUS.md): superblock (rafs/src/metadata/layout/v6.rs:158-270), extended superblock
(v6.rs:424-535), blob entries (v6.rs:1619-1770), device slots (builder/src/core/v6.rs:765-809), inodes
(rafs/src/metadata/direct_v6.rs:744-800), chunk addresses resolved through the chunk table
(direct_v6.rs:225-249, 1321-1372), and what both the kernel and nydusd read: a chunk index's block address must
be the uncompressed offset of the chunk-info it names.
"""
from __future__ import annotations

import dataclasses
import functools
import stat
import struct
from typing import Iterator

from . import layout as L
from .layout import RafsError

_EXT_INODE = struct.Struct("<HHHHQIIIIQII16s")


def _bounded(method):
    """A structure that points past the end of the bootstrap is a RafsError, not a struct.error."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except struct.error as exc:
            raise RafsError(f"{method.__name__}: a structure lies outside the bootstrap ({exc})") from exc
    return wrapper
_COMPACT_INODE = struct.Struct("<HHHHIIIIHHI")


@dataclasses.dataclass
class Inode:
    nid: int
    offset: int
    extended: bool
    layout: int
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    ino: int
    mtime: int
    mtime_nsec: int
    i_u: int
    xattr_size: int
    xattrs: dict[str, bytes]

    @property
    def isize(self) -> int:
        return L.INODE_EXTENDED_SIZE if self.extended else L.INODE_COMPACT_SIZE

    @property
    def rdev(self) -> tuple[int, int]:
        """(major, minor) from the new_encode_dev form the inode stores."""
        dev = self.i_u
        return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def new_encode_dev(major: int, minor: int) -> int:
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


@dataclasses.dataclass(frozen=True)
class ChunkAddr:
    blob_index: int
    ci_index: int
    blkaddr: int


class Rafs:
    """A parsed bootstrap held in memory (bootstraps are metadata: a Debian rootfs is a few MB)."""

    @_bounded
    def __init__(self, buf: bytes):
        if len(buf) < L.BLOCK_SIZE:
            raise RafsError(f"bootstrap is {len(buf)} bytes, less than one block")
        self.buf = buf
        self.sb = L.SuperBlock.unpack(buf)
        self.ext = L.ExtSuperBlock.unpack(buf)
        self.meta_base = self.sb.meta_blkaddr * L.BLOCK_SIZE
        self.devices = [L.unpack_device(buf, L.DEVTABLE_OFFSET + i * L.DEVICE_SIZE)
                        for i in range(self.sb.extra_devices)]
        count = self.ext.blob_table_size // L.BLOB_ENTRY_SIZE
        self.blobs = [L.BlobEntry.unpack(buf, self.ext.blob_table_offset + i * L.BLOB_ENTRY_SIZE)
                      for i in range(count)]
        self.chunks = [L.unpack_chunk_entry(buf, self.ext.chunk_table_offset + i * L.CHUNK_INFO_SIZE)
                       for i in range(self.ext.chunk_table_size // L.CHUNK_INFO_SIZE)]
        # nydusd's map from an inode's chunk address to the chunk table (direct_v6.rs:225-249)
        self.chunk_map = {(c.blob_index, c.index, c.uncompressed_offset // L.BLOCK_SIZE): c
                          for c, _flags, _foff in self.chunks}
        size = self.ext.prefetch_table_size
        off = self.ext.prefetch_table_offset
        self.prefetch = list(struct.unpack_from(f"<{size // 4}I", buf, off)) if size and off else []

    # -- the flags ------------------------------------------------------------------------------------

    @property
    def compressor(self) -> str:
        return next((n for n, f in L.COMPRESSION_FLAGS.items() if self.ext.flags & f), "?")

    @property
    def digester(self) -> str:
        return next((n for n, f in L.HASH_FLAGS.items() if self.ext.flags & f), "?")

    @property
    def explicit_uid_gid(self) -> bool:
        return bool(self.ext.flags & L.F_EXPLICIT_UID_GID)

    # -- inodes and directories -----------------------------------------------------------------------

    @_bounded
    def inode(self, nid: int) -> Inode:
        off = self.meta_base + nid * L.SLOT
        if off + L.INODE_COMPACT_SIZE > len(self.buf):
            raise RafsError(f"inode {nid} lies outside the bootstrap")
        fmt = struct.unpack_from("<H", self.buf, off)[0]
        if fmt & 1:
            if off + L.INODE_EXTENDED_SIZE > len(self.buf):
                raise RafsError(f"inode {nid} lies outside the bootstrap")
            (fmt, icount, mode, _r, size, i_u, ino, uid, gid, mtime, nsec, nlink,
             _r2) = _EXT_INODE.unpack_from(self.buf, off)
            extended = True
            mtime = mtime - (1 << 64) if mtime >= 1 << 63 else mtime
        else:
            fmt, icount, mode, nlink, size, _r, i_u, ino, uid, gid, _r2 = _COMPACT_INODE.unpack_from(self.buf, off)
            extended, mtime, nsec = False, self.sb.build_time, self.sb.build_time_nsec
        xattr_size = 12 + (icount - 1) * 4 if icount else 0
        node = Inode(nid, off, extended, (fmt >> 1) & 0x7, mode, uid, gid, size, nlink, ino, mtime, nsec, i_u,
                     xattr_size, {})
        if xattr_size:
            node.xattrs = self._xattrs(off + node.isize, xattr_size)
        return node

    @_bounded
    def _xattrs(self, off: int, size: int) -> dict[str, bytes]:
        body = self.buf[off:off + size]
        if len(body) != size or body[4] != 0:
            raise RafsError("shared xattrs are not supported by RAFS (h_shared_count must be 0)")
        out, pos = {}, 12
        while pos + 4 <= size:
            name_len, index, value_size = struct.unpack_from("<BBH", body, pos)
            prefix = L.XATTR_PREFIXES.get(index, b"" if index == 0 else None)
            if prefix is None:
                raise RafsError(f"unknown xattr name index {index}")
            name = prefix + body[pos + 4:pos + 4 + name_len]
            out[name.decode("utf-8", "surrogateescape")] = body[pos + 4 + name_len:pos + 4 + name_len + value_size]
            pos += L.align(4 + name_len + value_size, 4)
        return out

    def data(self, inode: Inode) -> bytes:
        """The bytes of a directory or symlink (flat layouts)."""
        size = inode.size
        if inode.layout == L.LAYOUT_FLAT_PLAIN:
            start = inode.i_u * L.BLOCK_SIZE
            out = self.buf[start:start + size]
        elif inode.layout == L.LAYOUT_FLAT_INLINE:
            head = size - size % L.BLOCK_SIZE
            tail_off = inode.offset + inode.isize + inode.xattr_size
            if tail_off % L.BLOCK_SIZE + size % L.BLOCK_SIZE > L.BLOCK_SIZE:
                raise RafsError(f"inode {inode.nid}: inline data crosses a block boundary")
            start = inode.i_u * L.BLOCK_SIZE
            out = self.buf[start:start + head] + self.buf[tail_off:tail_off + size - head]
        else:
            raise RafsError(f"inode {inode.nid}: layout {inode.layout} is not flat")
        if len(out) != size:
            raise RafsError(f"inode {inode.nid}: data lies outside the bootstrap")
        return out

    @_bounded
    def listdir(self, inode: Inode) -> list[tuple[bytes, int, int]]:
        """(name, nid, file type) of each dirent, "." and ".." included, in on-disk order."""
        data, out = self.data(inode), []
        for start in range(0, len(data), L.BLOCK_SIZE):
            block = data[start:start + L.BLOCK_SIZE]
            first = struct.unpack_from("<H", block, 8)[0]
            if first % L.DIRENT_SIZE or not 0 < first < L.BLOCK_SIZE:
                raise RafsError(f"directory inode {inode.nid}: invalid e_nameoff {first}")
            count = first // L.DIRENT_SIZE
            ents = [struct.unpack_from("<QHBB", block, i * L.DIRENT_SIZE) for i in range(count)]
            for i, (nid, nameoff, ftype, _) in enumerate(ents):
                end = ents[i + 1][1] if i + 1 < count else len(block)
                name = block[nameoff:end]
                if i + 1 == count:
                    name = name.rstrip(b"\0")
                out.append((name, nid, ftype))
        return out

    def symlink(self, inode: Inode) -> bytes:
        return self.data(inode)

    @_bounded
    def chunk_addrs(self, inode: Inode) -> list[ChunkAddr]:
        """The chunk indexes of a regular file: ceil(size / fs chunk size) of them (direct_v6.rs validate)."""
        if inode.layout != L.LAYOUT_CHUNK_BASED:
            raise RafsError(f"regular file inode {inode.nid} is not chunk-based")
        if not inode.i_u & L.CHUNK_FORMAT_INDEXES:
            raise RafsError(f"inode {inode.nid}: chunk format without indexes is not RAFS")
        count = -(-inode.size // self.ext.chunk_size)
        start = L.align(inode.offset + inode.isize + inode.xattr_size, 8)
        if start + count * 8 > len(self.buf):
            raise RafsError(f"inode {inode.nid}: chunk indexes lie outside the bootstrap")
        out = []
        for i in range(count):
            lo, hi, blkaddr = struct.unpack_from("<HHI", self.buf, start + i * 8)
            out.append(ChunkAddr((hi & 0xFF) - 1, ((hi >> 8) << 16) | lo, blkaddr))
        return out

    def file_chunks(self, inode: Inode) -> list[L.Chunk]:
        """The chunk table entries of a file's chunks, found as nydusd finds them (every address must hit)."""
        out = []
        for addr in self.chunk_addrs(inode):
            chunk = self.chunk_map.get((addr.blob_index, addr.ci_index, addr.blkaddr))
            if chunk is None:
                raise RafsError(f"inode {inode.nid}: chunk address {addr} has no chunk table entry")
            out.append(chunk)
        return out

    def walk(self) -> Iterator[tuple[str, Inode]]:
        """Every path ("" is the root) with its inode, depth first, children in dirent order."""
        root = self.inode(self.sb.root_nid)
        stack: list[tuple[str, Inode, int]] = [("", root, self.sb.root_nid)]
        seen_dirs = {self.sb.root_nid}
        while stack:
            path, node, parent = stack.pop()
            yield path, node
            if not stat.S_ISDIR(node.mode):
                continue
            children = []
            for name, nid, _ftype in self.listdir(node):
                if name == b".":
                    if nid != node.nid:
                        raise RafsError(f"{path or '/'}: '.' points at {nid}, not {node.nid}")
                    continue
                if name == b"..":
                    if nid != parent:
                        raise RafsError(f"{path or '/'}: '..' points at {nid}, not its parent {parent}")
                    continue
                child = self.inode(nid)
                if stat.S_ISDIR(child.mode):
                    if nid in seen_dirs:
                        raise RafsError(f"directory inode {nid} is reachable twice")
                    seen_dirs.add(nid)
                cpath = (path + "/" if path else "") + name.decode("utf-8", "surrogateescape")
                children.append((cpath, child, node.nid))
            stack.extend(reversed(children))
