"""Hostile layers through the whole engine: each pushed as a layer to the real registry and converted in a
child process (tests/support/convert_child.py) whose peak RSS and time are measured.

Every case ends either converted faithfully (the converted layer shows exactly the source's entries: names
are data) or with a one-line LayerError naming the layer and what is wrong with it. Memory stays under
200 MB, each case takes seconds, and no file appears anywhere but under work_dir's content store: the test
snapshots the directories around the child's cwd and looks for every path the tars name.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import uuid
import zlib
from typing import Callable, Iterable, Iterator

import pytest

from acceleration_sdk import oci
from acceleration_sdk.compression import open_decompressed
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support import tars
from tests.support.registry import RegistryServer

RSS_LIMIT_KIB = 200_000
pytestmark = pytest.mark.slow  # one child process converts ~50 layers (~20 s with the pushes)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = uuid.uuid4().hex[:12]  # makes every path a tar names unique to this run


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class Case:
    blob: bytes  # the layer blob as pushed
    expect: str  # "converted" or "refused"
    says: str = ""  # a regex the refusal message must match
    tar: bytes | None = None  # the uncompressed source tar, to compare a converted layer with
    media_type: str = oci.OCI_LAYER_GZIP
    diff_id: str = ""


def gz(tar: bytes) -> bytes:
    return gzip.compress(tar, compresslevel=6, mtime=0)


def converted(entries: list[tars.Entry]) -> Case:
    tar = tars.build_tar(entries)
    return Case(gz(tar), "converted", tar=tar, diff_id=sha(tar))


def converted_tar_bytes(tar: bytes) -> Case:
    return Case(gz(tar), "converted", tar=tar, diff_id=sha(tar))


def refused(tar: bytes, says: str, **kw) -> Case:
    return Case(kw.pop("blob", None) or gz(tar), "refused", says, diff_id=sha(tar), **kw)


def _set_field(block: bytes, start: int, value: bytes) -> bytes:
    """Put ``value`` at ``start`` of a header block and fix its checksum."""
    b = bytearray(block)
    b[start:start + len(value)] = value
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\x00 " % sum(b)
    return bytes(b)


HUNDRED_GB = 100 << 30


def deep_tree(depth: int) -> Iterator[bytes]:
    """What `tar c` makes of a ``depth``-deep tree: every directory, each name longer (PAX ``path`` records)."""
    name = ""
    for _ in range(depth):
        name += "d/"
        yield tars.pax_block(tars.pax_record("path", name.encode())) + tars.raw_header("d/", b"5", mode=0o755)
    yield tars.reg(name + "f", b"at the bottom").to_bytes()
    yield tars.END_OF_ARCHIVE


def refused_stream(pieces: Iterable[bytes], says: str) -> Case:
    """A refused case whose tar is gzipped piece by piece, never held whole (the 10,000-deep tree is 213 MB)."""
    z, h, out = zlib.compressobj(6, zlib.DEFLATED, 31), hashlib.sha256(), []
    for piece in pieces:
        h.update(piece)
        out.append(z.compress(piece))
    out.append(z.flush())
    return Case(b"".join(out), "refused", says, diff_id="sha256:" + h.hexdigest())


def _sparse_gnu() -> bytes:
    return _set_field(tars.raw_header("sparse", b"S", 0), 483, b"%011o\x00" % HUNDRED_GB)  # realsize: 100 GB


def _sparse_pax() -> bytes:
    records = (tars.pax_record("GNU.sparse.realsize", str(HUNDRED_GB).encode())
               + tars.pax_record("GNU.sparse.major", b"1") + tars.pax_record("GNU.sparse.minor", b"0"))
    return tars.pax_block(records) + tars.reg("s", b"x").to_bytes()


_VALID = tars.build_tar([tars.reg("a", tars.payload(50_000)), tars.reg("b", b"b")])

# name -> a function of the sentinel directory ``outside`` (absolute) returning the Case
CASES: dict[str, Callable[[str], Case]] = {
    # names are data: converted as they are, nothing is written anywhere from them
    "absolute-names": lambda outside: converted([
        tars.reg(f"{outside}/abs-{TOKEN}", b"absolute"), tars.reg(f"/etc/acceld-hostile-{TOKEN}", b"absolute"),
        tars.directory("/")]),
    "symlink-then-file": lambda outside: converted([
        tars.symlink("a", outside), tars.reg("a/passwd", b"through a symlink"),
        tars.symlink("up", "../../../.."), tars.reg(f"up/escaped-{TOKEN}", b"up"),
        tars.symlink("etc", "/etc"), tars.reg(f"etc/acceld-{TOKEN}", b"x")]),
    "hardlink-then-file": lambda outside: converted([
        tars.reg("t", b"target"), tars.hardlink("h", "t"), tars.reg("h", b"replaces the link, not the target")]),
    "deep-path-2000": lambda outside: converted([tars.reg("d/" * 2000 + "f", b"deep, and still a path")]),
    "deep-tree-2000": lambda outside: converted_tar_bytes(b"".join(deep_tree(2000))),
    # refused, with a reason
    "deep-path-10000": lambda outside: refused(tars.build_tar([tars.reg("d/" * 10_000 + "f", b"deep")]),
                                               "20001 bytes, longer than any path"),
    "deep-tree-10000": lambda outside: refused_stream(deep_tree(10_000), "4097 bytes, longer than any path"),
    "symlink-target-too-long": lambda outside: refused(tars.build_tar([tars.symlink("l", "x/" * 3000)]),
                                                       "symlink target .* 6000 bytes"),
    "dotdot-name": lambda outside: refused(tars.build_tar([tars.reg(f"../../escape-{TOKEN}", b"pwned")]),
                                           "escapes the layer root"),
    "dotdot-after-symlink": lambda outside: refused(
        tars.build_tar([tars.symlink("s", "."), tars.reg(f"s/../../esc-{TOKEN}")]), "escapes the layer root"),
    "absolute-hardlink": lambda outside: refused(tars.build_tar([tars.hardlink("h", "/etc/passwd")]),
                                                 "not earlier in the layer"),
    "header-claims-100gb": lambda outside: refused(
        tars.raw_header("big", b"0", size_field=b"\x80" + HUNDRED_GB.to_bytes(11, "big")) + b"z" * 4096,
        "truncated tar"),
    "gnu-sparse-100gb": lambda outside: refused(_sparse_gnu() + tars.END_OF_ARCHIVE, "sparse"),
    "pax-sparse-100gb": lambda outside: refused(_sparse_pax() + tars.END_OF_ARCHIVE, "sparse"),
    "raw-garbage": lambda outside: refused(b"", "not a tar stream", blob=tars.garbage(8192)),
    "gzip-magic-then-garbage": lambda outside: refused(b"", "corrupt gzip", blob=b"\x1f\x8b" + tars.garbage(8192)),
    "zstd-magic-then-garbage": lambda outside: refused(b"", "corrupt zstd",
                                                       blob=b"\x28\xb5\x2f\xfd" + tars.garbage(8192)),
    "truncated-gzip": lambda outside: refused(b"", "truncated gzip", blob=gz(_VALID)[:len(gz(_VALID)) // 2]),
}
for _key, _tar in tars.hostile_tars().items():  # the catalogue every converter must refuse
    CASES[f"catalogue-{_key}"] = lambda outside, _tar=_tar: refused(_tar, "")


def push_layer(client: RegistryClient, ref: str, case: Case) -> None:
    r = parse(ref)
    client.push_blob(r, sha(case.blob), len(case.blob), io.BytesIO(case.blob))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [case.diff_id or sha(case.blob)]}}).encode()
    client.push_blob(r, sha(config), len(config), io.BytesIO(config))
    manifest = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(config), "size": len(config)},
                "layers": [{"mediaType": case.media_type, "digest": sha(case.blob), "size": len(case.blob)}]}
    client.put_manifest(r, json.dumps(manifest).encode(), oci.OCI_MANIFEST)


def snapshot(top: str, skip: tuple[str, ...]) -> dict[str, tuple]:
    """Every path under ``top`` (not following symlinks) with its type, size and mtime, minus ``skip``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def run_child(spec: dict, cwd: str, timeout: float) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "tests.support.convert_child", json.dumps(spec)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def engine_config(work: str) -> dict:
    return {"provider": {"work_dir": work},
            "converter": {"driver": {"type": "estargz", "config": {"compression_level": 1}},
                          "rules": [{"tag_suffix": "-esgz"}]}}


def check_work_dir(work: str) -> None:
    """Only the content store's own files: blobs named by their digest, an empty ingest/ and tmp/."""
    content = os.path.join(work, "content")
    for dirpath, dirnames, filenames in os.walk(work):
        rel = os.path.relpath(dirpath, work)
        for name in filenames:
            path = os.path.join(rel, name)
            assert re.fullmatch(r"content/(index\.db(-wal|-shm)?|blobs/sha256/[0-9a-f]{64})", path), path
    assert os.listdir(os.path.join(content, "ingest")) == []
    assert os.listdir(os.path.join(content, "tmp")) == []


@dataclasses.dataclass
class Run:
    registry: RegistryServer
    cases: dict[str, Case]
    results: dict[str, dict]
    before: dict
    after: dict
    root: str
    outside: str
    cwd: str


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hostile"))
    registry = RegistryServer(os.path.join(root, "registry")).start()
    try:
        outside = os.path.join(root, "outside")
        cwd = os.path.join(root, "jail", "a", "b")
        os.makedirs(outside)
        os.makedirs(cwd)
        work = os.path.join(root, "work")
        all_cases = {name: make(outside) for name, make in CASES.items()}
        with RegistryClient() as client:
            for name, case in all_cases.items():
                push_layer(client, f"{registry.host}/hostile/{name}:v1", case)
        skip = (os.path.join(root, "registry"), work)
        before = snapshot(root, skip)
        sources = [f"{registry.host}/hostile/{name}:v1" for name in all_cases]
        results = run_child({"config": engine_config(work), "sources": sources}, cwd, timeout=240)
        after = snapshot(root, skip)
        check_work_dir(work)
        by_name = {r["source"].split("/hostile/")[1][:-3]: r for r in results}
        yield Run(registry, all_cases, by_name, before, after, root, outside, cwd)
    finally:
        registry.stop()


def converted_tar(registry: RegistryServer, name: str) -> bytes:
    with RegistryClient() as client:
        ref = parse(f"{registry.host}/hostile/{name}:v1-esgz")
        manifest = json.loads(client.get_manifest(ref).raw)
        buf = io.BytesIO()
        client.download_blob(ref, manifest["layers"][0]["digest"], buf)
    return open_decompressed(io.BytesIO(buf.getvalue())).read()


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_layer_is_converted_faithfully_or_refused_clearly(hostile, name):
    case, result = hostile.cases[name], hostile.results[name]
    assert not result["error"].startswith("UNEXPECTED"), result
    assert result["seconds"] < 10, result  # bounded time: nothing reads 100 GB or loops
    with RegistryClient() as client:
        tags = sorted(client.list_tags(parse(f"{hostile.registry.host}/hostile/{name}:x")))
    if case.expect == "converted":
        assert result["ok"], result
        assert tags == ["v1", "v1-esgz"]
        # faithful: a tar reader sees the same entries (the same names, bytes, links) in the converted layer
        assert tars.expected_view(converted_tar(hostile.registry, name)) == tars.expected_view(case.tar)
    else:
        assert result["error"] == "LayerError", result
        message = result["message"]
        assert "\n" not in message and message.strip() == message
        assert re.search(case.says, message), message
        layer = sha(case.blob)
        assert result["digest"] == layer and layer in message, message  # which layer, for the person reading it
        assert tags == ["v1"]


def test_hostile_layers_ran_in_bounded_memory(hostile):
    assert set(hostile.results) == set(hostile.cases)
    peak = max(r["peak_rss_kib"] for r in hostile.results.values())  # see convert_child for why not ru_maxrss
    assert peak < RSS_LIMIT_KIB, {n: r["peak_rss_kib"] for n, r in hostile.results.items()}


def test_nothing_was_written_from_entry_names(hostile):
    assert hostile.after == hostile.before  # nothing new, changed or removed around the child's cwd
    for path in (os.path.join(hostile.outside, "passwd"), os.path.join(hostile.outside, f"abs-{TOKEN}"),
                 f"/etc/acceld-hostile-{TOKEN}", f"/etc/acceld-{TOKEN}",
                 os.path.join(hostile.cwd, "..", "..", f"escape-{TOKEN}"),
                 os.path.join(hostile.cwd, "..", "..", "..", "..", f"escaped-{TOKEN}"),
                 os.path.join(hostile.cwd, "d"), os.path.join(hostile.cwd, "a"), os.path.join(hostile.cwd, "up")):
        assert not os.path.lexists(path), path


# ------------------------------------------------------------------------------ the gzip bomb

def gzip_bomb(size: int) -> tuple[bytes, str]:
    """A gzip layer holding one file of ``size`` zero bytes, ~1000:1; returns (blob, diff_id).

    Made of gzip members (valid gzip, as ``gzip -c a b`` makes): one member of 1 MiB of zeros is compressed
    once and repeated, so building 1 GiB takes a second instead of the ~15 s of deflating it.
    """
    header = tars.reg("zeros").tarinfo()
    header.size = size
    zeros = bytes(1 << 20)
    pieces = [header.tobuf(tars.PAX, "utf-8", "surrogateescape")] + [zeros] * (size >> 20) + \
        [bytes(size & ((1 << 20) - 1)), bytes(-size % tars.BLOCK), tars.END_OF_ARCHIVE]
    h = hashlib.sha256()
    members: dict[int, bytes] = {}
    out = []
    for piece in pieces:
        h.update(piece)
        if piece is zeros:
            member = members.get(id(zeros)) or members.setdefault(id(zeros), gzip.compress(zeros, 9, mtime=0))
        else:
            member = gzip.compress(piece, 9, mtime=0)
        out.append(member)
    return b"".join(out), "sha256:" + h.hexdigest()


@pytest.mark.slow
def test_gzip_bomb_converts_in_bounded_memory_time_and_disk(tmp_path, registry):
    """Policy: a layer that inflates 1000:1 is converted, because nothing in the converter grows with the
    inflated size: memory is a few chunks, the output of zeros re-compresses just as well, and disk holds
    only the (small) output. A refusal would also reject legitimate sparse-ish layers (zeroed images)."""
    blob, diff_id = gzip_bomb(1 << 30)
    assert len(blob) < 2 << 20  # ~1 MB on the wire, 1 GiB inflated
    with RegistryClient() as client:
        push_layer(client, f"{registry.host}/bomb:v1", Case(blob, "converted", diff_id=diff_id))
    work = str(tmp_path / "work")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    [result] = run_child({"config": engine_config(work), "sources": [f"{registry.host}/bomb:v1"]}, str(cwd),
                         timeout=150)
    assert result["ok"], result
    assert result["peak_rss_kib"] < RSS_LIMIT_KIB, result
    assert result["seconds"] < 120, result
    with RegistryClient() as client:
        manifest = json.loads(client.get_manifest(parse(f"{registry.host}/bomb:v1-esgz")).raw)
    layer = manifest["layers"][0]
    assert int(layer["annotations"]["io.containers.estargz.uncompressed-size"]) > 1 << 30
    assert layer["size"] < 16 << 20  # zeros stay small
    stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(work) for f in fs)
    assert stored < 32 << 20  # the 1 GiB never touched the disk
    assert os.listdir(cwd) == []
    check_work_dir(work)
