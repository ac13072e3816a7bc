"""The nydus blob and bootstrap writer: the layout nydus-image writes, streaming, and refusals of bad input."""
from __future__ import annotations

import hashlib
import io
import stat
import tracemalloc

import pytest

from acceleration_sdk.errors import LayerError
from drivers.nydus import layout as L
from drivers.nydus.blobfile import BlobFile
from drivers.nydus.builder import BuildOptions, convert_layer, merge_bootstrap
from drivers.nydus.layout import RafsError
from drivers.nydus.reader import Rafs
from drivers.nydus.validate import validate
from tests.drivers.nydus_oracle import feature_layer, three_layers
from tests.support import tars

OPTS = BuildOptions(chunk_size=0x1000)


def convert(tmp_path, entries, opts=OPTS, position=0, name="blob"):
    path = tmp_path / name
    with open(path, "wb") as sink:
        result = convert_layer(io.BytesIO(tars.build_tar(entries)), sink, opts, position)
    return result, BlobFile(path), path


def test_blob_parts_are_in_nydus_order_each_with_its_tar_header(tmp_path):
    data = tars.payload(10_000, "x")
    result, blob, path = convert(tmp_path, [tars.reg("a", data), tars.reg("b", b"b" * 5000)])
    raw = path.read_bytes()
    assert result.blob.digest == "sha256:" + hashlib.sha256(raw).hexdigest() and result.blob.size == len(raw)
    toc = list(blob.toc.values())
    assert [e.name for e in toc] == ["image.blob", "blob.meta", "blob.meta.header", "blob.digest", "image.boot"]
    # each part is followed by its header; parts follow each other with nothing in between
    image_blob = blob.toc["image.blob"]
    assert image_blob.compressed_offset == 0 and raw[image_blob.compressed_size:][:512] == L.tar_header(
        "image.blob", image_blob.compressed_size)
    meta, header = blob.toc["blob.meta"], blob.toc["blob.meta.header"]
    assert meta.compressed_offset == image_blob.compressed_size + 512
    assert header.compressed_offset == meta.compressed_offset + meta.compressed_size
    digest = blob.toc["blob.digest"]
    assert digest.compressed_offset == header.compressed_offset + 4096 + 512
    boot = blob.toc["image.boot"]
    assert boot.compressed_offset == digest.compressed_offset + digest.compressed_size + 512
    assert boot.compressor == "zstd" and raw[-512:] == L.tar_header("rafs.blob.toc", 5 * 128)
    assert len(raw) == boot.compressed_offset + boot.compressed_size + 512 + 5 * 128 + 512
    blob.verify("zstd", "blake3")
    # 10,000 random bytes = 3 chunks, 5,000 b's = 2 chunks
    assert blob.chunk_count == 5 and result.blob.entry.chunk_count == 5
    assert result.blob.entry.compressed_size == boot.compressed_offset   # position when the bootstrap was dumped
    assert result.blob.entry.features == L.LAYER_BLOB_FEATURES == blob.header.features
    merged = result.blob.merged_entry(0)
    assert merged.blob_id == result.blob.digest[7:] and not merged.features & L.B_INLINED_FS_META
    # image/<hex>.blob.meta of the bootstrap layer: the uncompressed ci array, zero pad, then the header
    assert result.blob.blob_meta == blob.ci + bytes(4096 - len(blob.ci)) + raw[header.compressed_offset:][:4096]


def test_per_layer_bootstrap_names_the_inline_blob(tmp_path):
    result, blob, _ = convert(tmp_path, [tars.reg("f", b"data")])
    own = Rafs(blob.bootstrap)
    assert [b.blob_id for b in own.blobs] == ["x" * 64] and own.devices[0][0] == "x" * 64
    assert blob.bootstrap == result.blob.bootstrap
    validate(own, {"x" * 64: blob}, strict=True)


def test_chunks_deduplicate_and_incompressible_ones_are_stored_raw(tmp_path):
    random = tars.payload(3 * 0x1000, "r")
    text = tars.payload(3 * 0x1000, text=True)
    result, blob, _ = convert(tmp_path, [tars.reg("r1", random), tars.reg("r2", random), tars.reg("t", text)])
    assert blob.chunk_count == 6            # r2 reuses r1's three chunks
    rafs = Rafs(merge_bootstrap([result], OPTS))
    validate(rafs, {result.blob.digest[7:]: blob}, strict=True)
    nodes = dict(rafs.walk())
    assert rafs.file_chunks(nodes["r1"]) == rafs.file_chunks(nodes["r2"]) and nodes["r1"].nid != nodes["r2"].nid
    raw = [c for c in rafs.file_chunks(nodes["r1"])]
    assert all(not c.compressed for c in raw)                       # random data: stored as is
    assert all(c.compressed for c in rafs.file_chunks(nodes["t"]))  # text: zstd frames
    flags = {c.index: f for c, f, _o in rafs.chunks}
    assert all(f & L.CHUNK_HAS_CRC32 for f in flags.values())


def test_contiguous_files_are_one_extent_for_the_kernel(tmp_path):
    size = 5 * 0x1000 + 1
    result, _, _ = convert(tmp_path, [tars.reg("big", tars.payload(size, "big")), tars.reg("small", b"s")])
    rafs = Rafs(merge_bootstrap([result], OPTS))
    nodes = dict(rafs.walk())
    # chunk bits = log2(next_power_of_two(size)) - 12, as builder/src/core/v6.rs:456-503 writes them
    assert nodes["big"].i_u == L.CHUNK_FORMAT_INDEXES | (15 - 12)
    assert nodes["small"].i_u == L.CHUNK_FORMAT_INDEXES | 0
    assert len(rafs.chunk_addrs(nodes["big"])) == 6                 # nydusd still indexes by the fs chunk size


def test_merged_blob_table_drops_unused_blobs_and_orders_by_first_use(tmp_path):
    r0, b0, _ = convert(tmp_path, [tars.reg("z/old", b"lower file")], name="b0")
    r1, b1, _ = convert(tmp_path, [tars.directory("meta-only")], position=1, name="b1")
    r2, b2, _ = convert(tmp_path, [tars.reg("a", b"upper file")], position=2, name="b2")
    assert r1.blob.entry is None and "image.blob" not in b1.toc and "blob.meta" not in b1.toc
    validate(Rafs(b1.bootstrap), strict=True)                       # a layer without data: no blob at all
    rafs = Rafs(merge_bootstrap([r0, r1, r2], OPTS))
    assert [b.blob_id for b in rafs.blobs] == [r2.blob.digest[7:], r0.blob.digest[7:]]   # "a" comes before "z/old"
    validate(rafs, {r0.blob.digest[7:]: b0, r2.blob.digest[7:]: b2}, strict=True)
    r3, _b3, _ = convert(tmp_path, [tars.reg("z/.wh.old")], position=3, name="b3")
    rafs = Rafs(merge_bootstrap([r0, r1, r2, r3], OPTS))
    assert [b.blob_id for b in rafs.blobs] == [r2.blob.digest[7:]]


def test_explicit_uid_gid_only_when_an_entry_is_not_root_owned(tmp_path):
    root_only, _, _ = convert(tmp_path, [tars.reg("f", b"x")])
    assert not Rafs(merge_bootstrap([root_only], OPTS)).explicit_uid_gid
    owned, _, _ = convert(tmp_path, [tars.reg("f", b"x", gid=5)], name="b2")
    rafs = Rafs(merge_bootstrap([owned], OPTS))
    assert rafs.explicit_uid_gid
    broken = bytearray(rafs.buf)
    broken[L.EXT_SB_OFFSET:L.EXT_SB_OFFSET + 8] = (rafs.ext.flags & ~L.F_EXPLICIT_UID_GID).to_bytes(8, "little")
    with pytest.raises(RafsError, match="EXPLICIT_UID_GID"):
        validate(Rafs(bytes(broken)), strict=True)


def test_big_directories_span_blocks_sorted(tmp_path):
    names = [f"file-with-a-longish-name-{i:05d}" for i in range(400)]   # ~17 KiB of dirents: 5 blocks
    result, _, _ = convert(tmp_path, [tars.reg(f"d/{n}", b"") for n in names] + [tars.symlink("l", "t" * 4095)])
    rafs = Rafs(merge_bootstrap([result], OPTS))
    validate(rafs, strict=True)
    nodes = dict(rafs.walk())
    assert nodes["d"].size > 4 * 4096 and sorted(p for p in nodes if p.startswith("d/")) == [f"d/{n}" for n in names]
    assert rafs.symlink(nodes["l"]) == b"t" * 4095


def test_a_layer_streams_through_without_being_held(tmp_path):
    """16 MiB of file data through a non-seekable source and a write-only sink: peak memory stays a few chunks."""
    opts = BuildOptions(chunk_size=0x10_0000)
    sink = tars.HashingSink()
    tracemalloc.start()
    try:
        result = convert_layer(tars.IterStream(tars.generated_layer(16 << 20, file_size=4 << 20)), sink, opts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.digest == result.blob.digest and sink.size == result.blob.size
    assert peak < 8 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize("name", sorted(tars.hostile_tars()))
def test_hostile_layers_are_refused(name):
    with pytest.raises(LayerError):
        convert_layer(io.BytesIO(tars.hostile_tars()[name]), io.BytesIO(), OPTS)


def test_a_layer_tree_keeps_what_the_tar_says_as_nydus_keeps_it():
    """Through the SDK's tar reader: name bytes that are not UTF-8, PAX times cut to their floor second, the
    layer root's own attributes, ``/`` and ``./`` prefixes, PAX global xattrs, GNU long names, hard links."""
    glob_rec = tars.pax_record("SCHILY.xattr.user.g", b"\xff\x00bin")
    layer = b"".join([
        tars.directory("./", mode=0o700, uid=7, mtime=1_600_000_000).to_bytes(),
        tars.raw_header(b"caf\xe9", size=0),
        tars.reg("/abs/f", b"x", mtime=1_700_000_000.75).to_bytes(),
        tars.reg("./old", b"y", mtime=-1.25).to_bytes(),
        tars.raw_header("././@GlobalHead", b"g", len(glob_rec)), glob_rec, bytes(-len(glob_rec) % tars.BLOCK),
        tars.reg("g/" + "L" * 200, b"long", format=tars.GNU).to_bytes(),
        tars.hardlink("abs/link", "/abs/f").to_bytes(),
    ]) + tars.END_OF_ARCHIVE
    root = convert_layer(io.BytesIO(layer), io.BytesIO(), OPTS).root
    assert (root.mode, root.uid, root.mtime) == (0o700, 7, 1_600_000_000)
    assert b"caf\xe9" in root.children
    f = root.children[b"abs"].children[b"f"]
    assert f.mtime == 1_700_000_000 and root.children[b"old"].mtime == -2
    assert root.children[b"abs"].children[b"link"] is f and not f.xattrs
    long = root.children[b"g"].children[b"L" * 200]
    assert long.size == 4 and long.xattrs == {b"user.g": b"\xff\x00bin"}


@pytest.mark.parametrize("entry", [tars.reg("d/" + "n" * 256, b"x"), tars.symlink("l", "t" * 4096)],
                         ids=["name-256", "target-4096"])
def test_names_linux_cannot_hold_are_refused(entry):
    with pytest.raises(LayerError, match="longer than"):
        convert_layer(io.BytesIO(tars.build_tar([entry])), io.BytesIO(), OPTS)


def test_ids_beyond_32_bits_are_refused_like_nydus_image():
    layer = tars.build_tar([tars.reg("f", b"x", gid=(1 << 33) + 5, format=tars.GNU)])
    with pytest.raises(LayerError, match="32 bits"):
        convert_layer(io.BytesIO(layer), io.BytesIO(), OPTS)


@pytest.mark.parametrize("kwargs, message", [
    (dict(chunk_size=0x3000), "power of two"), (dict(chunk_size=0x800), "power of two"),
    (dict(chunk_size=0x200_0000), "power of two"), (dict(compressor="gzip"), "compressor"),
    (dict(digester="md5"), "digester"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(RafsError, match=message):
        BuildOptions(**kwargs)


def test_every_node_is_an_extended_inode_with_its_mtime(tmp_path):
    result, _, _ = convert(tmp_path, [tars.reg("f", b"x", mtime=1_234_567_890), tars.chardev("c", 4, 5)])
    rafs = Rafs(merge_bootstrap([result], OPTS))
    nodes = dict(rafs.walk())
    assert all(n.extended for n in nodes.values())
    assert nodes["f"].mtime == 1_234_567_890 and nodes["c"].rdev == (4, 5) and stat.S_ISCHR(nodes["c"].mode)


def test_a_cached_blob_merges_exactly_like_a_fresh_conversion(tmp_path):
    """The layer cache path: trees rebuilt from each blob's image.boot give the byte-identical bootstrap."""
    from drivers.nydus.builder import layer_from_blob
    layers = [feature_layer()] + three_layers()
    fresh, paths = [], []
    for position, layer in enumerate(layers):
        paths.append(tmp_path / f"b{position}")
        with open(paths[-1], "wb") as sink:
            fresh.append(convert_layer(io.BytesIO(layer), sink, OPTS, position))
    cached = [layer_from_blob(path, position, OPTS) for position, path in enumerate(paths)]
    assert [c.blob.digest for c in cached] == [f.blob.digest for f in fresh]
    assert [c.blob.blob_meta for c in cached] == [f.blob.blob_meta for f in fresh]
    assert merge_bootstrap(cached, OPTS) == merge_bootstrap(fresh, OPTS)
    with pytest.raises(RafsError, match="built with"):
        layer_from_blob(paths[0], 0, BuildOptions(chunk_size=0x2000))


def test_parallel_chunking_writes_the_same_bytes(tmp_path):
    layer = feature_layer()
    outputs = []
    for workers in (1, 3):
        sink = io.BytesIO()
        result = convert_layer(io.BytesIO(layer), sink, BuildOptions(chunk_size=0x1000, workers=workers))
        outputs.append((sink.getvalue(), merge_bootstrap([result], OPTS)))
    assert outputs[0] == outputs[1]
    with pytest.raises(LayerError):   # a refusal halfway stops the pool too
        convert_layer(io.BytesIO(tars.hostile_tars()["truncated-in-payload"]), io.BytesIO(),
                      BuildOptions(chunk_size=0x1000, workers=3))


@pytest.mark.parametrize("part, message", [
    ("chunk", "digest does not match|does not decompress"), ("blob.digest", "blob.digest"),
    ("blob.meta.header", "magic|disagree"), ("image.boot", "sha256 does not match|does not decompress"),
])
def test_a_corrupted_blob_is_caught(tmp_path, part, message):
    result, blob, path = convert(tmp_path, [tars.reg("t", tars.payload(9000, text=True))])
    raw = bytearray(path.read_bytes())
    at = {"chunk": 5, "blob.digest": blob.toc["blob.digest"].compressed_offset + 3,
          "blob.meta.header": blob.toc["blob.meta.header"].compressed_offset,
          "image.boot": blob.toc["image.boot"].compressed_offset + 20}[part]
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    rafs = Rafs(merge_bootstrap([result], OPTS))
    with pytest.raises(RafsError, match=message):
        validate(rafs, {result.blob.digest[7:]: BlobFile(path)})


def test_a_wrong_crc_in_the_chunk_table_is_caught(tmp_path):
    result, blob, _ = convert(tmp_path, [tars.reg("t", b"some data")])
    buf = bytearray(merge_bootstrap([result], OPTS))
    rafs = Rafs(bytes(buf))
    crc_at = rafs.ext.chunk_table_offset + 76                   # u32 crc32 of the first chunk table entry
    buf[crc_at] ^= 0x01
    with pytest.raises(RafsError, match="crc32c"):
        validate(Rafs(bytes(buf)), {result.blob.digest[7:]: blob})
