"""The suite's own parts: the source matrix holds what it promises, the harness (the engine's provider) is strict."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from acceleration_sdk.content import ContentStore
from acceleration_sdk.driver import ConvertedLayer, LayerDriver
from acceleration_sdk.errors import DigestMismatchError, LayerError
from acceleration_sdk.oci import OCI_LAYER, Descriptor
from acceleration_sdk.testing import (MATRIX, Allowances, ConformanceError, LayerEntry, StoreProvider, build_tar,
                                      cell_entries, check_cell, compare, source_view)
from acceleration_sdk.testing.layers import BIG_ID, CAPABILITY, GNU, PAX, USTAR

CHUNK = 4096


@pytest.fixture
def provider(tmp_path):
    return StoreProvider(ContentStore(tmp_path / "store"))


@pytest.mark.parametrize("cell", MATRIX, ids=lambda c: c.id)
def test_each_cell_reads_back_as_built(cell):
    """The stdlib tar reader sees exactly the entries the builder meant: the source is a faithful witness."""
    tar, seen = source_view(cell, CHUNK)
    assert seen == cell_entries(cell, CHUNK)
    names = [info.name for info in tarfile.open(fileobj=io.BytesIO(tar))]
    # tarfile shows a root "./" as "." and "/" as "": the header holds the prefix itself
    if cell.prefix:
        assert tar.startswith(cell.prefix.encode() + b"\0") and names[0] in (".", "")
        names = names[1:]
    assert all(n.startswith(cell.prefix) and not n[len(cell.prefix):].startswith(("./", "/")) for n in names)


@pytest.mark.parametrize("fmt", [PAX, GNU, USTAR])
def test_a_cell_holds_every_kind_its_header_format_can(fmt):
    entries = {e.name: e for e in cell_entries(MATRIX[[c.format for c in MATRIX].index(fmt)], CHUNK)}
    kinds = {e.kind for e in entries.values()}
    assert kinds == {"reg", "dir", "symlink", "hardlink", "char", "block", "fifo"}
    assert entries["empty"].data == b"" and len(entries["data/multi-chunk"].data) > 3 * CHUNK
    assert entries["data/zeros"].data.count(0) >= 3 * CHUNK
    assert "etc/.wh.passwd" in entries and "var/lib/.wh..wh..opq" in entries
    assert entries["dangling"].kind == "symlink" and max(len(n) for n in entries) > 100
    if fmt != USTAR:
        assert max(len(n) for n in entries) > 255 and max(len(e.linkname) for e in entries.values()) > 100
        assert entries["bigids"].uid == BIG_ID
    if fmt == PAX:
        assert entries["usr/bin/ping"].xattrs["security.capability"] == CAPABILITY
        assert entries["etc/hostname"].mtime % 1 == 0.75


def test_sources_are_compressed_as_the_cell_says(provider):
    magic = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd", "none": b""}
    for cell in MATRIX[:3]:
        tar = build_tar(cell_entries(cell, CHUNK), cell)
        desc = provider.add_layer(tar, cell.compression)
        assert provider.store.read_bytes(desc.digest).startswith(magic[cell.compression])
        with provider.open_uncompressed(desc) as layer:  # read to the end: the provider refuses less
            assert layer.read() == tar  # the same tar whatever the compression


def test_a_corrupted_source_blob_fails_its_digest(provider):
    """The engine re-hashes store blobs as a driver reads them: the store is a cache on disk, not a proof."""
    desc = provider.add_layer(build_tar(cell_entries(MATRIX[0], CHUNK), MATRIX[0]))
    path = provider.store.path(desc.digest)
    os.chmod(path, 0o644)
    data = bytearray(open(path, "rb").read())
    data[-20] ^= 0xFF  # inside the gzip trailer: decompression itself may not notice
    open(path, "wb").write(bytes(data))
    with pytest.raises(DigestMismatchError, match=desc.digest):
        with provider.open_blob(desc) as blob:
            while blob.read(1 << 16):
                pass
    with pytest.raises(DigestMismatchError, match=desc.digest):  # small blobs (configs) too
        provider.read_blob(desc)


def test_committing_before_reading_the_whole_layer_fails(provider):
    desc = provider.add_layer(build_tar(cell_entries(MATRIX[0], CHUNK), MATRIX[0]))
    with pytest.raises(LayerError, match="non-zero layer data was left unread"):  # leaving the block, too
        with provider.open_uncompressed(desc) as tar, provider.blob_writer() as out:
            out.write(tar.read(1000))  # a driver that stops half way
            with pytest.raises(LayerError, match="non-zero layer data was left unread"):
                out.commit()
            with provider.blob_writer() as again:  # the refusal stands: a retry cannot pass on what is left
                again.write(b"converted")
                with pytest.raises(LayerError, match="non-zero layer data was left unread"):
                    again.commit()
    assert os.listdir(provider.store.ingest_dir) == []  # the refused blobs were not kept


def test_a_driver_that_does_not_drain_still_gets_its_source_verified(provider):
    """The estargz writer stops at the end-of-archive; the harness reads the zero padding and the digest."""
    desc = provider.add_layer(build_tar(cell_entries(MATRIX[0], CHUNK), MATRIX[0]) + bytes(10240))
    with provider.open_uncompressed(desc) as tar, provider.blob_writer() as out:
        tarfile.open(fileobj=tar, mode="r|").getmembers()
        out.write(b"converted")
        digest = out.commit()
    assert provider.store.read_bytes(digest) == b"converted"


def test_allowances_refuse_unknown_fields():
    with pytest.raises(ValueError, match="nlink"):
        Allowances(dropped=frozenset({"nlink"}))


def test_compare_names_missing_extra_and_dropped_fields():
    src = [LayerEntry("a", "reg", mode=0o644, size=1, data=b"x", uname="root"), LayerEntry("d", "dir")]
    out = [LayerEntry("a", "reg", mode=0o600, size=1, data=b"x"), LayerEntry("e", "dir")]
    problems = compare(src, out, Allowances())
    assert "'a': mode differs: source 0o644, output 0o600" in problems
    assert "'a': uname differs: source 'root', output ''" in problems
    assert "'d' (dir) is missing in the output" in problems
    assert "'e' (dir) is in the output but not in the source" in problems
    relaxed = compare(src, out, Allowances(dropped=frozenset({"uname", "mode"}), implicit_dirs=True))
    assert relaxed == ["'d' (dir) is missing in the output"]


def test_closing_the_layer_early_and_committing_fails(provider):
    """As in the engine, leaving the block refuses at once; a driver that swallows that cannot commit."""
    desc = provider.add_layer(build_tar(cell_entries(MATRIX[0], CHUNK), MATRIX[0]))
    with pytest.raises(LayerError, match="left unread"):
        with provider.open_uncompressed(desc) as tar:
            head = tar.read(512)
    with provider.blob_writer() as out:
        out.write(head)
        with pytest.raises(LayerError, match="was not verified"):
            out.commit()
    assert os.listdir(provider.store.ingest_dir) == []


class HalfReader(LayerDriver):
    """A driver that reads half a layer and commits what it read: the suite must refuse it."""

    def name(self):
        return "half"

    def version(self):
        return "1"

    def convert_layer(self, content, desc):
        with content.open_uncompressed(desc) as tar, content.blob_writer() as out:
            out.write(tar.read(desc.size // 2))
            digest = out.commit()
        return ConvertedLayer(Descriptor(media_type=OCI_LAYER, digest=digest, size=out.size), digest)


def test_the_suite_refuses_a_driver_that_reads_half_a_layer(provider):
    with pytest.raises(ConformanceError, match="convert_layer failed: LayerError: .*left unread"):
        check_cell(HalfReader(), lambda blob, desc: [], MATRIX[0], chunk_size=CHUNK, provider=provider)
