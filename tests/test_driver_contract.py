"""Every built-in driver passes the conformance suite, in each of its output flavours."""
import pytest

from acceleration_sdk.driver import available, load_driver
from acceleration_sdk.errors import DriverError
from acceleration_sdk.testing import Allowances, DriverContract
from drivers.estargz.reader import INTERNAL_NAMES, read_layer

# The TOC stores modtime as RFC 3339 whole seconds (the writer rounds half-up, like Go's time.Round); the tar
# headers in the same blob are copied byte for byte, so the plain tar view keeps everything (exact default).
ESTARGZ_ALLOWANCES = Allowances(mtime_precision=1.0, internal_names=INTERNAL_NAMES)
SMALL_CHUNK = 4096  # the smallest chunk_size the driver accepts: multi-chunk files stay small and fast


class TestEStargzContract(DriverContract):
    driver_name = "estargz"
    options = {"compression_level": 1, "chunk_size": SMALL_CHUNK}
    other_options = {"compression_level": 6}
    reader = read_layer
    allowances = ESTARGZ_ALLOWANCES


class TestZstdChunkedContract(DriverContract):
    driver_name = "estargz"
    options = {"compression": "zstdchunked", "compression_level": 3, "chunk_size": SMALL_CHUNK}
    other_options = {"chunk_size": 1 << 20}
    reader = read_layer
    allowances = ESTARGZ_ALLOWANCES


def test_builtin_drivers_are_listed():
    assert "estargz" in available()


def test_unknown_driver_names_the_known_ones():
    with pytest.raises(DriverError, match=r"unknown driver 'nydusx' \(available: .*estargz"):
        load_driver("nydusx")


@pytest.mark.parametrize("options, key", [
    ({"compression": "lz4"}, "compression"),
    ({"compression_level": 10}, "compression_level"),
    ({"compression_level": "high"}, "compression_level"),
    ({"chunk_size": 12}, "chunk_size"),
    ({"docker2oci": "yes"}, "docker2oci"),
    ({"prioritized_files": 3}, "prioritized_files"),
])
def test_bad_estargz_options_name_the_key(options, key):
    with pytest.raises(DriverError, match=f"converter.driver.config.{key}"):
        load_driver("estargz", options)


def test_go_style_string_options_are_accepted():
    driver = load_driver("estargz", {"docker2oci": "false", "chunk_size": "0x100000", "compression_level": "6"})
    assert driver.docker2oci() is False and driver.chunk_size == 1 << 20 and driver.level == 6
