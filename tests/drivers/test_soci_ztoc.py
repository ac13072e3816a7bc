"""Our ztoc builder against upstream's (``soci-build``, soci-snapshotter's own ``BuildZtoc``): same layer and span
size -> the same entries, spans, checkpoints (windows included), sizes, and the same flatbuffer bytes.

The layers cover what Go's tar reader and zlib's block boundaries make tricky: PAX records (sub-second mtimes,
xattrs, long names), GNU long names, ustar prefixes, directories' trailing ``/``, links, devices, fifos,
multi-span random data (checkpoints with bit offsets), several gzip levels, concatenated gzip members and an
uncompressed tar layer.
"""
from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import random
import tarfile
import threading
import zlib

import pytest

from acceleration_sdk import oci, zlib_raw
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from acceleration_sdk.testing import MATRIX, build_tar, cell_entries
from drivers.soci import ztoc
from drivers.soci.gzindex import GzipIndexError
from drivers.soci.tartoc import TarTocError
from tests.support import soci_tools
from tests.support.images import sha

SPAN = 65536


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = kw.pop("mtime", 1700000000)
    for k, v in kw.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if data else None)


def pax_tar() -> bytes:
    rnd = random.Random(1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "etc/", type=tarfile.DIRTYPE, mode=0o755, uname="root", gname="root")
        _add(tf, "etc/hosts", b"127.0.0.1 localhost\n", mode=0o644, uid=1000, gid=100, uname="me", gname="users",
             mtime=1700000000.123456789)
        _add(tf, "bin/" + "x" * 150, rnd.randbytes(300_000), mode=0o755)  # PAX path
        _add(tf, "usr/share/very/long/prefix/" * 4 + "f", b"prefixed")  # ustar prefix or PAX
        _add(tf, "etc/link", type=tarfile.SYMTYPE, linkname="hosts")
        _add(tf, "etc/hard", type=tarfile.LNKTYPE, linkname="etc/hosts")
        _add(tf, "dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        _add(tf, "dev/sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0)
        _add(tf, "run/fifo", type=tarfile.FIFOTYPE)
        info = tarfile.TarInfo("etc/xattr")
        info.pax_headers = {"SCHILY.xattr.user.k": "v", "SCHILY.xattr.security.capability": "\x01\x02"}
        tf.addfile(info)
        _add(tf, "opt/.wh..wh..opq")
        _add(tf, "big.bin", rnd.randbytes(700_000) + bytes(400_000) + rnd.randbytes(200_000))
        _add(tf, "empty", b"")
    return buf.getvalue()


def gnu_tar() -> bytes:
    rnd = random.Random(2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "g/", type=tarfile.DIRTYPE)
        _add(tf, "g/" + "long" * 40, rnd.randbytes(200_000))
        _add(tf, "g/ln", type=tarfile.SYMTYPE, linkname="t/" * 70)
        _add(tf, "g/text", b"hello world\n" * 50_000)
    return buf.getvalue()


def odd_numbers_tar() -> bytes:
    """GNU base-256 fields (a large uid, a pre-1970 mtime), UTF-8 names, and a USTAR prefix split."""
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "big-uid", b"u" * 3000, uid=1 << 30, gid=1 << 22)
        _add(tf, "old", b"o" * 100, mtime=-1000)
        _add(tf, "caf\u00e9/\u65e5\u672c", b"utf-8 name")
    ustar = io.BytesIO()
    with tarfile.open(fileobj=ustar, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        _add(tf, "a" * 90 + "/" + "b" * 90, random.Random(3).randbytes(150_000))
        _add(tf, "future", b"f", mtime=4102444800)  # 2100-01-01
    # two archives back to back: the first end-of-archive ends the TOC, as for Go's reader
    return gnu.getvalue() + ustar.getvalue()


def concatenated(tar: bytes) -> bytes:
    cut = len(tar) // 3
    return gzip.compress(tar[:cut], mtime=0) + gzip.compress(tar[cut:], mtime=0)


def layers() -> list[tuple[str, bytes, bytes]]:
    """(media type, blob, tar) of every layer."""
    pax, gnu = pax_tar(), gnu_tar()
    cell = next(c for c in MATRIX if c.format == tarfile.PAX_FORMAT and c.prefix == "" and c.compression == "gzip")
    suite_pax = build_tar(cell_entries(cell, 4096), cell)
    gz = oci.OCI_LAYER_GZIP
    return [(gz, gzip.compress(pax, 6, mtime=0), pax),
            (gz, gzip.compress(pax, 1, mtime=0), pax),
            (gz, gzip.compress(gnu, 9, mtime=0), gnu),
            (gz, concatenated(pax), pax),
            (gz, _huffman_gzip(gnu), gnu),
            (oci.OCI_LAYER, pax, pax),
            (gz, gzip.compress(odd_numbers_tar(), 6, mtime=0), odd_numbers_tar()),
            # the conformance suite's PAX cell: a binary security.capability xattr (hdrcharset=BINARY), whose
            # bytes are not UTF-8 and must reach the ztoc as they are (Go strings are bytes)
            (gz, gzip.compress(suite_pax, 6, mtime=0), suite_pax)]


def push(client, ref: str, entries: list[tuple[str, bytes, bytes]]) -> None:
    r = parse(ref)
    descs = []
    for mt, blob, _ in entries:
        client.push_blob(r, sha(blob), len(blob), io.BytesIO(blob))
        descs.append({"mediaType": mt, "digest": sha(blob), "size": len(blob)})
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
        sha(tar) for _, _, tar in entries]}}).encode()
    client.push_blob(r, sha(config), len(config), io.BytesIO(config))
    manifest = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(config), "size": len(config)},
                "layers": descs}
    client.put_manifest(r, json.dumps(manifest).encode(), oci.OCI_MANIFEST)


def reference_ztocs(client, ref: str) -> dict[str, bytes]:
    """Layer digest -> the ztoc soci-build made for it."""
    r = parse(ref)
    top = json.loads(client.get_manifest(r).raw)
    soci_desc = [d for d in top["manifests"] if d.get("artifactType") == "application/vnd.amazon.soci.index.v2+json"]
    index = json.loads(client.get_manifest(r.with_digest(soci_desc[0]["digest"])).raw)
    out = {}
    for layer in index["layers"]:
        buf = io.BytesIO()
        client.download_blob(r, layer["digest"], buf)
        out[layer["annotations"]["com.amazon.soci.image-layer-digest"]] = buf.getvalue()
    return out


def ours(media_type: str, blob: bytes, inflate: str = "auto") -> bytes:
    if media_type == oci.OCI_LAYER:
        return ztoc.marshal(ztoc.build_tar(io.BytesIO(blob), SPAN))
    return ztoc.marshal(ztoc.build_gzip(io.BytesIO(blob), SPAN, inflate=inflate))


# block ends, bits and windows are the deflate stream's: zlib-ng (the fast path) and the system zlib (the
# fallback when the zlib-ng wheel is missing) must both give upstream's bytes. Without the wheel the zlib-ng
# cases are left out on a developer machine; never in CI (`CI` set), where requirements.txt installs it and
# its absence fails ("inflate backend 'zlib-ng' is not available") instead of shrinking the test.
BACKENDS = ["zlib"] + (["zlib-ng"] if zlib_raw.available("zlib-ng") or os.environ.get("CI") else [])


def test_ztocs_match_upstream_soci_build(registry):
    entries = layers()
    with RegistryClient() as client:
        push(client, f"{registry.host}/z:src", entries)
        soci_tools.soci_build(f"{registry.host}/z:src", f"{registry.host}/z:ref", span_size=SPAN)
        ref = reference_ztocs(client, f"{registry.host}/z:ref")
    assert len(ref) == len(entries)
    for (mt, blob, _), inflate in itertools.product(entries, BACKENDS):
        want, got = ref[sha(blob)], ours(mt, blob, inflate)
        dw, dg = ztoc.decode(want), ztoc.decode(got)
        assert dg["entries"] == dw["entries"]
        for key in ("compressed_size", "uncompressed_size", "algorithm", "max_span_id", "span_digests", "version"):
            assert dg[key] == dw[key], key
        assert dg["checkpoints"] == dw["checkpoints"]
        assert dw["max_span_id"] >= (1 if len(blob) > 3 * SPAN else 0)  # the layers do span several spans
        assert got == want  # byte-identical flatbuffers


def _huffman_gzip(data: bytes) -> bytes:
    co = zlib.compressobj(6, zlib.DEFLATED, 31, 9, zlib.Z_HUFFMAN_ONLY)
    return co.compress(data) + co.flush()


@pytest.mark.parametrize("blob, error", [
    (b"this is not gzip at all" * 100, GzipIndexError),
    (gzip.compress(pax_tar(), mtime=0)[:-5000], GzipIndexError),  # truncated
    (gzip.compress(pax_tar(), mtime=0) + b"garbage!" * 10, GzipIndexError),  # trailing garbage
    (gzip.compress(b"not a tar header" * 64, mtime=0), TarTocError),
    (gzip.compress(pax_tar()[:600_000], mtime=0), TarTocError),  # a whole gzip of a tar cut inside a file
    # not a tar, 16 MiB inflated: the reader fails at once while the inflating thread waits on a full ring
    (gzip.compress(b"not a tar header" * (1 << 20), 1, mtime=0), TarTocError),
])
def test_bad_gzip_layers_fail_clearly(blob, error):
    raw = io.BytesIO(blob)
    with pytest.raises(error) as exc:
        ztoc.build_gzip(raw, SPAN)
    assert str(exc.value)
    assert not [t for t in threading.enumerate() if t.name == "soci-inflate"]  # joined on the error path
    raw.read()  # the stream is the caller's again (the provider reads the rest to verify it)
