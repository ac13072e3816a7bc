"""Every built-in driver passes the conformance suite, in each of its output flavours."""
import pytest

from acceleration_sdk.driver import available, load_driver
from acceleration_sdk.errors import DriverError
from acceleration_sdk.testing import DriverContract
from drivers.estargz.check import ALLOWANCES as ESTARGZ_CHECK_ALLOWANCES
from drivers.estargz.reader import read_layer
from drivers.nydus.check import ALLOWANCES as NYDUS_CHECK_ALLOWANCES
from drivers.nydus.entries import read_layer as read_nydus_layer

# The TOC stores modtime as RFC 3339 whole seconds (the writer rounds half-up, like Go's time.Round); the tar
# headers in the same blob are copied byte for byte, so the plain tar view keeps everything (exact default).
# The same allowances `accelctl check --source` uses (drivers/estargz/check.py): what the suite proves is
# what the check holds real images to.
ESTARGZ_ALLOWANCES = ESTARGZ_CHECK_ALLOWANCES
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


# What nydus legitimately does not keep, read through the blob's own per-layer bootstrap (nydusd's view):
# owner names (RAFS stores ids), sub-second mtimes (whole seconds, i_mtime_nsec 0: truncated, not rounded),
# tar order (a tree, dirents sorted by name); directories a layer only implies appear (the root with no
# "./" entry, parents of deep names). The blob is no tar, and its diff_id is the blob's own digest
# (nydus-snapshotter: blobs are not compressed). Whiteouts are kept as the source's .wh.* files: tar-rafs
# keeps them per layer, only the merged bootstrap applies them (tests/e2e/test_nydus_convert.py).
# Every matrix cell passes; ids above 32 bits, which nydus-image refuses, are not in the matrix (3,000,000).
NYDUS_ALLOWANCES = NYDUS_CHECK_ALLOWANCES  # also accelctl check's (drivers/nydus/check.py)


class TestNydusContract(DriverContract):
    driver_name = "nydus"
    options = {"fs_chunk_size": SMALL_CHUNK}
    chunk_size = SMALL_CHUNK
    other_options = {"compressor": "lz4_block"}
    reader = read_nydus_layer
    allowances = NYDUS_ALLOWANCES


class TestNydusSha256UncompressedContract(DriverContract):
    driver_name = "nydus"
    options = {"fs_chunk_size": "0x2000", "compressor": "none", "digester": "sha256"}
    chunk_size = 0x2000
    other_options = {"digester": "blake3"}
    reader = read_nydus_layer
    allowances = NYDUS_ALLOWANCES


def test_builtin_drivers_are_listed():
    assert {"estargz", "nydus"} <= set(available())


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
