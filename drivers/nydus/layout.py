"""RAFS v6 on-disk structures: constants, and one pack/unpack pair per structure.

A RAFS v6 bootstrap is an EROFS image plus nydus extras; a nydus data blob is chunk data followed by
blob.meta, blob.digest, the per-layer bootstrap and a TOC, each followed by a GNU tar header. Sources are the
dragonflyoss/nydus files cited per constant (/work/shared/NYDUS.md collects them). All integers little-endian.
"""
from __future__ import annotations

import dataclasses
import struct

from acceleration_sdk.errors import LayerError


class RafsError(LayerError):
    """A RAFS bootstrap or nydus blob that nydusd (or the kernel) would refuse; the message says which rule."""


BLOCK_SIZE = 4096                 # s_blkszbits 12; 512-byte blocks are tarfs-only (rafs/.../v6.rs:42)
BLOCK_BITS = 12
SB_OFFSET = 1024                  # EROFS superblock offset and size (v6.rs:69)
SB_SIZE = 128
EXT_SB_OFFSET = SB_OFFSET + SB_SIZE   # RafsV6SuperBlockExt, 256 bytes (v6.rs:385-404)
EXT_SB_SIZE = 256
DEVT_SLOTOFF = 11                 # device table at 11 * 128 = 1408 (v6.rs:48)
DEVTABLE_OFFSET = DEVT_SLOTOFF * 128
DEVICE_SIZE = 128
BLOB_ENTRY_SIZE = 256
CHUNK_INFO_SIZE = 80              # RafsV5ChunkInfo, also the v6 chunk table unit (v5.rs:1107-1128)
SLOT = 32                         # EROFS inode slot: nid = (offset - meta_blkaddr * 4096) / 32
EROFS_MAGIC = 0xE0F5E1E2
FEATURE_COMPAT_RAFS_V6 = 0x4000_0000
FEATURE_INCOMPAT = 0x4 | 0x8      # CHUNKED_FILE | DEVICE_TABLE, exactly (v6.rs:83-85, 252-257)
MAPPED_ALIGN = 0x8_0000           # V6_BLOCK_SEG_ALIGNMENT (builder/src/core/v6.rs:32)

# inode i_format: bit 0 extended, bits 1-3 data layout (v6.rs:50-66)
LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE, LAYOUT_CHUNK_BASED = 0, 2, 4
INODE_EXTENDED_SIZE, INODE_COMPACT_SIZE = 64, 32
CHUNK_FORMAT_INDEXES = 0x20       # EROFS_CHUNK_FORMAT_INDEXES (v6.rs:73)
DIRENT_SIZE = 12
# dirent file types (v6.rs:650-668)
FT_REG, FT_DIR, FT_CHR, FT_BLK, FT_FIFO, FT_SOCK, FT_LNK = 1, 2, 3, 4, 5, 6, 7
# xattr name prefixes by index (v6.rs:1914-1925); longest first so "system.posix_acl_access" wins
XATTR_PREFIXES = {1: b"user.", 2: b"system.posix_acl_access", 3: b"system.posix_acl_default",
                  4: b"trusted.", 6: b"security."}
RAFS_MAX_NAME = 255               # nydusd refuses longer names (direct_v6.rs validate)

# RafsSuperFlags (rafs/src/metadata/mod.rs:289-326)
F_COMPRESSION_NONE, F_COMPRESSION_LZ4, F_HASH_BLAKE3, F_HASH_SHA256 = 0x1, 0x2, 0x4, 0x8
F_EXPLICIT_UID_GID, F_HAS_XATTR, F_COMPRESSION_GZIP, F_COMPRESSION_ZSTD = 0x10, 0x20, 0x40, 0x80
F_INLINED_CHUNK_DIGEST, F_TARFS_MODE = 0x100, 0x200
F_ENCRYPTION_NONE = 0x0100_0000
COMPRESSION_FLAGS = {"none": F_COMPRESSION_NONE, "lz4_block": F_COMPRESSION_LZ4, "gzip": F_COMPRESSION_GZIP,
                     "zstd": F_COMPRESSION_ZSTD}
HASH_FLAGS = {"blake3": F_HASH_BLAKE3, "sha256": F_HASH_SHA256}
# blob entry algorithm numbers (utils/src/compress/mod.rs:22-28, utils/src/digest.rs:24-28)
COMPRESSOR_IDS = {"none": 0, "lz4_block": 1, "gzip": 2, "zstd": 3}
DIGESTER_IDS = {"blake3": 0, "sha256": 1}

# chunk table flags (storage/src/device.rs:641-652)
CHUNK_COMPRESSED, CHUNK_ENCRYPTED, CHUNK_BATCH, CHUNK_HAS_CRC32 = 0x1, 0x4, 0x8, 0x10
# BlobFeatures (storage/src/device.rs:52-86)
B_ALIGNED, B_INLINED_FS_META, B_CHUNK_INFO_V2, B_ZRAN = 0x1, 0x2, 0x4, 0x8
B_SEPARATE, B_INLINED_CHUNK_DIGEST, B_TARFS, B_BATCH, B_ENCRYPTED = 0x10, 0x20, 0x40, 0x80, 0x100
B_HAS_TAR_HEADER, B_HAS_TOC, B_CAP_TAR_TOC = 0x1000_0000, 0x2000_0000, 0x4000_0000
# what `nydus-image create --type tar-rafs --blob-inline-meta --features blob-toc` sets (context.rs:1419-1430)
LAYER_BLOB_FEATURES = (B_ALIGNED | B_INLINED_FS_META | B_INLINED_CHUNK_DIGEST | B_HAS_TAR_HEADER | B_HAS_TOC
                       | B_CAP_TAR_TOC)

META_MAGIC = 0xB10BB10B           # blob.meta header (storage/src/meta/mod.rs:62-63)
META_HEADER_SIZE = 4096
CI_V1_SIZE, CI_V2_SIZE = 16, 24
DIGEST_SIZE = 32
TOC_ENTRY_SIZE = 128              # storage/src/meta/toc.rs:70-84
TOC_FLAGS = {"none": 1, "zstd": 2, "lz4_block": 4}
TOC_IMAGE_BLOB, TOC_BLOB_META, TOC_BLOB_META_HEADER = "image.blob", "blob.meta", "blob.meta.header"
TOC_BLOB_DIGEST, TOC_BOOTSTRAP, TOC_NAME = "blob.digest", "image.boot", "rafs.blob.toc"
INLINE_BLOB_ID = "x" * 64         # an inline-meta blob's id in its own image.boot (builder/src/lib.rs:108-115)
TAR_BLOCK = 512


def align(value: int, unit: int) -> int:
    return (value + unit - 1) // unit * unit


# -- superblock, extended superblock, device slot, blob entry ----------------------------------------

_SB = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQB23s")
_EXT = struct.Struct("<QQIIQQQII200s")
_DEV = struct.Struct("<64sII56s")
_BLOB = struct.Struct("<64sIIIIIIQQIIQQQ32s32sQ8sI36s")


@dataclasses.dataclass
class SuperBlock:
    root_nid: int
    inos: int
    blocks: int
    meta_blkaddr: int
    extra_devices: int
    magic: int = EROFS_MAGIC
    checksum: int = 0
    feature_compat: int = FEATURE_COMPAT_RAFS_V6
    blkszbits: int = BLOCK_BITS
    extslots: int = 0
    build_time: int = 0
    build_time_nsec: int = 0
    xattr_blkaddr: int = 0
    feature_incompat: int = FEATURE_INCOMPAT
    u1: int = 0
    devt_slotoff: int = DEVT_SLOTOFF

    def pack(self) -> bytes:
        return _SB.pack(self.magic, self.checksum, self.feature_compat, self.blkszbits, self.extslots,
                        self.root_nid, self.inos, self.build_time, self.build_time_nsec, self.blocks,
                        self.meta_blkaddr, self.xattr_blkaddr, bytes(16), bytes(16), self.feature_incompat,
                        self.u1, self.extra_devices, self.devt_slotoff, 0, 0, 0, 0, 0, bytes(23))

    @classmethod
    def unpack(cls, buf: bytes) -> "SuperBlock":
        v = _SB.unpack_from(buf, SB_OFFSET)
        return cls(magic=v[0], checksum=v[1], feature_compat=v[2], blkszbits=v[3], extslots=v[4],
                   root_nid=v[5], inos=v[6], build_time=v[7], build_time_nsec=v[8], blocks=v[9],
                   meta_blkaddr=v[10], xattr_blkaddr=v[11], feature_incompat=v[14], u1=v[15],
                   extra_devices=v[16], devt_slotoff=v[17])


@dataclasses.dataclass
class ExtSuperBlock:
    flags: int
    chunk_size: int
    blob_table_offset: int = 0
    blob_table_size: int = 0
    chunk_table_offset: int = 0
    chunk_table_size: int = 0
    prefetch_table_offset: int = 0
    prefetch_table_size: int = 0

    def pack(self) -> bytes:
        return _EXT.pack(self.flags, self.blob_table_offset, self.blob_table_size, self.chunk_size,
                         self.chunk_table_offset, self.chunk_table_size, self.prefetch_table_offset,
                         self.prefetch_table_size, 0, bytes(200))

    @classmethod
    def unpack(cls, buf: bytes) -> "ExtSuperBlock":
        v = _EXT.unpack_from(buf, EXT_SB_OFFSET)
        return cls(flags=v[0], blob_table_offset=v[1], blob_table_size=v[2], chunk_size=v[3],
                   chunk_table_offset=v[4], chunk_table_size=v[5], prefetch_table_offset=v[6],
                   prefetch_table_size=v[7])


def pack_device(blob_id: str, blocks: int, mapped_blkaddr: int) -> bytes:
    return _DEV.pack(blob_id.encode("ascii"), blocks, mapped_blkaddr, bytes(56))


def unpack_device(buf: bytes, offset: int) -> tuple[str, int, int]:
    blob_id, blocks, mapped, _ = _DEV.unpack_from(buf, offset)
    return blob_id.rstrip(b"\0").decode("ascii", "replace"), blocks, mapped


@dataclasses.dataclass
class BlobEntry:
    """One RafsV6Blob (v6.rs:1398-1446): what a bootstrap knows about a data blob."""

    blob_id: str
    blob_index: int
    chunk_size: int
    chunk_count: int
    compressor: str
    digester: str
    features: int
    compressed_size: int
    uncompressed_size: int
    ci_compressor: str
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    blob_toc_size: int = 0
    blob_toc_digest: bytes = bytes(32)
    blob_meta_digest: bytes = bytes(32)
    blob_meta_size: int = 0

    def pack(self) -> bytes:
        return _BLOB.pack(self.blob_id.encode("ascii"), self.blob_index, self.chunk_size, self.chunk_count,
                          COMPRESSOR_IDS[self.compressor], DIGESTER_IDS[self.digester], self.features,
                          self.compressed_size, self.uncompressed_size, self.blob_toc_size,
                          COMPRESSOR_IDS[self.ci_compressor], self.ci_offset, self.ci_compressed_size,
                          self.ci_uncompressed_size, self.blob_toc_digest, self.blob_meta_digest,
                          self.blob_meta_size, bytes(8), 0, bytes(36))

    @classmethod
    def unpack(cls, buf: bytes, offset: int) -> "BlobEntry":
        v = _BLOB.unpack_from(buf, offset)
        return cls(blob_id=v[0].rstrip(b"\0").decode("ascii", "replace"), blob_index=v[1], chunk_size=v[2],
                   chunk_count=v[3], compressor=_name(COMPRESSOR_IDS, v[4], "compressor"),
                   digester=_name(DIGESTER_IDS, v[5], "digester"), features=v[6], compressed_size=v[7],
                   uncompressed_size=v[8], blob_toc_size=v[9], ci_compressor=_name(COMPRESSOR_IDS, v[10], "ci compressor"),
                   ci_offset=v[11], ci_compressed_size=v[12], ci_uncompressed_size=v[13],
                   blob_toc_digest=v[14], blob_meta_digest=v[15], blob_meta_size=v[16])


def _name(table: dict[str, int], number: int, what: str) -> str:
    for name, value in table.items():
        if value == number:
            return name
    raise RafsError(f"unknown {what} {number}")


# -- chunk table entry (80 B) and blob.meta chunk info --------------------------------------------------

_CHUNK = struct.Struct("<32sIIIIQQQII")


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a blob: where it is (compressed and uncompressed) and what it hashes to."""

    digest: bytes
    blob_index: int
    index: int                  # position in the blob's chunk-info array (blob.meta)
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    crc32: int | None = None    # CRC-32C of the uncompressed chunk, when recorded

    @property
    def compressed(self) -> bool:
        return self.compressed_size != self.uncompressed_size

    def pack_table_entry(self, file_offset: int = 0) -> bytes:
        flags = (CHUNK_COMPRESSED if self.compressed else 0) | (CHUNK_HAS_CRC32 if self.crc32 is not None else 0)
        return _CHUNK.pack(self.digest, self.blob_index, flags, self.compressed_size, self.uncompressed_size,
                           self.compressed_offset, self.uncompressed_offset, file_offset, self.index,
                           self.crc32 or 0)


def unpack_chunk_entry(buf: bytes, offset: int) -> tuple[Chunk, int, int]:
    """A chunk table entry: (chunk, flags, file_offset)."""
    digest, blob_index, flags, csize, usize, coff, uoff, foff, index, crc = _CHUNK.unpack_from(buf, offset)
    chunk = Chunk(digest, blob_index, index, coff, csize, uoff, usize, crc if flags & CHUNK_HAS_CRC32 else None)
    return chunk, flags, foff


def pack_ci_v1(chunk: Chunk) -> bytes:
    """BlobChunkInfoV1Ondisk (storage/src/meta/chunk_info_v1.rs:8-100)."""
    usize, csize = chunk.uncompressed_size - 1, chunk.compressed_size - 1
    if chunk.uncompressed_offset % BLOCK_SIZE or usize >= 1 << 24 or csize >= 1 << 24:
        raise RafsError(f"chunk {chunk.index} cannot be encoded in a v1 chunk info")
    uncomp = (chunk.uncompressed_offset & 0xFFF_FFFF_F000) | ((usize & 0xFFFFF) << 44) | ((usize >> 20) << 8)
    comp = (chunk.compressed_offset & 0xFF_FFFF_FFFF) | ((csize & 0xFFFFF) << 44) | ((csize >> 20) << 40)
    return struct.pack("<QQ", uncomp, comp)


def unpack_ci(buf: bytes, index: int, v2: bool) -> tuple[int, int, int, int]:
    """(compressed_offset, compressed_size, uncompressed_offset, uncompressed_size) of chunk ``index``."""
    if v2:
        uncomp, comp, _data = struct.unpack_from("<QQQ", buf, index * CI_V2_SIZE)
        return comp & 0xFF_FFFF_FFFF, comp >> 40, (uncomp & 0xFFFF_FFFF) << 12, ((uncomp >> 32) & 0xFF_FFFF) + 1
    uncomp, comp = struct.unpack_from("<QQ", buf, index * CI_V1_SIZE)
    usize = ((uncomp >> 44) | (((uncomp >> 8) & 0xF) << 20)) + 1
    csize = ((comp >> 44) | (((comp >> 40) & 0xF) << 20)) + 1
    return comp & 0xFF_FFFF_FFFF, csize, uncomp & 0xFFF_FFFF_F000, usize


_META = struct.Struct("<IIIIQQQQQI")


@dataclasses.dataclass
class MetaHeader:
    """BlobCompressionContextHeader, 4096 bytes (storage/src/meta/mod.rs:90-114)."""

    features: int
    ci_compressor: str
    ci_entries: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    zran_offset: int = 0
    zran_size: int = 0
    zran_count: int = 0

    def pack(self) -> bytes:
        head = _META.pack(META_MAGIC, self.features, COMPRESSOR_IDS[self.ci_compressor], self.ci_entries,
                          self.ci_offset, self.ci_compressed_size, self.ci_uncompressed_size, self.zran_offset,
                          self.zran_size, self.zran_count)
        return head + bytes(META_HEADER_SIZE - 4 - len(head)) + struct.pack("<I", META_MAGIC)

    @classmethod
    def unpack(cls, buf: bytes) -> "MetaHeader":
        if len(buf) != META_HEADER_SIZE:
            raise RafsError(f"blob.meta header is {len(buf)} bytes, not {META_HEADER_SIZE}")
        v = _META.unpack_from(buf, 0)
        if v[0] != META_MAGIC or struct.unpack_from("<I", buf, 4092)[0] != META_MAGIC:
            raise RafsError("blob.meta header has a bad magic")
        return cls(features=v[1], ci_compressor=_name(COMPRESSOR_IDS, v[2], "ci compressor"), ci_entries=v[3],
                   ci_offset=v[4], ci_compressed_size=v[5], ci_uncompressed_size=v[6], zran_offset=v[7],
                   zran_size=v[8], zran_count=v[9])


# -- TOC entries and the GNU tar headers nydus writes after each part ---------------------------------

_TOC = struct.Struct("<II16s32sQQQ48s")


@dataclasses.dataclass(frozen=True)
class TocEntry:
    name: str
    compressor: str
    digest: bytes               # sha256 of the uncompressed content
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int

    def pack(self) -> bytes:
        return _TOC.pack(TOC_FLAGS[self.compressor], 0, self.name.encode(), self.digest, self.compressed_offset,
                         self.compressed_size, self.uncompressed_size, bytes(48))

    @classmethod
    def unpack(cls, buf: bytes, offset: int) -> "TocEntry":
        flags, _, name, digest, coff, csize, usize, _ = _TOC.unpack_from(buf, offset)
        return cls(name.rstrip(b"\0").decode("ascii", "replace"), _name(TOC_FLAGS, flags, "TOC compressor"),
                   digest, coff, csize, usize)


def tar_header(name: str, size: int) -> bytes:
    """The GNU header nydus writes *after* a part: name, size, mtime 0, type '0', other fields zero
    (Header::new_gnu + set_size/set_mtime/set_cksum in builder/src/core/context.rs:862-889)."""
    block = bytearray(TAR_BLOCK)
    block[0:len(name)] = name.encode()
    if size < 8 ** 11:
        block[124:136] = b"%011o\0" % size
    else:  # GNU base-256, as the tar crate writes sizes that do not fit 11 octal digits
        block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"%011o\0" % 0
    block[156:157] = b"0"
    block[257:265] = b"ustar  \0"
    block[148:156] = b" " * 8
    block[148:156] = b"%07o\0" % sum(block)
    return bytes(block)


def parse_tar_header(block: bytes) -> tuple[str, int]:
    """(name, size) of a header :func:`tar_header` wrote; refuses anything else."""
    if len(block) != TAR_BLOCK or block[257:263] not in (b"ustar ", b"ustar\0"):
        raise RafsError("expected a tar header after a blob part")
    check = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if _octal(block[148:156]) != check:
        raise RafsError("bad checksum in a blob part's tar header")
    field = block[124:136]
    size = int.from_bytes(field[1:], "big") if field[0] & 0x80 else _octal(field)
    return block[:100].rstrip(b"\0").decode("utf-8", "replace"), size


def _octal(field: bytes) -> int:
    digits = field.rstrip(b"\0 ").lstrip(b" ") or b"0"
    if not all(0x30 <= c <= 0x37 for c in digits):
        raise RafsError(f"bad octal number {field!r} in a blob part's tar header")
    return int(digits, 8)
