"""The nydus bootstrap layer's one reader (``accelctl check`` and ``chunk_dict_ref`` both use it): what the driver
writes reads back; only the blob.meta files asked for are kept; every bound holds and is named."""
from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from drivers.nydus import bootlayer
from drivers.nydus.bootlayer import BootstrapLayerError, read_bootstrap_layer, write_bootstrap_layer

A, B = "a" * 64, "b" * 64


def written(boot: bytes = b"boot", metas=((A, b"meta-a"), (B, b"meta-b"))) -> io.BytesIO:
    out = io.BytesIO()
    write_bootstrap_layer(out, boot, list(metas))
    out.seek(0)
    return out


def tar_gz(members: list[tuple[str, bytes]]) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return io.BytesIO(gzip.compress(raw.getvalue()))


def test_what_the_driver_writes_reads_back_with_the_blob_meta_asked_for():
    assert read_bootstrap_layer(written()) == (b"boot", {})                   # the check: image.boot only
    assert read_bootstrap_layer(written(), {A}) == (b"boot", {A: b"meta-a"})  # a dict: its own blobs' only
    assert read_bootstrap_layer(written(), {A, B, "c" * 64})[1] == {A: b"meta-a", B: b"meta-b"}


def test_a_leading_dot_slash_is_the_same_path():
    assert read_bootstrap_layer(tar_gz([("./image/image.boot", b"x"), (f"./image/{A}.blob.meta", b"m")]), {A}) == \
        (b"x", {A: b"m"})


def test_bounds_and_a_missing_image_boot_are_named(monkeypatch):
    with pytest.raises(BootstrapLayerError, match="^the bootstrap layer holds no image/image.boot$"):
        read_bootstrap_layer(tar_gz([("image/other", b"x"), (f"image/{A}.blob.meta", b"m")]), {A})
    monkeypatch.setattr(bootlayer, "MAX_BOOTSTRAP", 3)
    with pytest.raises(BootstrapLayerError, match="^image/image.boot is 4 bytes, more than 3$"):
        read_bootstrap_layer(written())
    monkeypatch.setattr(bootlayer, "MAX_BOOTSTRAP", 1 << 20)
    monkeypatch.setattr(bootlayer, "MAX_METAS", 11)                          # meta-a and meta-b are 12 together
    assert read_bootstrap_layer(written(), {A})[1] == {A: b"meta-a"}
    with pytest.raises(BootstrapLayerError, match="more than 11 bytes together"):
        read_bootstrap_layer(written(), {A, B})
    monkeypatch.setattr(bootlayer, "MAX_META", 5)                            # one bigger than MAX_META: skipped
    assert read_bootstrap_layer(written(), {A, B}) == (b"boot", {})


def test_a_corrupt_gzip_is_not_a_bootstrap_layer_error():
    """The callers word a broken stream themselves (the dict's 'not a readable gzip tar'); only the layer's
    content rules are BootstrapLayerError."""
    data = bytearray(written().getvalue())
    data[20:60] = bytes(40)
    with pytest.raises(Exception) as info:
        read_bootstrap_layer(io.BytesIO(bytes(data)))
    assert not isinstance(info.value, BootstrapLayerError)
