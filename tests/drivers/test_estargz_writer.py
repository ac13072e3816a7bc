"""convert_tar on its own: hostile and broken input, accepted oddities, options, streaming memory."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import zstandard

from acceleration_sdk.errors import DriverError, LayerError
from drivers.estargz.writer import LayerResult, convert_tar
from tests.interop import blobs
from tests.support import tars

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOSTILE = tars.hostile_tars()


def toc_names(src, compression="estargz", **opts) -> list[str]:
    out = io.BytesIO()
    result = convert_tar(src, out, compression=compression, chunk_size=4096, level=1, **opts)
    toc, _ = blobs.read_toc(out.getvalue(), result.compression)
    return [e["name"] for e in toc["entries"] if e["type"] != "chunk"]


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("prioritized", [(), ("a",)], ids=["streamed", "spooled"])
def test_hostile_input_is_a_layer_error(tmp_path, monkeypatch, name, prioritized):
    monkeypatch.chdir(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    with pytest.raises(LayerError) as info:
        convert_tar(tars.stream(HOSTILE[name], 700), tars.HashingSink(), chunk_size=4096, level=1,
                    prioritized_files=prioritized, tmp_dir=str(spool))
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 400
    assert info.value.code == "ERR_LAYER"
    # nothing is written to the file system from entry names, and the spool is cleaned up
    assert sorted(os.listdir(tmp_path)) == ["spool"] and os.listdir(spool) == []


@pytest.mark.parametrize("name, fragment", [
    ("garbage", "not a tar stream"),
    ("truncated-in-payload", "truncated"),
    ("dotdot-name", "escapes the layer root"),
    ("dangling-hardlink", "not earlier in the layer"),
    ("hardlink-cycle", "cycle"),
    ("huge-pax-header", "extended header"),
    ("gnu-sparse", "sparse"),
])
def test_layer_errors_say_what_is_wrong(name, fragment):
    with pytest.raises(LayerError, match=fragment):
        convert_tar(io.BytesIO(HOSTILE[name]), tars.HashingSink())


def test_broken_compressed_source_is_a_layer_error():
    good = gzip.compress(tars.build_tar([tars.reg("a", tars.payload(100_000))]))
    with pytest.raises(LayerError, match="cannot read layer stream"):
        convert_tar(gzip.GzipFile(fileobj=io.BytesIO(good[:len(good) // 2])), tars.HashingSink())
    bad_zstd = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\xff" * 100))
    with pytest.raises(LayerError):
        convert_tar(bad_zstd, tars.HashingSink())


def test_absolute_and_dotted_names_are_normalised():
    data = tars.build_tar([tars.reg("/etc/passwd", b"root:x:0:0\n"), tars.reg("./x/./y", b"y"),
                           tars.directory("/"), tars.hardlink("/l", "/etc/passwd")])
    assert toc_names(io.BytesIO(data)) == [".no.prefetch.landmark", "etc/passwd", "x/y", "./", "l"]


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty-stream"),
    pytest.param(tars.END_OF_ARCHIVE, id="only-end-marker"),
    pytest.param(bytes(512), id="one-zero-block"),
])
@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_empty_layers_convert(data, compression):
    assert toc_names(io.BytesIO(data), compression) == [".no.prefetch.landmark"]


def test_missing_end_marker_and_trailing_bytes_are_tolerated():
    entries = [tars.reg("a", b"a" * 700), tars.symlink("b", "a")]
    assert toc_names(io.BytesIO(tars.build_tar(entries, end=False)))[1:] == ["a", "b"]
    trailing = tars.build_tar(entries) + b"junk after the end of the archive" * 50
    assert toc_names(tars.stream(trailing, 100))[1:] == ["a", "b"]


def test_reserved_entries_are_dropped_and_global_headers_kept():
    import tarfile
    glob = tarfile.TarInfo.create_pax_global_header({"comment": "made by git archive", "uname": "globaluser"})
    data = (glob + tars.build_tar([
        tars.reg("stargz.index.json", b"{}"), tars.reg(".no.prefetch.landmark", b"\x0f"),
        tars.reg("./.prefetch.landmark", b"\x0f"), tars.reg("kept", b"k")]))
    out = io.BytesIO()
    result = convert_tar(io.BytesIO(data), out, level=1)
    toc, _ = blobs.read_toc(out.getvalue(), "gzip")
    assert [e["name"] for e in toc["entries"]] == [".no.prefetch.landmark", "kept"]
    assert toc["entries"][1]["userName"] == "globaluser"  # the global record applies to later entries
    plain = blobs.decompress_all(out.getvalue(), "gzip")
    assert b"made by git archive" in plain  # the global header itself passes through
    assert result.uncompressed_size == len(plain)


@pytest.mark.parametrize("options, fragment", [
    ({"compression": "lz4"}, "unknown eStargz compression"),
    ({"compression": "zstd"}, "unknown eStargz compression"),
    ({"level": 10}, "gzip level"),
    ({"level": -1}, "gzip level"),
    ({"level": "9"}, "gzip level"),
    ({"compression": "zstdchunked", "level": 0}, "zstd level"),
    ({"compression": "zstdchunked", "level": 23}, "zstd level"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"chunk_size": 1.5}, "chunk_size"),
    ({"workers": 0}, "workers"),
    ({"prioritized_files": "etc/passwd"}, "prioritized_files"),
    ({"prioritized_files": [b"etc/passwd"]}, "prioritized_files"),
])
def test_bad_options_are_driver_errors(options, fragment):
    sink = tars.HashingSink()
    with pytest.raises(DriverError, match=fragment):
        convert_tar(io.BytesIO(tars.build_tar([])), sink, **options)
    assert sink.size == 0


@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_result_describes_what_was_written(compression):
    sink = tars.HashingSink()
    data = tars.build_tar([tars.reg("f", tars.payload(50_000))])
    result = convert_tar(tars.stream(data), sink, compression=compression, chunk_size=8192, level=3)
    assert isinstance(result, LayerResult)
    assert (result.digest, result.size) == (sink.digest, sink.size)
    assert result.compression == {"estargz": "gzip", "zstdchunked": "zstd"}[compression]
    with pytest.raises(TypeError):
        result.annotations["x"] = "y"  # read-only


PEAK_RSS = """
def peak_rss_kib():
    # VmHWM is the peak RSS of this process image. getrusage's ru_maxrss is not: Linux carries the parent's
    # high-water mark across fork/vfork + exec, so a child of a big pytest process would report the parent.
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    import resource
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""


def _run_isolated(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS + textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_rss_measure_sees_an_allocation():
    """The RSS probe the memory tests rely on really moves with memory use (so it cannot pass vacuously)."""
    stats = _run_isolated("""
        import json
        before = peak_rss_kib()[0]
        blob = bytearray(300 << 20)
        blob[::4096] = b"x" * len(blob[::4096])
        print(json.dumps({"before": before, "after": peak_rss_kib()[0]}))
    """)
    assert stats["after"] - stats["before"] > 250_000


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_memory_stays_flat_on_a_1gib_layer(compression):
    """A 1 GiB tar streamed from a generator converts with a peak RSS well under 200 MB."""
    stats = _run_isolated(f"""
        import json
        from tests.support import tars
        from drivers.estargz.writer import convert_tar
        sink = tars.HashingSink()
        result = convert_tar(tars.IterStream(tars.generated_layer(1 << 30)), sink,
                             compression={compression!r}, level=1, workers=2)
        print(json.dumps({{"rss_kib": peak_rss_kib(), "size": sink.size,
                          "digest": sink.digest, "result": [result.digest, result.size],
                          "uncompressed": result.uncompressed_size}}))
    """)
    assert stats["uncompressed"] > 1 << 30
    assert stats["result"] == [stats["digest"], stats["size"]]
    assert stats["size"] > 1 << 29  # incompressible content: the blob is about as big as the input
    hwm, maxrss = stats["rss_kib"]
    assert hwm < 200_000, f"peak RSS {hwm} KiB (ru_maxrss {maxrss} KiB)"


@pytest.mark.slow
def test_memory_stays_flat_when_spooling_for_prioritized_files(tmp_path):
    """Prioritized files spool the layer to disk under tmp_dir, not to memory, and remove the spool."""
    stats = _run_isolated(f"""
        import json, os
        from tests.support import tars
        from drivers.estargz.writer import convert_tar
        sink = tars.HashingSink()
        result = convert_tar(tars.IterStream(tars.generated_layer(384 << 20)), sink, level=1, workers=2,
                             prioritized_files=["data/big-00020", "data/small-00003-1"], tmp_dir={str(tmp_path)!r})
        print(json.dumps({{"rss_kib": peak_rss_kib(),
                          "left": os.listdir({str(tmp_path)!r}), "uncompressed": result.uncompressed_size}}))
    """)
    assert stats["uncompressed"] > 384 << 20
    assert stats["left"] == []
    hwm, maxrss = stats["rss_kib"]
    assert hwm < 200_000, f"peak RSS {hwm} KiB (ru_maxrss {maxrss} KiB)"


def test_short_writes_are_completed():
    class Trickle:
        """Takes at most 1000 bytes per write, like a raw file object may."""

        def __init__(self):
            self.buf = bytearray()

        def write(self, data):
            self.buf += bytes(data[:1000])
            return min(len(data), 1000)

    data = tars.build_tar([tars.reg("f", tars.payload(30_000))])
    whole, trickle = io.BytesIO(), Trickle()
    first = convert_tar(io.BytesIO(data), whole, chunk_size=8192)
    second = convert_tar(io.BytesIO(data), trickle, chunk_size=8192, workers=2)
    assert bytes(trickle.buf) == whole.getvalue() and first == second


@pytest.mark.slow
def test_memory_with_many_entries(tmp_path):
    """The TOC grows with the entry count (like Go's); 150k files still convert well under 200 MB."""
    blob = tmp_path / "many.blob"
    stats = _run_isolated(f"""
        import json
        from tests.support import tars
        from drivers.estargz.writer import convert_tar
        with open({str(blob)!r}, "wb") as dst:
            result = convert_tar(tars.IterStream(tars.many_files_layer(150_000)), dst, level=1, workers=2)
        print(json.dumps({{"rss_kib": peak_rss_kib(),
                          "toc_digest": result.toc_digest}}))
    """)
    toc, raw = blobs.read_toc(blob.read_bytes(), "gzip")
    assert stats["toc_digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert len(toc["entries"]) == 1 + 100 + 150_000
    hwm, maxrss = stats["rss_kib"]
    assert hwm < 200_000, f"peak RSS {hwm} KiB (ru_maxrss {maxrss} KiB)"
