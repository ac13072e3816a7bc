"""Write a RAFS v6 bootstrap (an EROFS image with nydus extras) for a :class:`tree.Node` tree.

    boot = build_bootstrap(root, blobs, blob_of_layer={0: 0, 2: 1}, compressor="zstd", digester="blake3",
                           chunk_size=0x100000, prefetch=["/usr/bin"])

Layout, as builder/src/core/v6.rs:620-840 lays it out: block 0 holds the EROFS superblock (1024), the
RafsV6SuperBlockExt (1152) and the device table (1408); the blob table starts at the next 4 KiB boundary, the
prefetch table right after it; the meta area (inodes, breadth first, root first) starts at the next boundary;
then the full blocks of directories and symlinks whose tail is inlined after their inode; then the chunk table
(deduplicated by (digest, blob), sorted as nydus's BTreeMap sorts it). Every inode is extended (64 B), as
nydus-image writes tar-built nodes (builder/src/core/node.rs:198-212), so uid/gid, mtime and rdev survive.
"""
from __future__ import annotations

import dataclasses
import logging
import struct

from . import layout as L
from . import prefetch as P
from .layout import RafsError
from .reader import new_encode_dev
from .tree import Node

_FTYPES = {"reg": L.FT_REG, "dir": L.FT_DIR, "char": L.FT_CHR, "block": L.FT_BLK, "fifo": L.FT_FIFO,
           "symlink": L.FT_LNK}
_IFMT = {"reg": 0o100000, "dir": 0o040000, "char": 0o020000, "block": 0o060000, "fifo": 0o010000,
         "symlink": 0o120000}
_INODE = struct.Struct("<HHHHQIIIIQII16s")
log = logging.getLogger("drivers.nydus")


def encode_xattrs(xattrs: dict[bytes, bytes]) -> bytes:
    """The inline xattr body: 12-byte ibody header, then 4-aligned entries (v6.rs:1983-2125)."""
    if not xattrs:
        return b""
    out = bytearray(12)
    for name, value in sorted(xattrs.items()):
        index, suffix = 0, name
        for idx, prefix in L.XATTR_PREFIXES.items():
            if name.startswith(prefix) and (idx not in (2, 3) or name == prefix):
                index, suffix = idx, name[len(prefix):]
                break
        if len(suffix) > 255 or len(value) > 0xFFFF:
            raise RafsError(f"xattr {name!r} is too long for EROFS")
        ent = struct.pack("<BBH", len(suffix), index, len(value)) + suffix + value
        out += ent + bytes(-len(ent) % 4)
    if (len(out) - 12) // 4 + 1 > 0xFFFF:
        raise RafsError("extended attributes of one file exceed EROFS's inline limit")
    return bytes(out)


def dirent_blocks(names: list[bytes]) -> list[list[bytes]]:
    """Sorted names split into 4 KiB blocks of (12-byte dirent + name) (builder/src/core/v6.rs:154-196)."""
    blocks, used = [[]], 0
    for name in names:
        need = L.DIRENT_SIZE + len(name)
        if used + need > L.BLOCK_SIZE:
            blocks.append([])
            used = 0
        blocks[-1].append(name)
        used += need
    return blocks


@dataclasses.dataclass(eq=False)
class _Slot:
    node: Node
    nid: int = 0
    ino: int = 0
    offset: int = 0
    nlink: int = 0
    parent: "_Slot | None" = None
    xattrs: bytes = b""
    data: bytes = b""           # directory or symlink bytes (dirents are filled in once nids are known)
    head_blkaddr: int = 0       # first full data block (flat layouts)
    layout: int = L.LAYOUT_FLAT_PLAIN
    names: list = dataclasses.field(default_factory=list)


def build_bootstrap(root: Node, blobs: list[L.BlobEntry], *, blob_of_layer: dict[int, int] | None = None,
                    compressor: str, digester: str, chunk_size: int, prefetch: list[str] = ()) -> bytes:
    blob_of_layer = blob_of_layer if blob_of_layer is not None else {i: i for i in range(len(blobs))}
    slots, by_path, slot_of = _collect(root)
    blob_table = b"".join(dataclasses.replace(b, blob_index=i).pack() for i, b in enumerate(blobs))
    blob_table_offset = L.align(L.DEVTABLE_OFFSET + L.DEVICE_SIZE * len(blobs), L.BLOCK_SIZE)
    nids_wanted = _prefetch_keys(prefetch, by_path) if blobs else []   # nydus: no blob table, no prefetch table
    prefetch_offset = blob_table_offset + len(blob_table)
    meta_base = L.align(prefetch_offset + 4 * len(nids_wanted), L.BLOCK_SIZE)

    # pass 1: sizes and places (dirent sizes depend on names only, so nids can be assigned first)
    # inodes start one block into the meta area, so the root's nid is 128 as nydus-image writes it
    # (orig_meta_addr = root offset - 4096, builder/src/core/v6.rs:680-690): nid 0 is never an inode
    pos, data_blocks = meta_base + L.BLOCK_SIZE, 0
    for slot in slots:
        node = slot.node
        slot.xattrs = encode_xattrs(node.xattrs)
        isize = L.INODE_EXTENDED_SIZE + len(slot.xattrs)
        if node.kind == "dir":
            slot.names = sorted([b".", b".."] + list(node.children))
            blocks = dirent_blocks(slot.names)
            size = (len(blocks) - 1) * L.BLOCK_SIZE + sum(L.DIRENT_SIZE + len(n) for n in blocks[-1])
            slot.data = bytes(size)
        elif node.kind == "symlink":
            slot.data = node.target
        if node.kind in ("dir", "symlink"):
            tail = len(slot.data) % L.BLOCK_SIZE
            if tail and isize + tail <= L.BLOCK_SIZE:
                slot.layout = L.LAYOUT_FLAT_INLINE
                if L.BLOCK_SIZE - pos % L.BLOCK_SIZE < isize + tail:
                    pos = L.align(pos, L.BLOCK_SIZE)
                total = isize + tail
            else:
                tail, total = 0, isize
            slot.head_blkaddr = data_blocks       # relative for now: the data area follows the meta area
            data_blocks += -(-(len(slot.data) - tail) // L.BLOCK_SIZE)
        elif node.kind == "reg":
            slot.layout = L.LAYOUT_CHUNK_BASED
            total = L.align(isize, 8) + 8 * len(node.chunks)
        else:
            total = isize
        slot.offset = pos
        slot.nid = (pos - meta_base) // L.SLOT
        pos = L.align(pos + total, L.SLOT)
    if slots[0].nid >= 1 << 16:
        raise RafsError("root inode does not fit a 16-bit nid")
    data_base = L.align(pos, L.BLOCK_SIZE)
    chunk_table_offset = data_base + data_blocks * L.BLOCK_SIZE

    # pass 2: bytes
    chunk_table: dict[tuple[bytes, int], L.Chunk] = {}
    buf = bytearray(chunk_table_offset)
    for slot in slots:
        _write_inode(buf, slot, slot_of, data_base // L.BLOCK_SIZE, blob_of_layer, chunk_size, chunk_table)
    table = b"".join(c.pack_table_entry(foff) for _key, (c, foff) in sorted(chunk_table.items()))
    buf += table
    buf += bytes(-len(buf) % L.BLOCK_SIZE)

    owners = any(s.node.uid or s.node.gid for s in slots)
    flags = L.COMPRESSION_FLAGS[compressor] | L.HASH_FLAGS[digester] | L.F_ENCRYPTION_NONE  # set_cipher(None)
    flags |= L.F_EXPLICIT_UID_GID if owners else 0
    flags |= L.F_HAS_XATTR if any(s.node.xattrs for s in slots) else 0
    flags |= L.F_INLINED_CHUNK_DIGEST if all(b.features & L.B_INLINED_CHUNK_DIGEST for b in blobs) else 0
    ext = L.ExtSuperBlock(flags, chunk_size, blob_table_offset, len(blob_table), chunk_table_offset if table else 0,
                          len(table), prefetch_offset if nids_wanted else 0, 4 * len(nids_wanted))
    # device slots: blocks = uncompressed blocks; mapped_blkaddr as nydus aligns it (unused by the kernel)
    devices, total_blocks, mapped = b"", 0, len(buf)
    for blob in blobs:
        blocks = blob.uncompressed_size // L.BLOCK_SIZE
        mapped_blkaddr = L.align(mapped, L.MAPPED_ALIGN) // L.BLOCK_SIZE
        mapped = (mapped_blkaddr + blocks) * L.BLOCK_SIZE
        devices += L.pack_device(blob.blob_id, blocks, mapped_blkaddr)
        total_blocks += blocks
    sb = L.SuperBlock(root_nid=slots[0].nid, inos=len(slots), blocks=total_blocks,
                      meta_blkaddr=meta_base // L.BLOCK_SIZE, extra_devices=len(blobs))
    buf[L.SB_OFFSET:L.SB_OFFSET + L.SB_SIZE] = sb.pack()
    buf[L.EXT_SB_OFFSET:L.EXT_SB_OFFSET + L.EXT_SB_SIZE] = ext.pack()
    buf[L.DEVTABLE_OFFSET:L.DEVTABLE_OFFSET + len(devices)] = devices
    buf[blob_table_offset:blob_table_offset + len(blob_table)] = blob_table
    for i, path in enumerate(nids_wanted):
        struct.pack_into("<I", buf, prefetch_offset + 4 * i, by_path[path].nid)
    return bytes(buf)


def _prefetch_keys(prefetch, by_path: dict[bytes, _Slot]) -> list[bytes]:
    """The prefetch table's paths (:mod:`.prefetch`); each pattern that adds nothing is logged, not dropped silently."""
    if not prefetch:
        return []
    keys, problems = P.resolve(prefetch, lambda p: by_path[p].node if p in by_path else None)
    for problem in problems:
        log.warning("nydus: %s", problem)
    return keys


def _collect(root: Node) -> tuple[list[_Slot], dict[bytes, _Slot], dict[int, _Slot]]:
    """One slot per inode in breadth-first order (a hard-linked node once), with link counts."""
    first = _Slot(root, ino=1, nlink=2)
    first.parent = first
    slots, seen, by_path = [first], {id(root): first}, {b"": first}
    queue = [(first, b"")]
    while queue:
        parent, path = queue.pop(0)
        for name in sorted(parent.node.children):
            child = parent.node.children[name]
            cpath = path + b"/" + name if path else name
            slot = seen.get(id(child))
            if slot is None:
                slot = _Slot(child, ino=len(slots) + 1, nlink=2 if child.kind == "dir" else 0, parent=parent)
                seen[id(child)] = slot
                slots.append(slot)
                if child.kind == "dir":
                    queue.append((slot, cpath))
                    parent.nlink += 1
            elif child.kind == "dir":
                raise RafsError(f"directory {cpath!r} appears twice in the tree")
            if child.kind != "dir":
                slot.nlink += 1
            by_path[cpath] = slot
    return slots, by_path, seen


def _write_inode(buf: bytearray, slot: _Slot, slot_of: dict[int, _Slot], data_base_blk: int, blob_of_layer: dict[int, int],
                 chunk_size: int, chunk_table: dict) -> None:
    node = slot.node
    isize = L.INODE_EXTENDED_SIZE + len(slot.xattrs)
    i_u, size = 0, node.size
    if node.kind == "dir":
        slot.data = _dirents(slot, slot_of)
    if node.kind in ("dir", "symlink"):
        size = len(slot.data)
        head = size - size % L.BLOCK_SIZE if slot.layout == L.LAYOUT_FLAT_INLINE else size
        i_u = data_base_blk + slot.head_blkaddr if head else 0
        start = i_u * L.BLOCK_SIZE
        buf[start:start + head] = slot.data[:head]
        buf[slot.offset + isize:slot.offset + isize + size - head] = slot.data[head:]
    elif node.kind in ("char", "block"):
        i_u = new_encode_dev(*node.rdev)
    elif node.kind == "reg":
        i_u = _chunk_indexes(buf, slot, isize, blob_of_layer, chunk_size, chunk_table)
    icount = (len(slot.xattrs) - 12) // 4 + 1 if slot.xattrs else 0
    fmt = 1 | (slot.layout << 1)
    mtime = node.mtime & 0xFFFF_FFFF_FFFF_FFFF   # two's complement: the kernel reads a signed time64
    buf[slot.offset:slot.offset + L.INODE_EXTENDED_SIZE] = _INODE.pack(
        fmt, icount, _IFMT[node.kind] | node.mode, 0, size, i_u, slot.ino, node.uid, node.gid, mtime, 0,
        slot.nlink, bytes(16))
    buf[slot.offset + L.INODE_EXTENDED_SIZE:slot.offset + isize] = slot.xattrs


def _dirents(slot: _Slot, slot_of: dict[int, _Slot]) -> bytes:
    """Dirent blocks: entries, then names; every block but the last padded to 4 KiB (v6.rs:334-448)."""
    out = bytearray()
    children = slot.node.children
    for block in dirent_blocks(slot.names):
        out += bytes(-len(out) % L.BLOCK_SIZE)
        ents, names = bytearray(), bytearray()
        nameoff = L.DIRENT_SIZE * len(block)
        for name in block:
            if name == b".":
                nid, ftype = slot.nid, L.FT_DIR
            elif name == b"..":
                nid, ftype = slot.parent.nid, L.FT_DIR
            else:
                child = slot_of[id(children[name])]
                nid, ftype = child.nid, _FTYPES[child.node.kind]
            ents += struct.pack("<QHBB", nid, nameoff + len(names), ftype, 0)
            names += name
        out += ents + names
    if len(out) != len(slot.data):
        raise AssertionError("dirent size changed between passes")
    return bytes(out)


def _chunk_indexes(buf: bytearray, slot: _Slot, isize: int, blob_of_layer: dict[int, int], chunk_size: int,
                   chunk_table: dict) -> int:
    """Write a file's chunk indexes after its inode + xattrs; returns the chunk header for ``i_u``.

    Index: ``u16 ci_lo, u16 (ci_hi << 8 | device id), u32 blkaddr`` with device id = blob index + 1 (v6.rs:1188-1244).
    When every chunk follows the previous one in the same blob, the header says next_power_of_two(size) so
    the kernel maps the file as one extent (builder/src/core/v6.rs:456-503); nydusd indexes by the fs chunk size.
    """
    node = slot.node
    start = L.align(slot.offset + isize, 8)
    contiguous, prev = True, None
    for i, chunk in enumerate(node.chunks):
        blob = blob_of_layer[chunk.blob_index]
        mapped = dataclasses.replace(chunk, blob_index=blob)
        chunk_table.setdefault((chunk.digest, blob + 1), (mapped, i * chunk_size))  # first user's file offset
        if chunk.index >= 1 << 24 or blob >= 255:
            raise RafsError("too many chunks or blobs for a RAFS v6 chunk index")
        hi = ((chunk.index >> 16) << 8) | (blob + 1)
        struct.pack_into("<HHI", buf, start + 8 * i, chunk.index & 0xFFFF, hi,
                         chunk.uncompressed_offset // L.BLOCK_SIZE)
        if prev is not None and (prev[0] != blob or prev[1] + chunk_size != chunk.uncompressed_offset):
            contiguous = False
        prev = (blob, chunk.uncompressed_offset)
    size = chunk_size
    if contiguous and node.size > chunk_size:
        size = 1 << (node.size - 1).bit_length()
    return L.CHUNK_FORMAT_INDEXES | (size.bit_length() - 1 - L.BLOCK_BITS)
