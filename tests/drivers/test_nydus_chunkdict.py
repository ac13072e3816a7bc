"""chunk_dict_ref in the builder: a layer converted against a chunk dict (the merged bootstrap of image A) stores
only the chunks A's blobs do not hold; its files point into A's blob, the merged bootstrap names A's blob, and
every file reads back byte for byte through our reader (and the kernel, one loop device per blob)."""
from __future__ import annotations

import hashlib
import io
import pathlib
import stat
import tarfile

import pytest

from acceleration_sdk.errors import ConversionError
from acceleration_sdk.oci import Descriptor
from drivers.nydus import chunkdict
from drivers.nydus.blobfile import BlobFile
from drivers.nydus.builder import BuildOptions, at_position, convert_layer, layer_from_blob, merge_bootstrap
from drivers.nydus.layout import RafsError
from drivers.nydus.media import BLOB_ANNOTATION, NYDUS_BLOB
from drivers.nydus.reader import Rafs
from drivers.nydus.validate import validate
from tests.drivers.nydus_oracle import compare, device_files, flatten
from tests.support import erofs, tars

needs_kernel = erofs.requires_kernel()
OPTS = BuildOptions(chunk_size=0x1000)
SHARED = tars.payload(6 * 0x1000 + 77, "shared")         # 7 chunks, all in the dict
LIB = tars.payload(5 * 0x1000, "lib")


def image_a() -> bytes:
    return tars.build_tar([tars.directory("usr"), tars.reg("usr/shared", SHARED), tars.reg("usr/lib", LIB),
                           tars.reg("a-only", tars.payload(3 * 0x1000, "a-only"))])


def image_b() -> bytes:
    # lib changed in its middle chunk only; shared as it was, twice (a hard link and a copy); new files
    lib = LIB[:2 * 0x1000] + tars.payload(0x1000, "patched") + LIB[3 * 0x1000:]
    return tars.build_tar([tars.directory("usr"), tars.reg("usr/shared", SHARED),
                           tars.hardlink("usr/shared-link", "usr/shared"), tars.reg("copy", SHARED),
                           tars.reg("usr/lib", lib), tars.reg("b-only", tars.payload(2 * 0x1000 + 9, "b-only")),
                           tars.symlink("s", "usr/shared"), tars.reg("empty", b"")])


def convert(tmp_path, name: str, layer: bytes, cdict=None, position: int = 0):
    path = tmp_path / name
    with open(path, "wb") as sink:
        result = convert_layer(tars.stream(layer, 1000), sink, OPTS, position, chunk_dict=cdict)
    return path, result


def dict_of(tmp_path, layers: list[bytes], opts: BuildOptions = OPTS):
    """Image A converted and merged, as a ChunkDict (what chunkdict.DictCache.load makes of a pulled image)."""
    results, blobs = [], {}
    for i, layer in enumerate(layers):
        path, result = convert(tmp_path, f"dict{i}", layer, position=i)
        results.append(result)
        blobs[result.blob.digest.split(":")[1]] = BlobFile(path)
    boot = merge_bootstrap(results, OPTS)
    layers = {hex_: Descriptor(media_type=NYDUS_BLOB, digest="sha256:" + hex_, size=b.size,
                               annotations={BLOB_ANNOTATION: "true"}) for hex_, b in blobs.items()}
    cdict = chunkdict.from_bootstrap(boot, layers, {}, reference="registry.invalid/dict@sha256:" + "0" * 64,
                                     manifest_digest="sha256:" + "1" * 64, compressor=opts.compressor,
                                     digester=opts.digester, chunk_size=opts.chunk_size)
    return cdict, blobs


def read_files(rafs: Rafs, blobs: dict[str, BlobFile]) -> dict[str, bytes]:
    """Every regular file's bytes, read as nydusd reads them: chunk table -> blob entry -> blob.meta -> data."""
    out = {}
    handles = {blob_id: open(b.path, "rb") for blob_id, b in blobs.items()}
    try:
        for path, inode in rafs.walk():
            if not stat.S_ISREG(inode.mode):
                continue
            data = b""
            for chunk in rafs.file_chunks(inode):
                entry = rafs.blobs[chunk.blob_index]
                data += blobs[entry.blob_id].read_chunk(handles[entry.blob_id], chunk.index, entry.compressor)
            out[path] = data[:inode.size]
    finally:
        for fh in handles.values():
            fh.close()
    return out


def expected_files(layer: bytes) -> dict[str, bytes]:
    """Regular files (hard links resolved) as the stdlib tarfile reads them."""
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        return {m.name.lstrip("./"): tf.extractfile(m).read() for m in tf.getmembers() if m.isreg() or m.islnk()}


def test_chunks_in_the_dict_are_referenced_not_stored(tmp_path):
    cdict, dict_blobs = dict_of(tmp_path, [image_a()])
    (a_id,) = dict_blobs
    plain_path, plain = convert(tmp_path, "plain", image_b())
    path, result = convert(tmp_path, "deduped", image_b(), cdict)
    # stored: the patched chunk of lib and b-only (3 chunks); referenced: shared (7) and lib's other 4 chunks
    assert BlobFile(path).chunk_count == 4 and BlobFile(plain_path).chunk_count == 15
    assert result.dict_bytes == 2 * len(SHARED) + 4 * 0x1000          # "copy" references them again
    assert path.stat().st_size < plain_path.stat().st_size / 2

    # the per-layer bootstrap: this blob first ("x" * 64), then the dict blob under its real id
    own = Rafs(BlobFile(path).bootstrap)
    assert [b.blob_id for b in own.blobs] == ["x" * 64, a_id]
    validate(own, {"x" * 64: BlobFile(path), a_id: dict_blobs[a_id]}, strict=True)

    boot = merge_bootstrap([at_position(result, 0)], OPTS, chunk_dict=cdict)
    rafs = Rafs(boot)
    b_id = result.blob.digest.split(":")[1]
    assert [b.blob_id for b in rafs.blobs] == [b_id, a_id]       # by first use, breadth first: "b-only", "copy"
    blobs = {a_id: dict_blobs[a_id], b_id: BlobFile(path)}
    validate(rafs, blobs, strict=True)                           # blob.meta, blob.digest, every chunk's data
    assert read_files(rafs, blobs) == expected_files(image_b())

    # a layer-cache hit: the tree rebuilt from the blob's own bootstrap merges to the very same bootstrap
    again = layer_from_blob(path, 0, OPTS, result.blob.digest, chunk_dict=cdict)
    assert merge_bootstrap([again], OPTS, chunk_dict=cdict) == boot
    with pytest.raises(RafsError, match="no chunk_dict_ref"):
        layer_from_blob(path, 0, OPTS, result.blob.digest)
    (tmp_path / "other").mkdir()
    other, _ = dict_of(tmp_path / "other", [tars.build_tar([tars.reg("x", b"x" * 5000)])])
    with pytest.raises(RafsError, match="does not hold"):
        layer_from_blob(path, 0, OPTS, result.blob.digest, chunk_dict=other)


def test_a_layer_whose_every_chunk_is_in_the_dict_stores_none(tmp_path):
    cdict, dict_blobs = dict_of(tmp_path, [image_a()])
    (a_id,) = dict_blobs
    base = tars.build_tar([tars.reg("again/shared", SHARED), tars.directory("etc")])
    top = tars.build_tar([tars.reg("top", b"only this is new")])
    path0, r0 = convert(tmp_path, "l0", base, cdict, 0)
    path1, r1 = convert(tmp_path, "l1", top, cdict, 1)
    assert r0.blob.entry is None and BlobFile(path0).chunk_count == 0       # no chunk of its own
    assert [b.blob_id for b in Rafs(r0.blob.bootstrap).blobs] == [a_id]
    rafs = Rafs(merge_bootstrap([r0, r1], OPTS, chunk_dict=cdict))
    b1 = r1.blob.digest.split(":")[1]
    assert [b.blob_id for b in rafs.blobs] == [b1, a_id]                   # breadth first: "top" is shallower
    blobs = {a_id: dict_blobs[a_id], b1: BlobFile(path1)}
    validate(rafs, blobs, strict=True)
    assert read_files(rafs, blobs) == {"again/shared": SHARED, "top": b"only this is new"}
    # from the cache, position 0 keeps its dict chunks and gets no blob of its own
    cached = [layer_from_blob(path0, 0, OPTS, r0.blob.digest, chunk_dict=cdict),
              layer_from_blob(path1, 1, OPTS, r1.blob.digest, chunk_dict=cdict)]
    assert merge_bootstrap(cached, OPTS, chunk_dict=cdict) == rafs.buf


def test_a_dict_built_with_other_options_is_refused_by_name(tmp_path):
    results = []
    path = tmp_path / "blob"
    with open(path, "wb") as sink:
        results.append(convert_layer(tars.stream(image_a(), 1000), sink, BuildOptions(chunk_size=0x2000)))
    hex_ = results[0].blob.digest.split(":")[1]
    layers = {hex_: Descriptor(media_type=NYDUS_BLOB, digest="sha256:" + hex_, size=1)}
    with pytest.raises(ConversionError, match="fs_chunk_size 0x2000; this conversion uses zstd, blake3, 0x1000"):
        chunkdict.from_bootstrap(merge_bootstrap(results, BuildOptions(chunk_size=0x2000)), layers, {},
                                 reference="r", manifest_digest="d", compressor="zstd", digester="blake3",
                                 chunk_size=0x1000)


def test_dict_blobs_that_are_no_layer_of_the_dict_image_are_not_used(tmp_path):
    """A dict bootstrap may name blobs its manifest does not carry (a storage backend): never point into them."""
    path, result = convert(tmp_path, "a", image_a())
    boot = merge_bootstrap([result], OPTS)
    cdict = chunkdict.from_bootstrap(boot, {}, {}, reference="r", manifest_digest="d", compressor="zstd",
                                     digester="blake3", chunk_size=0x1000)
    assert not cdict.chunks and cdict.size == 0
    _path, deduped = convert(tmp_path, "b", image_b(), cdict)
    assert deduped.dict_bytes == 0


@needs_kernel
def test_the_kernel_reads_a_deduplicated_image_through_the_dict_blob(tmp_path):
    cdict, dict_blobs = dict_of(tmp_path, [image_a()])
    path, result = convert(tmp_path, "b", image_b(), cdict)
    boot = tmp_path / "image.boot"
    boot.write_bytes(merge_bootstrap([result], OPTS, chunk_dict=cdict))
    rafs = Rafs(boot.read_bytes())
    blobs = {**dict_blobs, result.blob.digest.split(":")[1]: BlobFile(path)}
    with erofs.mounted(boot, device_files(tmp_path, blobs, rafs)) as root:
        seen = erofs.snapshot(root)
    compare(flatten([image_b()]), seen)
    assert seen["copy"].sha256.endswith(hashlib.sha256(SHARED).hexdigest())


FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "nydus"
GOLDEN_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"


@needs_kernel
def test_nydus_images_own_bootstrap_as_the_dict(tmp_path):
    """nydus-image's golden bootstrap and blob (tests/fixtures/nydus) as the dict: a layer holding the same two
    files stores none of their chunks, and the kernel reads them from nydus-image's blob."""
    boot_a = (FIXTURES / "bootstrap" / "rafs-v6-2.2.boot").read_bytes()
    golden = BlobFile(FIXTURES / "blobs" / GOLDEN_ID)
    golden_rafs = Rafs(boot_a)
    files = {path: read_files(golden_rafs, {GOLDEN_ID: golden})[path] for path in ("lib.rs", "sync_io.rs")}
    opts = BuildOptions()   # zstd, blake3, 1 MiB chunks: what nydus-image wrote
    desc = Descriptor(media_type=NYDUS_BLOB, digest="sha256:" + GOLDEN_ID, size=golden.size)
    cdict = chunkdict.from_bootstrap(boot_a, {GOLDEN_ID: desc}, {}, reference="r", manifest_digest="d",
                                     compressor="zstd", digester="blake3", chunk_size=0x100000)
    assert len(cdict.chunks) == 2
    layer = tars.build_tar([tars.reg("src/lib.rs", files["lib.rs"]), tars.reg("src/sync_io.rs", files["sync_io.rs"]),
                            tars.reg("README", b"new\n")])
    path = tmp_path / "blob"
    with open(path, "wb") as sink:
        result = convert_layer(tars.stream(layer, 1000), sink, opts, chunk_dict=cdict)
    assert BlobFile(path).chunk_count == 1 and result.dict_bytes == 16931 + 13400
    boot = tmp_path / "image.boot"
    boot.write_bytes(merge_bootstrap([result], opts, chunk_dict=cdict))
    rafs = Rafs(boot.read_bytes())
    own_id = result.blob.digest.split(":")[1]
    assert [b.blob_id for b in rafs.blobs] == [own_id, GOLDEN_ID]
    blobs = {own_id: BlobFile(path), GOLDEN_ID: golden}
    validate(rafs, blobs, strict=True)
    assert read_files(rafs, blobs) == expected_files(layer)
    with erofs.mounted(boot, device_files(tmp_path, blobs, rafs)) as root:
        compare(flatten([layer]), erofs.snapshot(root))


def test_an_older_multi_entry_nydus_bootstrap_loads_as_a_dict():
    """acceld's testdata bootstrap (3,517 entries, nydus-image, lz4): its chunk table becomes the dict."""
    boot = (FIXTURES / "bootstrap" / "v6-image-raw-size-438272.boot").read_bytes()
    (blob,) = Rafs(boot).blobs
    desc = Descriptor(media_type=NYDUS_BLOB, digest="sha256:" + blob.blob_id, size=blob.compressed_size)
    cdict = chunkdict.from_bootstrap(boot, {blob.blob_id: desc}, {}, reference="r", manifest_digest="d",
                                     compressor="lz4_block", digester="blake3", chunk_size=0x100000)
    assert len(cdict.chunks) > 2000 and cdict.label(blob.blob_id) == chunkdict.DICT_LABEL
    assert all(c.blob_index == chunkdict.DICT_LABEL for c in cdict.chunks.values())


def test_read_layer_follows_chunks_into_the_dict_blobs_it_is_given(tmp_path):
    """The conformance reader (and accelctl check's) reads a deduplicated layer with the dict blobs beside it,
    checks each dict chunk against its digest, and says which blob it lacks without them."""
    from drivers.nydus.entries import read_layer

    cdict, dict_blobs = dict_of(tmp_path, [image_a()])
    (a_id,) = dict_blobs
    path, _result = convert(tmp_path, "b", image_b(), cdict)
    with open(path, "rb") as fh:
        entries = {e.name: e for e in read_layer(fh, dict_blobs={a_id: dict_blobs[a_id].path})}
    assert {n: e.data for n, e in entries.items() if e.kind == "reg"} == {
        n: d for n, d in expected_files(image_b()).items() if n != "usr/shared-link"}
    assert entries["usr/shared-link"].kind == "hardlink"
    with open(path, "rb") as fh, pytest.raises(RafsError, match=f"also read from blob sha256:{a_id}, which was not"):
        list(read_layer(fh))
    # a dict blob whose chunk does not match: named, not read as the file's bytes
    bad = tmp_path / "bad-dict"
    data = bytearray(pathlib.Path(dict_blobs[a_id].path).read_bytes())
    coff, csize, _uoff, _usize = dict_blobs[a_id].chunk(0)
    data[coff + csize // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with open(path, "rb") as fh, pytest.raises(RafsError, match=f"of dict blob sha256:{a_id}") as raised:
        list(read_layer(fh, dict_blobs={a_id: str(bad)}))
    # accelctl check's FAIL line leads with the files of the layer that read the bad dict chunk
    from drivers.nydus.check import _naming_files
    named = _naming_files(str(path), str(raised.value))
    assert named == f"'copy' (and 2 more files): {raised.value}", named   # copy, usr/shared, its link
