"""The libdeflate binding the eStargz writer compresses with (Debian's libdeflate0, installed by make test)."""
import gzip
import os
import threading

from drivers.estargz import libdeflate


def test_libdeflate_is_present_and_makes_standard_gzip():
    assert libdeflate.available
    data = os.urandom(1000) + b"acceld " * 100_000
    for level in (0, 1, 6, 9, 12):
        out = libdeflate.gzip_compress(data, level)
        assert gzip.decompress(out) == data
        assert out[:2] == b"\x1f\x8b"
    assert len(libdeflate.gzip_compress(data, 9)) < len(data) // 20


def test_one_compressor_per_thread():
    data = b"x" * 1_000_000 + os.urandom(10_000)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(gzip.decompress(libdeflate.gzip_compress(data, 6)) == data)
        except Exception as exc:  # pragma: no cover - would fail the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80 and all(results)
