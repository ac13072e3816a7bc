"""The reference eStargz reader (Go, stargz-snapshotter 0.12) accepts what convert_tar writes, and sees the source.

Each case converts the feature tar (every tar feature, files around the chunk boundary) and checks:
the checker opens the blob, verifies the TOC digest and every chunk, and lists every source entry with equal
type, mode, owner, link target, xattrs, device numbers and bytes; the diff_id, sizes and annotations are what
the blob really holds; every TOC offset is the start of a member whose bytes are the chunk.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile

import pytest

from drivers.estargz.writer import convert_tar
from tests.interop import blobs
from tests.support import tars

CHUNK = 64 << 10
LANDMARK_SHA = "sha256:" + hashlib.sha256(b"\x0f").hexdigest()
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED = "io.containers.estargz.uncompressed-size"
CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
POSITION = "io.containers.zstd-chunked.manifest-position"

CASES = [
    pytest.param("estargz", CHUNK, {}, id="gzip-level9"),
    pytest.param("estargz", CHUNK, {"level": 1}, id="gzip-level1"),
    pytest.param("estargz", CHUNK, {"level": 0}, id="gzip-level0-stored"),
    pytest.param("estargz", CHUNK, {"level": 6, "workers": 2}, id="gzip-2workers"),
    pytest.param("estargz", 4096, {"level": 1}, id="gzip-chunk4k"),
    pytest.param("zstdchunked", CHUNK, {}, id="zstd-level9"),
    pytest.param("zstdchunked", CHUNK, {"level": 1}, id="zstd-level1"),
    pytest.param("zstdchunked", CHUNK, {"level": 19}, id="zstd-level19"),
    pytest.param("zstdchunked", 4096, {"level": 3, "workers": 3}, id="zstd-chunk4k-3workers"),
]


def convert(tmp_path, data: bytes, compression: str, chunk_size: int, **opts):
    path = tmp_path / f"layer-{compression}.blob"
    with open(path, "wb") as dst:
        result = convert_tar(tars.stream(data), dst, compression=compression, chunk_size=chunk_size, **opts)
    return result, path.read_bytes(), path


def assert_reader_sees_source(report: dict, view: dict[str, tars.ViewEntry]) -> None:
    got = report["by_name"]
    for name, want in view.items():
        assert name in got, f"{name!r} is missing from the reader's view"
        have = got[name]
        assert have["type"] == want.kind, name
        assert have["mode"] == want.mode, name
        assert (have["uid"], have["gid"]) == (want.uid, want.gid), name
        # the TOC format lets a reader fill a missing name from another entry with the same id, so only
        # names the source sets must match
        if want.uname:
            assert have["userName"] == want.uname, name
        if want.gname:
            assert have["groupName"] == want.gname, name
        if want.kind in ("symlink", "hardlink"):
            assert have["linkName"] == want.linkname, name
        assert (have["devMajor"], have["devMinor"]) == (want.devmajor, want.devminor), name
        xattrs = {k: base64.b64decode(v) for k, v in (have["xattrs"] or {}).items()}
        assert xattrs == dict(want.xattrs), name
        if want.sha256:
            assert have["size"] == want.size, name
            assert have["sha256"] == want.sha256, name


def source_files(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for info in tf:
            if info.isreg():
                out[tars.clean(info.name)] = tf.extractfile(info).read()
    return out


@pytest.fixture(scope="module")
def feature_data():
    return {CHUNK: tars.feature_tar(CHUNK), 4096: tars.feature_tar(4096)}


@pytest.mark.parametrize("compression, chunk_size, opts", CASES)
def test_reference_reader_accepts_and_sees_every_entry(tmp_path, checker, feature_data, compression, chunk_size, opts):
    data = feature_data[chunk_size]
    result, blob, path = convert(tmp_path, data, compression, chunk_size, **opts)
    report = checker.check(path, result.toc_digest)

    assert report["tocDigest"] == result.toc_digest == result.annotations[TOC_DIGEST]
    assert_reader_sees_source(report, tars.expected_view(data))
    landmark = report["by_name"][".no.prefetch.landmark"]
    assert (landmark["size"], landmark["sha256"]) == (1, LANDMARK_SHA)
    assert "stargz.index.json" not in report["by_name"]
    for entry in report["entries"]:
        if entry["type"] == "reg":
            assert entry["chunks"] == -(-entry["size"] // chunk_size), entry["name"]


@pytest.mark.parametrize("compression, chunk_size, opts", CASES)
def test_blob_structure(tmp_path, feature_data, compression, chunk_size, opts):
    data = feature_data[chunk_size]
    result, blob, _ = convert(tmp_path, data, compression, chunk_size, **opts)
    kind = "gzip" if compression == "estargz" else "zstd"
    assert result.compression == kind
    assert result.size == len(blob)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()

    # diff_id and uncompressed size are those of the whole decompressed stream, which is a valid tar
    plain = blobs.decompress_all(blob, kind)
    assert result.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert result.uncompressed_size == len(plain) == int(result.annotations[UNCOMPRESSED])
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        names = [m.name for m in tf]
    assert names[0] == ".no.prefetch.landmark"
    # a runtime that just untars the layer sees exactly the source (headers pass through: PAX, GNU, sub-second
    # mtimes, xattrs, devices, links)
    assert tars.expected_view(plain) == tars.expected_view(data)
    if kind == "gzip":
        assert names[-1] == "stargz.index.json" and names.count("stargz.index.json") == 1

    # the TOC found through the footer is the one the digest names
    toc, raw = blobs.read_toc(blob, kind)
    assert result.toc_digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert toc["version"] == 1
    if kind == "zstd":
        offset, clen, ulen, _ = blobs.zstdchunked_footer(blob)
        assert result.annotations[POSITION] == f"{offset}:{clen}:{ulen}:1"
        assert result.annotations[CHECKSUM] == "sha256:" + hashlib.sha256(blob[offset:offset + clen]).hexdigest()
        assert set(result.annotations) == {TOC_DIGEST, UNCOMPRESSED, CHECKSUM, POSITION}
    else:
        assert set(result.annotations) == {TOC_DIGEST, UNCOMPRESSED}

    # a member starts at the blob start and at every TOC offset; each holds the chunk's bytes first
    blobs.member_at(blob, 0, kind)
    files = source_files(data)
    files[".no.prefetch.landmark"] = b"\x0f"
    entries = toc["entries"]
    assert entries[0]["name"] == ".no.prefetch.landmark"
    offsets = [e["offset"] for e in entries if "offset" in e]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    current = None
    for e in entries:
        if e["type"] == "reg":
            current = e
            assert "digest" in e, e["name"]
            assert e["digest"] == "sha256:" + hashlib.sha256(files[e["name"]]).hexdigest()
            if not e.get("size"):
                assert "offset" not in e and "chunkDigest" not in e
                continue
        elif e["type"] != "chunk":
            assert "offset" not in e and "chunkDigest" not in e, e["name"]
            continue
        assert e["name"] == current["name"]
        content = files[e["name"]]
        start = e.get("chunkOffset", 0)
        size = e.get("chunkSize") or len(content) - start
        assert size == min(chunk_size, len(content) - start)
        member, _ = blobs.member_at(blob, e["offset"], kind)
        assert member[:size] == content[start:start + size], (e["name"], start)
        assert e["chunkDigest"] == "sha256:" + hashlib.sha256(content[start:start + size]).hexdigest()


def test_toc_fields(tmp_path, feature_data):
    result, blob, _ = convert(tmp_path, feature_data[CHUNK], "estargz", CHUNK, level=1)
    toc, _ = blobs.read_toc(blob, "gzip")
    by_name = {}
    for e in toc["entries"]:
        if e["type"] != "chunk":
            by_name[e["name"]] = e
    assert by_name["./"]["type"] == "dir"
    assert by_name["etc/hostname"]["modtime"] == "2023-11-14T22:13:21Z"   # 1700000000.75 rounds up
    assert by_name["etc/old"]["modtime"] == "1960-01-01T00:00:00Z"
    assert by_name["etc/future"]["modtime"] == "2286-11-20T17:46:40Z"
    assert "modtime" not in by_name["etc/epoch"]
    # hard links name their final target by its TOC name: no "./" or "/" prefix, chains resolved
    assert by_name["etc/hostname.link"]["linkName"] == "etc/hostname"
    assert by_name["link-to-link"]["linkName"] == "etc/hostname"
    assert by_name["etc/dotlink"]["linkName"] == "etc/os-release"
    assert by_name["usr/bin/sh"]["linkName"] == "/bin/busybox"
    assert base64.b64decode(by_name["usr/bin/ping"]["xattrs"]["security.capability"]) == tars.CAPABILITY
    assert by_name["usr/bin/ping"]["mode"] == 0o4755
    assert (by_name["bigids"]["uid"], by_name["bigids"]["gid"]) == (100_000_000, 4_294_967_294)
    assert (by_name["gnu-bigids"]["uid"], by_name["gnu-bigids"]["gid"]) == (1 << 21, (1 << 33) + 5)
    assert (by_name["dev/big"]["devMajor"], by_name["dev/big"]["devMinor"]) == (259, 1048575)
    assert "size" not in by_name["empty"] and by_name["empty"]["digest"] == "sha256:" + hashlib.sha256(b"").hexdigest()
    big = by_name[f"sizes/random-{2 * CHUNK + 7}"]
    assert big["chunkSize"] == CHUNK and big["size"] == 2 * CHUNK + 7
    exact = by_name[f"sizes/random-{CHUNK}"]
    assert exact["chunkSize"] == CHUNK and exact["size"] == CHUNK
    short = by_name["sizes/random-1"]
    assert "chunkSize" not in short and short["chunkDigest"] == short["digest"]
    dups = [e for e in toc["entries"] if e["name"] == "dup"]
    assert len(dups) == 1 and dups[0]["size"] == len(b"second version wins\n")


@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_prioritized_files_come_first(tmp_path, checker, feature_data, compression):
    data = feature_data[CHUNK]
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    prioritized = ["etc/hostname", "/usr/bin/ping", "./sizes/link-to-chunked", "not/in/this/layer"]
    path = tmp_path / "layer.blob"
    with open(path, "wb") as dst:
        result = convert_tar(tars.stream(data), dst, compression=compression, chunk_size=CHUNK, level=1,
                             prioritized_files=prioritized, tmp_dir=str(spool_dir))
    assert os.listdir(spool_dir) == []  # the spool file is gone
    blob = path.read_bytes()
    kind = result.compression
    toc, _ = blobs.read_toc(blob, kind)
    order = [e["name"] for e in toc["entries"] if e["type"] != "chunk"]
    big = f"sizes/random-{2 * CHUNK + 7}"
    head = ["./", "etc", "etc/hostname", "usr", "usr/bin", "usr/bin/ping", big, "sizes/link-to-chunked",
            ".prefetch.landmark"]
    assert order[:len(head)] == head
    assert ".no.prefetch.landmark" not in order
    # the tar stream has the same order as the TOC
    with tarfile.open(fileobj=io.BytesIO(blobs.decompress_all(blob, kind))) as tf:
        stream_order = [tars.clean(m.name) or "./" for m in tf if m.name != "stargz.index.json"]
    assert stream_order == order
    report = checker.check(path, result.toc_digest)
    assert_reader_sees_source(report, tars.expected_view(data))
    assert report["by_name"][".prefetch.landmark"]["sha256"] == LANDMARK_SHA


@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_output_is_deterministic_across_workers(tmp_path, feature_data, compression):
    data = feature_data[4096]
    outs = [convert(tmp_path, data, compression, 4096, level=1, workers=workers)[:2] for workers in (1, 1, 2, 4)]
    assert all(out == outs[0] for out in outs[1:])


def test_default_chunk_size_and_big_file(tmp_path, checker):
    content = tars.payload(9 << 20, "big")
    data = tars.build_tar([tars.directory("d"), tars.reg("d/big", content), tars.reg("d/small", b"s")])
    path = tmp_path / "big.blob"
    with open(path, "wb") as dst:
        result = convert_tar(tars.stream(data, 1 << 16), dst, level=1)
    report = checker.check(path, result.toc_digest)
    big = report["by_name"]["d/big"]
    assert big["chunks"] == 3 and big["sha256"] == "sha256:" + hashlib.sha256(content).hexdigest()


def test_many_header_only_entries_split_members(tmp_path, checker):
    entries = [tars.directory(f"d{i:04d}") for i in range(600)] + [tars.reg("f", b"x" * 10)]
    entries += [tars.symlink(f"d0000/l{i:04d}", "../f") for i in range(600)]
    data = tars.build_tar(entries)
    result, blob, path = convert(tmp_path, data, "estargz", 4096, level=1)
    members, rest = 0, blob
    while rest:
        import zlib
        d = zlib.decompressobj(31)
        d.decompress(rest)
        rest = d.unused_data
        members += 1
    # 1 landmark header member + landmark payload + f + TOC + footer would be 5; header runs add more
    assert members > 5 + (len(data) // 4096) // 2
    report = checker.check(path, result.toc_digest)
    assert_reader_sees_source(report, tars.expected_view(data))


def test_reconverting_an_estargz_layer(tmp_path, checker, feature_data):
    data = feature_data[CHUNK]
    first, blob, _ = convert(tmp_path, data, "estargz", CHUNK, level=1)
    plain = blobs.decompress_all(blob, "gzip")   # has a landmark and a stargz.index.json entry
    second, blob2, path = convert(tmp_path, plain, "zstdchunked", CHUNK, level=1)
    toc, _ = blobs.read_toc(blob2, "zstd")
    names = [e["name"] for e in toc["entries"] if e["type"] != "chunk"]
    assert names.count(".no.prefetch.landmark") == 1 and "stargz.index.json" not in names
    report = checker.check(path, second.toc_digest)
    assert_reader_sees_source(report, tars.expected_view(data))


def test_checker_is_not_vacuous(tmp_path, checker, feature_data):
    """The reader refuses a wrong TOC digest and a blob with a corrupted chunk."""
    result, blob, path = convert(tmp_path, feature_data[CHUNK], "estargz", CHUNK, level=0)
    assert "invalid TOC JSON" in checker.reject(path, "sha256:" + "0" * 64)
    toc, _ = blobs.read_toc(blob, "gzip")
    victim = next(e for e in toc["entries"] if e["name"] == f"sizes/random-{CHUNK - 1}")
    corrupt = bytearray(blob)
    corrupt[victim["offset"] + 100] ^= 0xFF  # level 0: stored blocks, so this flips a payload byte
    bad = tmp_path / "corrupt.blob"
    bad.write_bytes(bytes(corrupt))
    checker.reject(bad, result.toc_digest)


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_a_real_tree(tmp_path, checker, compression):
    """Python's own stdlib tree (thousands of real files, symlinks, __pycache__), tarred by GNU tar."""
    import shutil
    import subprocess
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    source = tmp_path / "stdlib.tar"
    tar = shutil.which("tar")
    assert tar, "GNU tar is needed to build the real-tree layer"
    excludes = [f"--exclude={name}" for name in ("site-packages", "test", "tests", "__pycache__")]
    subprocess.run([tar, "--format=gnu", *excludes, "-cf", str(source), "-C", os.path.dirname(stdlib),
                    os.path.basename(stdlib)], check=True)
    data = source.read_bytes()
    path = tmp_path / "stdlib.blob"
    with open(source, "rb", buffering=0) as src, open(path, "wb") as dst:
        result = convert_tar(src, dst, compression=compression, level=1, workers=2)
    report = checker.check(path, result.toc_digest)
    view = tars.expected_view(data)
    assert len(view) > 500
    assert_reader_sees_source(report, view)
    plain = blobs.decompress_all(path.read_bytes(), result.compression)
    assert result.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
