"""The checks nydusd makes when it loads a bootstrap (and the cross-checks against the blobs it then reads).

    problems = validate(rafs)                       # raises RafsError on the first rule broken
    validate(rafs, blobs={blob_id: BlobFile(...)})  # also: blob.meta/blob.digest agree with the bootstrap

Sources are cited per rule (paths in dragonflyoss/nydus; /work/shared/NYDUS.md has the list).
``strict=True`` adds what nydus-image itself guarantees for our own output but old nydus output does not:
EXPLICIT_UID_GID whenever an entry is not root-owned (rafs/src/fs.rs:338-342) and one inode per hard-link group.
"""
from __future__ import annotations

import stat
from collections import Counter

from . import layout as L
from .blobfile import BlobFile
from .layout import RafsError
from .reader import Rafs

RAFS_MAX_CHUNK_SIZE = 16 << 20      # storage/src/lib.rs:73
RAFS_MAX_CHUNKS_PER_BLOB = 1 << 24  # storage/src/lib.rs:75


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise RafsError(message)


def validate_superblock(rafs: Rafs) -> None:
    """RafsV6SuperBlock::validate (rafs/src/metadata/layout/v6.rs:158-270)."""
    sb, size = rafs.sb, len(rafs.buf)
    _require(size >= L.BLOCK_SIZE and size % L.BLOCK_SIZE == 0, f"bootstrap size {size} is not block aligned")
    _require(sb.meta_blkaddr * L.BLOCK_SIZE <= size, "meta block address lies past the bootstrap")
    _require(sb.magic == L.EROFS_MAGIC, f"bad EROFS magic {sb.magic:#x}")
    _require(sb.checksum == 0, "superblock checksum must be 0")
    _require(sb.blkszbits == L.BLOCK_BITS, f"block size bits {sb.blkszbits} (only 4096-byte blocks outside tarfs)")
    _require(sb.extslots == 0, "extended superblock slots must be 0")
    _require(sb.inos > 0, "s_inos is 0")
    _require(sb.u1 == 0, "s_u must be 0")
    _require(sb.xattr_blkaddr == 0, "shared xattrs are not supported (s_xattr_blkaddr must be 0)")
    _require(not (sb.extra_devices == 0 and sb.blocks not in (0, 4096)), "s_blocks without extra devices")
    _require(sb.devt_slotoff == L.DEVT_SLOTOFF, f"device table slot offset {sb.devt_slotoff}, expected 11")
    _require(sb.feature_incompat == L.FEATURE_INCOMPAT, f"incompat features {sb.feature_incompat:#x} != 0xc")
    _require(sb.feature_compat & L.FEATURE_COMPAT_RAFS_V6, "RAFS v6 compat feature bit missing")
    _require(sb.root_nid < 1 << 16, "root nid does not fit 16 bits")


def validate_ext(rafs: Rafs) -> None:
    """RafsV6SuperBlockExt::validate (v6.rs:424-535)."""
    ext, size = rafs.ext, len(rafs.buf)
    comp = [f for f in L.COMPRESSION_FLAGS.values() if ext.flags & f]
    _require(len(comp) == 1, f"flags {ext.flags:#x}: exactly one compression flag expected")
    _require(len([f for f in L.HASH_FLAGS.values() if ext.flags & f]) == 1,
             f"flags {ext.flags:#x}: exactly one digest flag expected")
    cs = ext.chunk_size
    _require(cs & (cs - 1) == 0 and L.BLOCK_SIZE <= cs <= RAFS_MAX_CHUNK_SIZE, f"chunk size {cs:#x} invalid")
    devslot_end = L.DEVTABLE_OFFSET + ext.blob_table_size
    off, bsize = ext.blob_table_offset, ext.blob_table_size
    _require(off % L.BLOCK_SIZE == 0 and off >= L.BLOCK_SIZE and off >= devslot_end
             and bsize % L.BLOB_ENTRY_SIZE == 0 and off + bsize <= size, f"blob table {off:#x}/{bsize:#x} invalid")
    ranges = [(off, off + bsize)]
    if ext.chunk_table_size:
        c_off, c_size = ext.chunk_table_offset, ext.chunk_table_size
        _require(c_off >= L.BLOCK_SIZE and c_off % L.BLOCK_SIZE == 0 and c_off >= devslot_end
                 and c_size % L.CHUNK_INFO_SIZE == 0 and c_off + c_size <= size,
                 f"chunk table {c_off:#x}/{c_size:#x} invalid")
        _require(not _overlap(ranges[0], (c_off, c_off + c_size)), "blob table intersects the chunk table")
        ranges.append((c_off, c_off + c_size))
    if ext.prefetch_table_size and ext.prefetch_table_offset:
        p_off, p_size = ext.prefetch_table_offset, ext.prefetch_table_size
        _require(p_off >= L.BLOCK_SIZE and p_size % 4 == 0 and p_off >= devslot_end and p_off + p_size <= size,
                 f"prefetch table {p_off:#x}/{p_size:#x} invalid")
        _require(not any(_overlap(r, (p_off, p_off + p_size)) for r in ranges), "prefetch table overlaps a table")


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[0] != a[1] and b[0] != b[1]


def validate_blobs(rafs: Rafs, strict: bool = False) -> None:
    """RafsV6Blob::validate (v6.rs:1619-1770) and the device slots (builder/src/core/v6.rs:765-809)."""
    _require(len(rafs.devices) == len(rafs.blobs), f"{len(rafs.devices)} device slots for {len(rafs.blobs)} blobs")
    _require(len(rafs.blobs) < 255, "more than 254 blobs")
    inlined = True   # nydus-image ANDs the blobs' flags starting from true (builder/src/core/v6.rs:786-790)
    total = 0
    for i, (blob, (dev_id, blocks, _mapped)) in enumerate(zip(rafs.blobs, rafs.devices)):
        _require(len(blob.blob_id) == 64, f"blob {i}: id {blob.blob_id!r} is not 64 characters")
        _require(blob.blob_index == i, f"blob {i}: blob_index {blob.blob_index}")
        _require(blob.chunk_size == rafs.ext.chunk_size, f"blob {i}: chunk size {blob.chunk_size:#x}")
        _require(blob.chunk_count <= RAFS_MAX_CHUNKS_PER_BLOB, f"blob {i}: chunk count {blob.chunk_count}")
        _require(blob.features & L.B_ALIGNED, f"blob {i}: the ALIGNED feature is mandatory outside tarfs")
        _require(blob.ci_compressed_size <= blob.ci_uncompressed_size, f"blob {i}: ci compressed > uncompressed")
        unit = L.CI_V2_SIZE if blob.features & L.B_CHUNK_INFO_V2 else L.CI_V1_SIZE
        if blob.features & (L.B_BATCH | L.B_ZRAN | L.B_ENCRYPTED):
            _require(unit == L.CI_V2_SIZE and blob.ci_uncompressed_size >= blob.chunk_count * unit,
                     f"blob {i}: invalid chunk-info size for its features")
        else:
            _require(blob.ci_uncompressed_size == blob.chunk_count * unit,
                     f"blob {i}: ci_uncompressed_size {blob.ci_uncompressed_size} != {blob.chunk_count} x {unit}")
        _require(dev_id == blob.blob_id, f"device slot {i} names {dev_id}, blob entry {blob.blob_id}")
        _require(blocks > 0 and blocks == blob.uncompressed_size // L.BLOCK_SIZE,
                 f"device slot {i}: {blocks} blocks for {blob.uncompressed_size} uncompressed bytes")
        inlined = inlined and bool(blob.features & L.B_INLINED_CHUNK_DIGEST)
        total += blocks
    _require(bool(rafs.ext.flags & L.F_INLINED_CHUNK_DIGEST) == inlined,
             "INLINED_CHUNK_DIGEST must be set exactly when every blob has it (builder/src/core/v6.rs:786-790)")
    # old nydus-image wrote a fixed 4096 (v6.rs:223-230 tolerates it); ours must be the device total
    _require(not strict or not rafs.blobs or rafs.sb.blocks == total, f"s_blocks {rafs.sb.blocks} != device blocks {total}")


def validate_chunks(rafs: Rafs) -> None:
    for chunk, flags, _foff in rafs.chunks:
        _require(0 <= chunk.blob_index < len(rafs.blobs), f"chunk table names blob {chunk.blob_index}")
        blob = rafs.blobs[chunk.blob_index]
        _require(chunk.index < blob.chunk_count, f"chunk table index {chunk.index} >= {blob.chunk_count}")
        _require(chunk.uncompressed_offset % L.BLOCK_SIZE == 0, "chunk uncompressed offset not aligned")
        _require(0 < chunk.uncompressed_size <= rafs.ext.chunk_size, "chunk larger than the chunk size")
        _require(chunk.uncompressed_offset + chunk.uncompressed_size <= blob.uncompressed_size,
                 f"chunk {chunk.index} of blob {chunk.blob_index} ends past the blob's uncompressed size")
        _require(bool(flags & L.CHUNK_COMPRESSED) == chunk.compressed, f"chunk {chunk.index}: COMPRESSED flag wrong")


def validate_tree(rafs: Rafs, strict: bool = False) -> None:
    """Inodes as nydusd checks them (direct_v6.rs:744-800), plus sorted dirents (lookups binary-search)."""
    links: Counter[int] = Counter()
    nlinks, owners = {}, False
    cs = rafs.ext.chunk_size
    for path, node in rafs.walk():
        _require(node.nlink > 0, f"{path}: nlink is 0")
        _require(len(path.rsplit("/", 1)[-1].encode("utf-8", "surrogateescape")) <= L.RAFS_MAX_NAME,
                 f"{path}: name longer than {L.RAFS_MAX_NAME} bytes")
        owners = owners or node.uid != 0 or node.gid != 0
        if stat.S_ISREG(node.mode):
            links[node.nid] += 1
            nlinks[node.nid] = node.nlink
            chunks = rafs.file_chunks(node)
            chunk_bits = L.BLOCK_BITS + (node.i_u & 0x1F)
            _require(1 << chunk_bits >= cs, f"{path}: inode chunk size below the fs chunk size")
            for i, chunk in enumerate(chunks):
                _require(chunk.uncompressed_size == min(cs, node.size - i * cs), f"{path}: chunk {i} has wrong size")
                _require(chunk.blob_index == chunks[0].blob_index or 1 << chunk_bits == cs,
                         f"{path}: a one-extent file spans blobs")
                _require(1 << chunk_bits == cs or chunk.uncompressed_offset == chunks[0].uncompressed_offset + i * cs,
                         f"{path}: chunk size {1 << chunk_bits:#x} needs contiguous chunks")
        elif stat.S_ISDIR(node.mode):
            names = [name for name, _nid, _ft in rafs.listdir(node)]
            _require(names == sorted(names), f"{path or '/'}: dirents are not sorted")
            _require(len(set(names)) == len(names), f"{path or '/'}: a name appears twice")
            _require(node.layout in (L.LAYOUT_FLAT_PLAIN, L.LAYOUT_FLAT_INLINE), f"{path}: bad directory layout")
        elif stat.S_ISLNK(node.mode):
            _require(node.size > 0, f"{path}: empty symlink target")
            rafs.symlink(node)
        else:
            _require(stat.S_IFMT(node.mode) in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK),
                     f"{path}: unknown file type {node.mode:o}")
    for nid in rafs.prefetch:
        rafs.inode(nid)
    if strict:
        _require(rafs.explicit_uid_gid or not owners, "entries are not root-owned but EXPLICIT_UID_GID is not set")
        for nid, count in links.items():
            _require(nlinks[nid] == count, f"inode {nid}: nlink {nlinks[nid]} but {count} names")


def validate_against_blobs(rafs: Rafs, blobs: dict[str, BlobFile], verify_data: bool = True,
                           partial: bool = False) -> None:
    """The blob.meta, blob.digest and chunk data each blob carries agree with the bootstrap. ``partial``: only
    the blobs given are checked (a per-layer bootstrap that also names chunk dict blobs)."""
    missing = [b.blob_id for b in rafs.blobs if b.blob_id not in blobs]
    _require(partial or not missing, f"blob {missing[0] if missing else ''} named by the bootstrap is not given")
    for i, entry in enumerate(rafs.blobs):
        blob = blobs.get(entry.blob_id)
        if blob is None:
            continue
        h = blob.header
        _require(h is not None, f"blob {entry.blob_id}: no blob.meta")
        _require((h.ci_compressor, h.ci_offset, h.ci_compressed_size, h.ci_uncompressed_size, h.ci_entries) ==
                 (entry.ci_compressor, entry.ci_offset, entry.ci_compressed_size, entry.ci_uncompressed_size,
                  entry.chunk_count), f"blob {i}: blob.meta header disagrees with the blob table "
                                      "(storage/src/meta/mod.rs:869-960)")
        _require(entry.compressed_size <= blob.size, f"blob {i}: compressed size past the blob's end")
        _require(entry.uncompressed_size == blob.uncompressed_size, f"blob {i}: uncompressed size mismatch")
        _require(entry.features & ~L.B_INLINED_FS_META == h.features & ~L.B_INLINED_FS_META,
                 f"blob {i}: features {entry.features:#x} != blob.meta {h.features:#x}")
    crcs: dict[int, dict[int, int]] = {}
    for chunk, _flags, _foff in rafs.chunks:
        blob = blobs.get(rafs.blobs[chunk.blob_index].blob_id)
        if blob is None:
            continue
        coff, csize, uoff, usize = blob.chunk(chunk.index)
        # the kernel reads blkaddr, nydusd the ci index: they must name the same bytes
        _require((coff, csize, uoff, usize) == (chunk.compressed_offset, chunk.compressed_size,
                                                chunk.uncompressed_offset, chunk.uncompressed_size),
                 f"chunk table entry for blob {chunk.blob_index} ci {chunk.index} disagrees with blob.meta")
        _require(blob.chunk_digest(chunk.index) == chunk.digest,
                 f"chunk {chunk.index} of blob sha256:{rafs.blobs[chunk.blob_index].blob_id}: the chunk table's "
                 "digest is not the one the blob's blob.digest records")
        if chunk.crc32 is not None:
            crcs.setdefault(chunk.blob_index, {})[chunk.index] = chunk.crc32
    if verify_data:
        for i, entry in enumerate(rafs.blobs):
            if entry.blob_id in blobs:
                blobs[entry.blob_id].verify(entry.compressor, entry.digester, crcs.get(i))


def validate(rafs: Rafs, blobs: dict[str, BlobFile] | None = None, strict: bool = False,
             verify_data: bool = True, partial: bool = False) -> None:
    validate_superblock(rafs)
    validate_ext(rafs)
    validate_blobs(rafs, strict)
    validate_chunks(rafs)
    validate_tree(rafs, strict)
    if blobs is not None:
        validate_against_blobs(rafs, blobs, verify_data, partial)
