"""``DriverContract``: the pytest face of the conformance suite; every driver's tests subclass it.

    from acceleration_sdk.testing import Allowances, DriverContract
    from mydriver.reader import read_layer

    class TestMyDriver(DriverContract):
        driver_name = "mydriver"                 # looked up with load_driver(name, options)
        options = {"chunk_size": 4096}
        chunk_size = 4096                        # sizes the multi-chunk files (defaults to options["chunk_size"])
        reader = read_layer                      # (blob: BinaryIO, desc: Descriptor) -> Iterable[LayerEntry]
        allowances = Allowances(mtime_precision=1.0, internal_names=frozenset({"index.json"}))

pytest then runs :func:`~.suite.check_cell` on every cell of :data:`~.layers.MATRIX` (header formats x name
prefixes x source compressions), plus the basics every LayerDriver owes: a stable name and version, options
validated by name, the same input giving the same output, a cache key that follows output-affecting
options, and a broken layer failing with LayerError. Needs pytest (a test dependency only).
"""
from __future__ import annotations

import pytest

from ..content import ContentStore
from ..driver import LayerDriver, load_driver
from ..errors import DriverError, LayerError
from .entries import Allowances
from .harness import StoreProvider
from .layers import MATRIX, PAX, Cell, build_tar, cell_entries
from .suite import check_cell

_PAX_GZIP = Cell(PAX, "", "gzip")


class DriverContract:
    """Subclass with ``driver_name``, ``options`` and ``reader``; pytest collects the tests below."""

    driver_name: str = ""
    options: dict = {}
    other_options: dict | None = None  # options that change the output bytes (for the cache-key check)
    chunk_size: int = 0                # 0: options["chunk_size"]
    reader = None                      # the driver's reader of its own output (see suite.Reader)
    allowances: Allowances = Allowances()          # for the reader's view
    tar_allowances: Allowances | None = None       # for the plain tar view (default: exact)

    def make_driver(self, **extra) -> LayerDriver:
        driver = load_driver(self.driver_name, {**self.options, **extra})
        assert isinstance(driver, LayerDriver)
        return driver

    def provider(self, tmp_path) -> StoreProvider:
        return StoreProvider(ContentStore(tmp_path / "store"))

    def suite_chunk_size(self) -> int:
        size = self.chunk_size or int(self.options.get("chunk_size", 0))
        if size <= 0:
            raise AssertionError(f"{type(self).__name__}: set chunk_size (or options['chunk_size']) so the suite "
                                 "can build files bigger than one chunk")
        return size

    @pytest.mark.parametrize("cell", MATRIX, ids=[c.id for c in MATRIX])
    def test_conformance(self, cell, tmp_path):
        reader = type(self).reader  # a plain function on the class: no self
        assert reader is not None, f"{type(self).__name__}: set reader = <the driver's reader of its output>"
        check_cell(self.make_driver(), reader, cell, chunk_size=self.suite_chunk_size(),
                   provider=self.provider(tmp_path), allowances=self.allowances, tar_allowances=self.tar_allowances)

    def test_name_and_version(self):
        driver = self.make_driver()
        assert driver.name() == self.driver_name
        assert driver.version() and isinstance(driver.version(), str)

    def test_unknown_option_is_refused(self):
        with pytest.raises(DriverError, match="no_such_option"):
            self.make_driver(no_such_option=True)

    def test_same_input_same_output(self, tmp_path):
        provider = self.provider(tmp_path)
        desc = provider.add_layer(build_tar(cell_entries(_PAX_GZIP, self.suite_chunk_size()), _PAX_GZIP))
        first = self.make_driver().convert_layer(provider, desc)
        second = self.make_driver().convert_layer(provider, desc)
        assert first == second

    def test_cache_key_follows_options(self):
        assert self.make_driver().cache_key() == self.make_driver().cache_key()
        if self.other_options is not None:
            assert self.make_driver(**self.other_options).cache_key() != self.make_driver().cache_key()

    def test_broken_layer_is_a_layer_error(self, tmp_path):
        tar = build_tar(cell_entries(_PAX_GZIP, self.suite_chunk_size()), _PAX_GZIP)
        for i, broken in enumerate((tar[:700], b"\x00garbage" * 300)):
            # a provider per layer, as the engine gives: the first failure's unverified source would make
            # any later commit fail too, and so hide a driver that accepts the second broken layer
            provider = self.provider(tmp_path / str(i))
            with pytest.raises(LayerError):
                self.make_driver().convert_layer(provider, provider.add_layer(broken))
