"""Our RAFS v6 output read by readers we did not write: the Linux kernel (mount -t erofs with one loop device
per blob) and erofs-utils (fsck.erofs --extract), compared entry by entry with the source tars flattened by the
stdlib tarfile (tests/drivers/nydus_oracle.py). Every bootstrap and blob must also pass nydusd's load rules."""
from __future__ import annotations

import hashlib
import io
import pathlib

import pytest

from drivers.nydus.blobfile import BlobFile
from drivers.nydus.builder import BuildOptions, convert_layer, merge_bootstrap
from drivers.nydus.reader import Rafs
from drivers.nydus.validate import validate
from tests.drivers.nydus_oracle import compare, feature_layer, flatten, three_layers
from tests.support import erofs, tars

needs_kernel = erofs.requires_kernel()


def build(tmp_path: pathlib.Path, layers: list[bytes], opts: BuildOptions):
    """Convert each layer (streamed from a short-reading, non-seekable source) and merge; return the bootstrap
    path, the device files in blob-table order, and the parsed blobs by id."""
    results, blobs = [], {}
    for position, layer in enumerate(layers):
        path = tmp_path / f"blob{position}"
        with open(path, "wb") as sink:
            results.append(convert_layer(tars.stream(layer, 1000), sink, opts, position))
        blob = BlobFile(path)
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == results[-1].blob.digest
        blobs[results[-1].blob.digest.split(":")[1]] = blob
        own = Rafs(blob.bootstrap)           # the per-layer bootstrap is a valid RAFS of its own too
        validate(own, {"x" * 64: blob} if own.blobs else None, strict=True)
    boot = tmp_path / "image.boot"
    boot.write_bytes(merge_bootstrap(results, opts))
    rafs = Rafs(boot.read_bytes())
    validate(rafs, blobs, strict=True)
    devices = []
    for i, entry in enumerate(rafs.blobs):
        dev = tmp_path / f"device{i}"
        blobs[entry.blob_id].write_device(dev, entry.compressor)
        devices.append(dev)
    return boot, devices, rafs


@needs_kernel
@pytest.mark.parametrize("opts", [
    BuildOptions(chunk_size=0x1000),
    BuildOptions(compressor="lz4_block", digester="sha256", chunk_size=0x2000),
    BuildOptions(compressor="none", chunk_size=0x1000),
    BuildOptions(),   # 1 MiB chunks: every file is one chunk
], ids=["zstd-4k", "lz4-sha256-8k", "none-4k", "zstd-1m"])
def test_every_entry_kind_through_the_kernel(tmp_path, opts):
    layer = feature_layer()
    boot, devices, _rafs = build(tmp_path, [layer], opts)
    with erofs.mounted(boot, devices) as root:
        seen = erofs.snapshot(root)
    compare(flatten([layer]), seen)


@needs_kernel
def test_layers_whiteouts_opaque_dirs_and_hard_links_through_the_kernel(tmp_path):
    layers = three_layers()
    boot, devices, rafs = build(tmp_path, layers, BuildOptions(chunk_size=0x1000))
    assert len(devices) == 3 and len(rafs.blobs) == 3
    with erofs.mounted(boot, devices) as root:
        seen = erofs.snapshot(root)
    expected = flatten(layers)
    assert "gone" not in expected and "var/lib/apt" not in expected and "opt/keep2" not in expected
    compare(expected, seen)
    assert seen["opt/big-link"].size == 3 * 0x1000 + 100 and seen["opt/big"].ino != seen["opt/big-link"].ino
    assert seen["etc"].xattrs == (("user.layer", b"middle"),) and seen["etc"].uid == 1


def test_fsck_erofs_extracts_what_the_tars_hold(tmp_path):
    layers = three_layers()
    boot, devices, _rafs = build(tmp_path, layers, BuildOptions(chunk_size=0x1000))
    # erofs-utils 1.5 extracts neither xattrs nor hard links (each name becomes its own file), and chowns after
    # chmod, which clears setuid/setgid: those bits are the kernel test's to check
    extract = dict(inodes=False, xattrs=False, mode_mask=0o1777)
    compare(flatten(layers), erofs.extracted(boot, devices, tmp_path / "out"), **extract)
    layer = feature_layer()
    (tmp_path / "f").mkdir()
    boot, devices, _rafs = build(tmp_path / "f", [layer], BuildOptions(compressor="lz4_block", chunk_size=0x1000))
    compare(flatten([layer]), erofs.extracted(boot, devices, tmp_path / "out2"), **extract)


@needs_kernel
def test_kernel_and_reader_agree_on_a_wrong_chunk_info_index(tmp_path):
    """The kernel reads blkaddr and cannot see a wrong ci index; nydusd reads the ci index. validate() must."""
    layer = tars.build_tar([tars.reg("a", tars.payload(5000, "a")), tars.reg("b", tars.payload(5000, "b"))])
    boot, devices, rafs = build(tmp_path, [layer], BuildOptions(chunk_size=0x1000))
    buf = bytearray(boot.read_bytes())
    node = dict(rafs.walk())["a"]
    index_at = -(-(node.offset + node.isize + node.xattr_size) // 8) * 8
    buf[index_at:index_at + 2] = (3).to_bytes(2, "little")     # first chunk of "a" now names ci 3 (a chunk of b)
    bad = tmp_path / "bad.boot"
    bad.write_bytes(bytes(buf))
    with erofs.mounted(bad, devices) as root:                    # the kernel is happy ...
        assert (pathlib.Path(root) / "a").read_bytes() == tars.payload(5000, "a")
    with pytest.raises(Exception, match="no chunk table entry"):  # ... nydusd would not be
        validate(Rafs(bytes(buf)), {rafs.blobs[0].blob_id: BlobFile(tmp_path / "blob0")})


def test_prefetch_table_names_the_patterns_inodes(tmp_path):
    layer = tars.build_tar([tars.reg("usr/bin/a", b"a"), tars.reg("etc/x", b"x")])
    opts = BuildOptions(chunk_size=0x1000, prefetch=("/usr/bin", "/missing", "/etc/x"))
    with open(tmp_path / "blob", "wb") as sink:
        result = convert_layer(io.BytesIO(layer), sink, opts)
    rafs = Rafs(merge_bootstrap([result], opts))
    validate(rafs, strict=True)
    nids = {path: node.nid for path, node in rafs.walk()}
    assert rafs.prefetch == [nids["usr/bin"], nids["etc/x"]]
