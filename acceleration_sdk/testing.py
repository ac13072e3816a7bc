"""The driver conformance suite: every driver's tests subclass :class:`DriverContract`.

    class TestMyDriver(DriverContract):
        driver_name = "mydriver"
        options = {"level": 1}

It converts layers through a :class:`StoreProvider` (source blobs served from a ContentStore, no registry)
and checks what every LayerDriver must do: a stable name and version, a ConvertedLayer whose blob is in the
store and whose diff_id is the sha256 of its uncompressed tar, the same input giving the same output,
a cache key that changes with output-affecting options, and broken layers failing with LayerError.
Needs pytest (a test dependency only).
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import tarfile
from typing import Any, Iterator

from .compression import open_decompressed
from .content import ContentStore
from .driver import ConvertedLayer, LayerDriver, ProgressEvent, load_driver
from .errors import DriverError, LayerError
from .oci import OCI_LAYER_GZIP, Descriptor


class StoreProvider:
    """A ContentProvider over a ContentStore only: what a driver needs to convert single layers."""

    def __init__(self, store: ContentStore):
        self.store = store
        self.source = None
        self.events: list[ProgressEvent] = []

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[Any]:
        with self.store.open(desc.digest) as fh:
            yield fh

    @contextlib.contextmanager
    def open_uncompressed(self, desc: Descriptor) -> Iterator[Any]:
        with self.open_blob(desc) as fh:
            yield open_decompressed(fh)

    def read_blob(self, desc: Descriptor) -> bytes:
        return self.store.read_bytes(desc.digest)

    def blob_writer(self):
        return self.store.writer()

    def progress(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def walk(self, driver: LayerDriver) -> Descriptor:  # pragma: no cover - the engine's job
        raise NotImplementedError("StoreProvider converts single layers only")

    def add_layer(self, tar: bytes) -> Descriptor:
        blob = gzip.compress(tar, mtime=0)
        digest = self.store.write_bytes(blob)
        return Descriptor(media_type=OCI_LAYER_GZIP, digest=digest, size=len(blob))


def sample_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("etc/hostname", b"acceld\n"), ("usr/lib/blob", bytes(range(256)) * 400),
                           ("empty", b"")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "/usr/lib/blob"
        tf.addfile(link)
    return buf.getvalue()


class DriverContract:
    """Subclass with ``driver_name`` (and ``options``); pytest collects the tests below for your driver."""

    driver_name: str = ""
    options: dict = {}
    other_options: dict | None = None  # options that change the output bytes (for the cache-key check)

    def make_driver(self, **extra) -> LayerDriver:
        driver = load_driver(self.driver_name, {**self.options, **extra})
        assert isinstance(driver, LayerDriver)
        return driver

    def provider(self, tmp_path) -> StoreProvider:
        return StoreProvider(ContentStore(tmp_path / "store"))

    def test_name_and_version(self):
        driver = self.make_driver()
        assert driver.name() == self.driver_name
        assert driver.version() and isinstance(driver.version(), str)

    def test_unknown_option_is_refused(self):
        import pytest

        with pytest.raises(DriverError, match="no_such_option"):
            self.make_driver(no_such_option=True)

    def test_layer_converts_with_right_diff_id(self, tmp_path):
        provider = self.provider(tmp_path)
        tar = sample_tar()
        result = self.make_driver().convert_layer(provider, provider.add_layer(tar))
        assert isinstance(result, ConvertedLayer)
        assert provider.store.has(result.descriptor.digest)
        assert provider.store.size(result.descriptor.digest) == result.descriptor.size
        with provider.store.open(result.descriptor.digest) as fh:
            out = open_decompressed(fh).read()
        assert "sha256:" + hashlib.sha256(out).hexdigest() == result.diff_id
        names = set(tarfile.open(fileobj=io.BytesIO(out)).getnames())
        assert {"etc/hostname", "usr/lib/blob", "bin/sh"} <= {n.lstrip("./") for n in names}

    def test_same_input_same_output(self, tmp_path):
        provider = self.provider(tmp_path)
        desc = provider.add_layer(sample_tar())
        first = self.make_driver().convert_layer(provider, desc)
        second = self.make_driver().convert_layer(provider, desc)
        assert first == second

    def test_cache_key_follows_options(self):
        assert self.make_driver().cache_key() == self.make_driver().cache_key()
        if self.other_options is not None:
            assert self.make_driver(**self.other_options).cache_key() != self.make_driver().cache_key()

    def test_broken_layer_is_a_layer_error(self, tmp_path):
        import pytest

        provider = self.provider(tmp_path)
        for tar in (sample_tar()[:700], b"\x00garbage" * 300):
            with pytest.raises(LayerError):
                self.make_driver().convert_layer(provider, provider.add_layer(tar))
