"""The RAFS reader against nydus-image's own output (tests/fixtures/nydus, see its SOURCES.md), and the kernel.

The reader must parse every structure of what nydus-image wrote, verify every digest, accept it under the rules
nydusd applies, and read the same bytes the kernel's EROFS driver shows when it mounts the same bootstrap.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import stat

import pytest

from drivers.nydus import layout as L
from drivers.nydus.blobfile import BlobFile
from drivers.nydus.layout import RafsError
from drivers.nydus.reader import Rafs
from drivers.nydus.validate import validate
from tests.support import erofs

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "nydus"
BOOT = FIXTURES / "bootstrap" / "rafs-v6-2.2.boot"
BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
BLOB = FIXTURES / "blobs" / BLOB_ID
IMAGE_BOOT = FIXTURES / "bootstrap" / "v6-image-raw-size-438272.boot"


def read_file(rafs: Rafs, blobs: dict, inode) -> bytes:
    out = bytearray()
    for chunk in rafs.file_chunks(inode):
        entry = rafs.blobs[chunk.blob_index]
        blob = blobs[entry.blob_id]
        with open(blob.path, "rb") as fh:
            out += blob.read_chunk(fh, chunk.index, entry.compressor)
    return bytes(out[:inode.size])


def test_golden_bootstrap_structures():
    rafs = Rafs(BOOT.read_bytes())
    assert (rafs.sb.meta_blkaddr, rafs.sb.root_nid, rafs.sb.inos, rafs.sb.extra_devices) == (2, 128, 3, 1)
    assert (rafs.compressor, rafs.digester, rafs.explicit_uid_gid) == ("zstd", "blake3", True)
    assert rafs.ext.flags & L.F_INLINED_CHUNK_DIGEST
    assert rafs.devices == [(BLOB_ID, 9, 0x200)]
    (blob,) = rafs.blobs
    assert (blob.blob_id, blob.chunk_count, blob.uncompressed_size, blob.compressed_size) == (BLOB_ID, 2, 36864, 14554)
    assert blob.features == L.B_ALIGNED | L.B_INLINED_CHUNK_DIGEST | L.B_HAS_TAR_HEADER | L.B_HAS_TOC | L.B_CAP_TAR_TOC
    assert (blob.blob_toc_size, blob.ci_offset, blob.ci_uncompressed_size) == (1024, 8314, 32)
    assert [(c.index, c.uncompressed_offset, c.uncompressed_size) for c, _f, _o in rafs.chunks] == [
        (1, 20480, 13400), (0, 0, 16931)]  # sorted by digest, as nydus-image's BTreeMap writes them
    tree = {path: node for path, node in rafs.walk()}
    assert sorted(tree) == ["", "lib.rs", "sync_io.rs"]
    assert (tree["lib.rs"].size, tree["sync_io.rs"].size) == (16931, 13400)
    assert all(node.extended for node in tree.values())


def test_golden_blob_parts_and_digests():
    blob = BlobFile(BLOB)
    assert sorted(blob.toc) == ["blob.digest", "blob.meta", "blob.meta.header", "image.blob"]
    assert blob.header.ci_entries == 2 and blob.chunk(1) == (4828, 2974, 20480, 13400)
    assert blob.uncompressed_size == 36864
    blob.verify("zstd", "blake3")
    rafs = Rafs(BOOT.read_bytes())
    assert blob.toc_digest == rafs.blobs[0].blob_toc_digest and blob.toc_size == rafs.blobs[0].blob_toc_size
    # a standalone blob's id is sha256 of the file minus the blob.digest payload (builder/src/lib.rs:203-257)
    data = BLOB.read_bytes()
    e = blob.toc["blob.digest"]
    cut = data[:e.compressed_offset] + data[e.compressed_offset + e.compressed_size:]
    assert hashlib.sha256(cut).hexdigest() == BLOB_ID
    # our tar header writer makes the very bytes nydus-image wrote
    assert data[7802:7802 + 512] == L.tar_header("image.blob", 7802)
    assert data[13530 + 512:] == L.tar_header("rafs.blob.toc", 512)


def test_golden_passes_nydusd_rules_and_blob_cross_checks():
    rafs = Rafs(BOOT.read_bytes())
    blobs = {BLOB_ID: BlobFile(BLOB)}
    validate(rafs, blobs, strict=True)
    files = {p: read_file(rafs, blobs, n) for p, n in rafs.walk() if stat.S_ISREG(n.mode)}
    assert files["lib.rs"].startswith(b"// Copyright") and len(files["sync_io.rs"]) == 13400


def test_real_image_bootstrap_passes_nydusd_rules():
    rafs = Rafs(IMAGE_BOOT.read_bytes())
    validate(rafs)
    entries = list(rafs.walk())
    assert len(entries) == 3517 == rafs.sb.inos
    assert rafs.compressor == "lz4_block" and rafs.prefetch == [142]
    assert {stat.S_IFMT(n.mode) for _p, n in entries} == {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK}
    # the known defect of this image: non-root files without EXPLICIT_UID_GID (SOURCES.md); strict mode sees it
    assert dict((p, n.gid) for p, n in entries)["etc/gshadow"] == 42
    with pytest.raises(RafsError):
        validate(rafs, strict=True)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.__setitem__(slice(1024, 1028), b"\0\0\0\0"), "magic"),
    (lambda b: b.__setitem__(slice(1024 + 80, 1024 + 84), (0xC | 0x10).to_bytes(4, "little")), "incompat"),
    (lambda b: b.__setitem__(slice(1152, 1160), (0x80 | 0x2 | 0x4).to_bytes(8, "little")), "compression"),
    (lambda b: b.__setitem__(slice(1152 + 20, 1152 + 24), (3 << 20).to_bytes(4, "little")), "chunk size"),
    (lambda b: b.__setitem__(slice(4096 + 64, 4096 + 68), (1).to_bytes(4, "little")), "blob_index"),
    (lambda b: b.__setitem__(slice(4096 + 84, 4096 + 88), (0x70000020).to_bytes(4, "little")), "ALIGNED"),
    (lambda b: b.__setitem__(slice(1408 + 64, 1408 + 68), (8).to_bytes(4, "little")), "blocks"),
    (lambda b: b.__setitem__(slice(16384 + 72, 16384 + 76), (0).to_bytes(4, "little")), "chunk"),
    (lambda b: b.extend(b"x"), "aligned"),
])
def test_reader_refuses_what_nydusd_refuses(mutate, message):
    buf = bytearray(BOOT.read_bytes())
    mutate(buf)
    with pytest.raises(RafsError, match=message):
        validate(Rafs(bytes(buf)), {BLOB_ID: BlobFile(BLOB)})


@erofs.requires_kernel()
def test_kernel_shows_what_the_reader_reads(tmp_path):
    rafs = Rafs(BOOT.read_bytes())
    blob = BlobFile(BLOB)
    device = tmp_path / "device0"
    assert blob.write_device(device, "zstd") == 9 * 4096
    with erofs.mounted(BOOT, [device]) as root:
        seen = erofs.snapshot(root)
    ours = {p: n for p, n in rafs.walk()}
    assert sorted(seen) == sorted(ours)
    for path, node in ours.items():
        got = seen[path]
        assert (got.mode, got.uid, got.gid, got.mtime, got.ino) == (
            stat.S_IMODE(node.mode), node.uid, node.gid, node.mtime, node.nid), path
        if stat.S_ISREG(node.mode):
            data = read_file(rafs, {BLOB_ID: blob}, node)
            assert got.sha256 == "sha256:" + hashlib.sha256(data).hexdigest()


def test_fsck_erofs_agrees_with_the_reader(tmp_path):
    blob = BlobFile(BLOB)
    blob.write_device(tmp_path / "device0", "zstd")
    seen = erofs.extracted(BOOT, [tmp_path / "device0"], tmp_path / "out")
    rafs = Rafs(BOOT.read_bytes())
    for path, node in rafs.walk():
        if stat.S_ISREG(node.mode):
            data = read_file(rafs, {BLOB_ID: blob}, node)
            assert dataclasses.replace(seen[path], ino=0).sha256 == "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.slow
@erofs.requires_kernel()
def test_kernel_lists_the_real_image_as_the_reader_does():
    """3,517 entries of a real image's bootstrap: metadata only (its blobs are not in the fixtures), so the mount
    has no device; names, modes, owners, sizes, mtimes, link targets, inode numbers and link counts must match."""
    rafs = Rafs(IMAGE_BOOT.read_bytes())
    with erofs.mounted(IMAGE_BOOT, []) as root:
        seen = erofs.snapshot(root, data=False)
    ours = dict(rafs.walk())
    assert sorted(seen) == sorted(ours)
    for path, node in ours.items():
        got = seen[path]
        target = rafs.symlink(node).decode("utf-8", "surrogateescape") if stat.S_ISLNK(node.mode) else ""
        size = 0 if stat.S_ISDIR(node.mode) else node.size
        assert (got.mode, got.uid, got.gid, got.size, got.mtime, got.target, got.ino, got.nlink) == (
            stat.S_IMODE(node.mode), node.uid, node.gid, size, node.mtime, target, node.nid, node.nlink), path


def test_damaged_bootstraps_and_blobs_fail_with_rafs_errors_only(tmp_path):
    """A cached blob or bootstrap is input too: random damage gives RafsError (a clear FAILED reason), never a
    struct.error or ValueError traceback."""
    import io
    import random

    from drivers.nydus.builder import BuildOptions, convert_layer, layer_from_blob, merge_bootstrap
    from tests.drivers.nydus_oracle import three_layers
    opts = BuildOptions(chunk_size=0x1000)
    sinks = [io.BytesIO() for _ in range(3)]
    results = [convert_layer(io.BytesIO(layer), sink, opts, i) for i, (layer, sink) in
               enumerate(zip(three_layers(), sinks))]
    boot, blob = merge_bootstrap(results, opts), sinks[0].getvalue()
    rng, refused = random.Random(7), 0
    for _ in range(300):
        damaged = bytearray(boot)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(min(len(damaged), 20000))] = rng.randrange(256)
        try:
            rafs = Rafs(bytes(damaged))
            validate(rafs, strict=True)
        except RafsError:
            refused += 1
        damaged = bytearray(blob)
        damaged[len(damaged) - 1 - rng.randrange(8000)] ^= 1 + rng.randrange(255)
        (tmp_path / "blob").write_bytes(bytes(damaged))
        try:
            layer_from_blob(tmp_path / "blob", 0, opts)
        except RafsError:
            refused += 1
    assert refused > 150   # the rest hit bytes no reader looks at (padding, names, unverified digests)
