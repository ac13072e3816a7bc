"""OCI-ref ("zran") nydus blob layers: the gzip layer stays as it is, the nydus layer only describes it.

    result = convert_ref_layer(gzip_stream, sink, chunk_size=0x100000)   # one inflate pass
    boot = merge_ref_bootstrap([result, ...], chunk_size, prefetch)     # chunks point into the gzip layers
    blob = RefBlob(rafs_blob_path)                                       # read it back, with the gzip layer
    data = blob.read_chunk(gzip_file, ci_index)

What ``nydus-image create --type targz-ref --blob-inline-meta --features blob-toc`` writes (NYDUS.md section 4):
no chunk data (SEPARATE), so the blob is ``blob.meta`` (zstd: chunk info v2 with the ZRAN flag, then the
checkpoint contexts and their 32 KiB windows) + its 4 KiB header, ``blob.digest`` (sha256 per chunk),
``image.boot`` and the TOC, each followed by its tar header. The blob id in both bootstraps is the *source*
layer's digest (the gzip's sha256, nydusd fetches the gzip by it); the merged bootstrap also names the nydus
blob layer (``blob_meta_digest``/``blob_meta_size``, where nydusd fetches blob.meta) and its TOC's sha256
(``blob_toc_digest``, entries without their tar header, as nydus-snapshotter computes it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import BinaryIO

from . import codec
from . import layout as L
from .blob import BlobResult, check_chunk_size
from .blobfile import BlobFile
from .bootstrap import build_bootstrap
from .builder import LayerResult, blob_order
from .layout import Chunk, RafsError
from .reader import Rafs
from .tree import from_bootstrap, ingest_layer, merge
from .validate import validate
from .zran import ZranIndex, ZranInflater
from .zranctx import decode_context, pack_contexts, unpack_contexts

COMPRESSOR, DIGESTER = "gzip", "sha256"    # targz-ref forces both (src/bin/nydus-image/main.rs:1070-1091)
# tar-rafs's features + CHUNK_INFO_V2 | SEPARATE (main.rs:1349-1357) + ZRAN (builder/src/tarball.rs:139-155)
ZRAN_BLOB_FEATURES = L.LAYER_BLOB_FEATURES | L.B_CHUNK_INFO_V2 | L.B_SEPARATE | L.B_ZRAN
CI_COMPRESSED, CI_ZRAN = 0x1, 0x2          # chunk info v2 flags, bits 56-63 (chunk_info_v2.rs:17-23)
REF_ANNOTATION = "containerd.io/snapshot/nydus-ref"   # nydus-snapshotter pkg/label/label.go
WRITE_SIZE = 1 << 20                       # pieces handed to the sink (its upload buffers what it is given)


@dataclasses.dataclass
class RefBlobResult(BlobResult):
    """A zran blob: ``digest``/``size`` are the nydus blob layer's, ``source`` the gzip layer's digest."""

    source: str = ""
    source_size: int = 0
    toc_digest: bytes = bytes(32)

    def merged_entry(self, blob_index: int) -> L.BlobEntry:
        """The merged bootstrap's entry (builder/src/merge.rs:212-249, snapshotter convert_unix.go:602-612)."""
        return dataclasses.replace(self.entry, blob_id=self.source.split(":", 1)[1], blob_index=blob_index,
                                   features=self.entry.features & ~L.B_INLINED_FS_META,
                                   blob_meta_digest=bytes.fromhex(self.digest.split(":", 1)[1]),
                                   blob_meta_size=self.size, blob_toc_digest=self.toc_digest, blob_toc_size=0)


_V2 = struct.Struct("<QQQ")   # BlobChunkInfoV2Ondisk: uncomp_info, comp_info, data


class _Sink:
    """Writes the RAFS blob and hashes it (its sha256 is the nydus blob layer's digest)."""

    def __init__(self, sink: BinaryIO):
        self.sink, self.sha, self.pos, self.toc = sink, hashlib.sha256(), 0, []

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.pos += len(data)
        for at in range(0, len(data), WRITE_SIZE):   # the sink streams to the registry: hand it small pieces
            self.sink.write(data[at:at + WRITE_SIZE] if len(data) > WRITE_SIZE else data)

    def part(self, name: str, data: bytes | tuple[bytes, ...], entries: list[L.TocEntry] = ()) -> None:
        pieces = data if isinstance(data, tuple) else (data,)
        for piece in pieces:
            self.write(piece)
        self.write(L.tar_header(name, sum(len(p) for p in pieces)))
        self.toc += entries


def convert_ref_layer(raw: BinaryIO, sink: BinaryIO, chunk_size: int, position: int = 0,
                      source: str | None = None) -> LayerResult:
    """Read the gzip layer ``raw`` once (inflated, tar parsed, checkpoints chosen per chunk) and write its
    zran nydus blob to ``sink``. Chunks are deduplicated by sha256 inside the layer, as nydus-image does.
    ``source``: the layer's digest when the caller verifies it (the engine's provider does), else it is hashed."""
    check_chunk_size(chunk_size)
    inflater = ZranInflater(raw, hashing=source is None)
    index = ZranIndex(inflater)
    seen: dict[bytes, Chunk] = {}
    infos: list[tuple[Chunk, int, int]] = []   # (chunk, context, offset in its slice) per chunk info
    end = [0]                                  # 4K-aligned end of the uncompressed (device) address space

    def add_file(reader, size: int) -> list[Chunk]:
        out, left = [], size
        while left:
            want = min(left, chunk_size)
            index.begin(reader.pos, chunk_size)
            data = reader.read(want)
            if len(data) != want:
                raise RafsError(f"file data ends {want - len(data)} bytes early")
            z = index.end(reader.pos)
            digest = hashlib.sha256(data).digest()
            chunk = seen.get(digest)
            if chunk is None:
                chunk = Chunk(digest, position, len(infos), z.in_pos, z.in_len, end[0], want, codec.crc32c(data))
                seen[digest] = chunk
                infos.append((chunk, z.index, z.offset))
                end[0] = L.align(end[0] + want, L.BLOCK_SIZE)
            out.append(chunk)
            left -= want
        return out

    try:
        root = ingest_layer(inflater, add_file)
        while inflater.read(1 << 20):   # the tar's end-of-archive padding, to the gzip's end
            pass
        index.settle()
    finally:
        inflater.close()
    source = source or "sha256:" + inflater.sha.hexdigest()
    out = _Sink(sink)
    entry, blob_meta = None, b""
    if infos:
        # contexts no stored chunk uses (their chunk was a duplicate) are dropped: nydusd wants at most one
        # context per chunk info (meta/mod.rs:935-951)
        used = sorted({ctx for _c, ctx, _o in infos})
        renumber = {old: new for new, old in enumerate(used)}
        contexts = [index.contexts[i] for i in used]
        index.contexts.clear()
        # 32 KiB per checkpoint (a 1 GiB layer: ~17 MB): as few copies as possible are alive at once
        ci = b"".join(_V2.pack(*_v2_words(c, renumber[ctx], off)) for c, ctx, off in infos)
        ci_data = b"".join([ci, pack_contexts(contexts)])
        zran_size, zran_count = len(ci_data) - len(ci), len(contexts)
        del contexts
        packed = codec.Compressor("zstd").compress(ci_data)   # zstd for every *-ref blob (blob.rs:162-168)
        ci_compressor = "zstd" if packed is not ci_data else "none"
        header = L.MetaHeader(ZRAN_BLOB_FEATURES, ci_compressor, len(infos), 0, len(packed), len(ci_data),
                              zran_offset=len(ci), zran_size=zran_size, zran_count=zran_count)
        header_bytes = header.pack()
        out.part(L.TOC_BLOB_META, (packed, header_bytes), [
            L.TocEntry(L.TOC_BLOB_META, ci_compressor, hashlib.sha256(ci_data).digest(), 0, len(packed),
                       len(ci_data)),
            L.TocEntry(L.TOC_BLOB_META_HEADER, "none", hashlib.sha256(header_bytes).digest(), len(packed),
                       len(header_bytes), len(header_bytes))])
        digests = b"".join(c.digest for c, _ctx, _off in infos)
        out.part(L.TOC_BLOB_DIGEST, digests, [L.TocEntry(L.TOC_BLOB_DIGEST, "none", hashlib.sha256(digests).digest(),
                                                         out.pos, len(digests), len(digests))])
        entry = L.BlobEntry(source.split(":", 1)[1], 0, chunk_size, len(infos), COMPRESSOR, DIGESTER,
                            ZRAN_BLOB_FEATURES, inflater.size, end[0], ci_compressor, 0, len(packed), len(ci_data))
        del packed
        blob_meta = b"".join([ci_data, bytes(-len(ci_data) % L.BLOCK_SIZE), header_bytes])
        del ci_data
    boot = build_bootstrap(root, [entry] if entry else [], blob_of_layer={position: 0}, compressor=COMPRESSOR,
                           digester=DIGESTER, chunk_size=chunk_size)
    packed = codec.Compressor("zstd").compress(boot)
    at = out.pos
    out.part(L.TOC_BOOTSTRAP, packed, [L.TocEntry(L.TOC_BOOTSTRAP, "zstd" if packed is not boot else "none",
                                                  hashlib.sha256(boot).digest(), at, len(packed), len(boot))])
    toc = b"".join(e.pack() for e in out.toc)
    out.part(L.TOC_NAME, toc)
    result = RefBlobResult("sha256:" + out.sha.hexdigest(), out.pos, entry, blob_meta, boot, source=source,
                           source_size=inflater.size, toc_digest=hashlib.sha256(toc).digest())
    return LayerResult(result, root)


def _v2_words(chunk: Chunk, ctx: int, offset: int) -> tuple[int, int, int]:
    if chunk.compressed_offset >= 1 << 40 or chunk.compressed_size >= 1 << 24:
        raise RafsError(f"chunk {chunk.index}: gzip offset/size do not fit a v2 chunk info")
    uncomp = (chunk.uncompressed_offset >> 12) | ((chunk.uncompressed_size - 1) << 32) | (
        (CI_COMPRESSED | CI_ZRAN) << 56)
    return uncomp, chunk.compressed_offset | (chunk.compressed_size << 40), (ctx << 32) | offset


def merge_ref_bootstrap(layers: list[LayerResult], chunk_size: int, prefetch: tuple[str, ...] = ()) -> bytes:
    """The merged bootstrap of zran layers (lowest first): gzip/sha256, blob ids = the source layers'."""
    merged = merge([layer.root for layer in layers])
    order = blob_order(merged)
    entries = [layers[p].blob.merged_entry(i) for i, p in enumerate(order)]
    return build_bootstrap(merged, entries, blob_of_layer={p: i for i, p in enumerate(order)},
                           compressor=COMPRESSOR, digester=DIGESTER, chunk_size=chunk_size, prefetch=list(prefetch))


class RefBlob(BlobFile):
    """A zran nydus blob read back: its TOC parts, chunk infos, ZRAN contexts and per-layer bootstrap."""

    def __init__(self, path):
        super().__init__(path)
        self.contexts = []
        h = self.header
        if h is not None:
            if not h.features & L.B_ZRAN or not h.features & L.B_CHUNK_INFO_V2:
                raise RafsError("blob.meta is not a ZRAN chunk-info v2 table")
            if h.zran_offset != h.ci_entries * L.CI_V2_SIZE or h.zran_offset + h.zran_size > len(self.ci) \
                    or h.zran_count > h.ci_entries:
                raise RafsError("blob.meta header: ZRAN table offset/size/count break nydusd's rules "
                                "(storage/src/meta/mod.rs:935-951)")
            self.contexts = unpack_contexts(self.ci[h.zran_offset:h.zran_offset + h.zran_size], h.zran_count)
        self._slice: tuple[int, bytes] | None = None

    def zran(self, index: int) -> tuple[int, int]:
        """(context index, offset in its slice) of chunk ``index``."""
        data = _V2.unpack_from(self.ci, index * L.CI_V2_SIZE)
        if not (data[0] >> 56) & CI_ZRAN:
            raise RafsError(f"chunk info {index} has no ZRAN flag")
        return data[2] >> 32, data[2] & 0xFFFF_FFFF

    def read_chunk(self, gzip: BinaryIO, index: int, compressor: str = COMPRESSOR) -> bytes:
        """Chunk ``index`` decoded from its checkpoint's slice of ``gzip`` (the source layer, seekable)."""
        ctx_index, offset = self.zran(index)
        _coff, _csize, _uoff, usize = self.chunk(index)
        if ctx_index >= len(self.contexts):
            raise RafsError(f"chunk {index} names ZRAN context {ctx_index} of {len(self.contexts)}")
        ctx = self.contexts[ctx_index]
        if offset + usize > ctx.out_len:
            raise RafsError(f"chunk {index} ({offset}+{usize}) lies outside its {ctx.out_len}-byte slice")
        if self._slice is None or self._slice[0] != ctx_index:
            gzip.seek(ctx.in_offset)
            self._slice = (ctx_index, decode_context(ctx, gzip.read(ctx.in_len)))
        return self._slice[1][offset:offset + usize]

    def write_device(self, out_path, gzip: BinaryIO) -> int:
        """The device file the kernel reads for this blob (chunk i's bytes at its uncompressed offset), built
        from the gzip layer through the ZRAN contexts -- what nydusd's blob cache holds once it is filled."""
        size = self.uncompressed_size
        with open(out_path, "wb") as out:
            out.truncate(size)
            for i in range(self.chunk_count):
                out.seek(self.chunk(i)[2])
                out.write(self.read_chunk(gzip, i))
        return size

    def verify_chunks(self, gzip: BinaryIO, crcs: dict[int, int] | None = None) -> None:
        """Every chunk decoded from the gzip layer and checked against blob.digest (and ``crcs``)."""
        if len(self.digests) != self.chunk_count * L.DIGEST_SIZE:
            raise RafsError(f"blob.digest holds {len(self.digests)} bytes for {self.chunk_count} chunks")
        for i in range(self.chunk_count):
            data = self.read_chunk(gzip, i)
            if hashlib.sha256(data).digest() != self.chunk_digest(i):
                raise RafsError(f"chunk {i}: the bytes its ZRAN context decodes do not match blob.digest")
            if crcs and i in crcs and codec.crc32c(data) != crcs[i]:
                raise RafsError(f"chunk {i}: crc32c does not match the chunk table")


def ref_layer_from_blob(path, position: int, chunk_size: int, digest: str) -> LayerResult:
    """A :class:`LayerResult` for a zran blob converted earlier (a layer-cache hit), from its own image.boot."""
    blob = RefBlob(path)
    if blob.bootstrap is None:
        raise RafsError(f"{path}: the zran blob carries no image.boot")
    rafs = Rafs(blob.bootstrap)
    if (rafs.compressor, rafs.digester, rafs.ext.chunk_size) != (COMPRESSOR, DIGESTER, chunk_size):
        raise RafsError(f"{path}: built with {rafs.compressor}/{rafs.digester}/{rafs.ext.chunk_size:#x}, not a "
                        f"zran blob with chunk size {chunk_size:#x}")
    entry = rafs.blobs[0] if rafs.blobs else None
    blob_meta = blob.ci + bytes(-len(blob.ci) % L.BLOCK_SIZE) + blob.header_bytes if entry else b""
    with open(path, "rb") as fh:   # the TOC's sha256 without its tar header (snapshotter calcBlobTOCDigest)
        fh.seek(blob.toc_offset)
        toc_digest = hashlib.sha256(fh.read(blob.toc_size - L.TAR_BLOCK)).digest()
    source = "sha256:" + entry.blob_id if entry else ""
    result = RefBlobResult(digest, blob.size, entry, blob_meta, blob.bootstrap, source=source,
                           source_size=entry.compressed_size if entry else 0, toc_digest=toc_digest)
    return LayerResult(result, from_bootstrap(rafs, position))


def validate_ref(rafs: Rafs, blobs: dict[str, RefBlob], gzips: dict[str, BinaryIO] | None = None) -> None:
    """``validate.validate`` for a bootstrap whose blobs are zran blobs: nydusd's structure rules, then each
    blob's blob.meta against the blob table and the chunk table, and -- given the gzip layers, by blob id --
    every chunk decoded from its checkpoint and held to its sha256 and crc32c."""
    validate(rafs, strict=True)
    for i, entry in enumerate(rafs.blobs):
        blob, h = blobs.get(entry.blob_id), None
        if blob is None or blob.header is None:
            raise RafsError(f"blob {i} ({entry.blob_id}): no zran blob.meta for it")
        h = blob.header
        if (h.ci_compressor, h.ci_offset, h.ci_compressed_size, h.ci_uncompressed_size, h.ci_entries) != (
                entry.ci_compressor, entry.ci_offset, entry.ci_compressed_size, entry.ci_uncompressed_size,
                entry.chunk_count):
            raise RafsError(f"blob {i}: blob.meta header disagrees with the blob table (meta/mod.rs:869-960)")
        if entry.features & ~L.B_INLINED_FS_META != h.features & ~L.B_INLINED_FS_META or \
                (entry.compressor, entry.digester) != (COMPRESSOR, DIGESTER):
            raise RafsError(f"blob {i}: features {entry.features:#x}/{entry.compressor}/{entry.digester} are not "
                            f"a zran blob's (blob.meta says {h.features:#x})")
        if entry.uncompressed_size != blob.uncompressed_size:
            raise RafsError(f"blob {i}: uncompressed size {entry.uncompressed_size} != {blob.uncompressed_size}")
    crcs: dict[int, dict[int, int]] = {}
    for chunk, _flags, _foff in rafs.chunks:
        blob = blobs[rafs.blobs[chunk.blob_index].blob_id]
        got = blob.chunk(chunk.index)
        want = (chunk.compressed_offset, chunk.compressed_size, chunk.uncompressed_offset, chunk.uncompressed_size)
        if got != want:   # the kernel reads blkaddr, nydusd the ci index: they must name the same bytes
            raise RafsError(f"chunk table entry for blob {chunk.blob_index} ci {chunk.index} disagrees with "
                            f"blob.meta ({want} != {got})")
        if blob.chunk_digest(chunk.index) != chunk.digest:
            raise RafsError(f"chunk {chunk.index} of blob {chunk.blob_index}: digest != blob.digest")
        if chunk.compressed_offset + chunk.compressed_size > rafs.blobs[chunk.blob_index].compressed_size:
            raise RafsError(f"chunk {chunk.index} of blob {chunk.blob_index} ends past the gzip layer")
        if chunk.crc32 is not None:
            crcs.setdefault(chunk.blob_index, {})[chunk.index] = chunk.crc32
    for i, entry in enumerate(rafs.blobs):
        blob = blobs[entry.blob_id]
        for ctx in blob.contexts:
            if ctx.in_offset + ctx.in_len > entry.compressed_size:
                raise RafsError(f"blob {i}: a ZRAN context reads past the gzip layer's {entry.compressed_size} bytes")
        if gzips is not None:
            blob.verify_chunks(gzips[entry.blob_id], crcs.get(i))


def read_ref_layer(path: str, gzip: BinaryIO, keep_data: bool = True):
    """Every entry of a zran blob layer, file bytes decoded from ``gzip`` (the source layer it names) through
    its ZRAN contexts only; the per-layer bootstrap and every chunk are verified first."""
    from .entries import walk_entries

    blob = RefBlob(path)
    if blob.bootstrap is None:
        raise RafsError("the blob carries no image.boot: not a nydus blob layer")
    rafs = Rafs(blob.bootstrap)
    if rafs.blobs:
        gzip.seek(0, 2)
        if rafs.blobs[0].compressed_size != gzip.tell():
            raise RafsError(f"the zran blob describes a {rafs.blobs[0].compressed_size}-byte gzip layer, "
                            f"not this {gzip.tell()}-byte one")
        validate_ref(rafs, {rafs.blobs[0].blob_id: blob}, {rafs.blobs[0].blob_id: gzip})
    else:
        validate(rafs, strict=True)
    yield from walk_entries(rafs, lambda chunk: blob.read_chunk(gzip, chunk.index), keep_data)
