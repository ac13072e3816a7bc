"""The real client lazily pulls what acceld converts: containerd + stargz-snapshotter (tests/support/stargz.py).

A Debian bookworm rootfs (debootstrap, `make bench`'s; cached in the git-ignored bench/cache) plus a small top
layer with a whiteout is converted to eStargz and to zstd:chunked, pushed to a real loopback registry and
``ctr-remote images rpull``ed. :func:`lazy_problems` is the checker: every layer must be a remote FUSE snapshot,
and no layer blob may have been downloaded whole (not in containerd's content store; only 206 range answers
in the registry's access log). A container (runc) then hashes /etc and /usr/bin on the lazy layers and the
output must equal the same command on the source image unpacked by the overlayfs snapshotter, and the
hashes of a few files computed here from the source tar. ``prioritized_files`` must be prefetched at mount:
the snapshotter reports a prefetch of exactly the bytes before the TOC's prefetch landmark, the prioritized
file's chunks lie in that range, and with the registry stopped it still reads whole from the mounted layer
while a file nobody asked for does not. The negative: with the TOC digest annotation stripped, the
snapshotter cannot mount lazily and the checker must say so.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import re
import tarfile
import time

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.engine import convert
from acceleration_sdk.oci import Descriptor
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.estargz.reader import TOC_DIGEST_ANNOTATION, read_toc
from tests.support.images import push_image, sha, simple_tar
from tests.support.registry import RegistryServer
from tests.support.stargz import REMOTE_LABEL, LazyPullStack

# Skipped on a developer machine that cannot mount FUSE as root; never in CI (`CI` set), where it must run.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif((os.geteuid() != 0 or not os.path.exists("/dev/fuse")) and not os.environ.get("CI"),
                                 reason="the stargz snapshotter mounts FUSE as root")]

ROOTFS = pathlib.Path(__file__).resolve().parents[2] / "bench" / "cache" / "rootfs.tar.gz"
PRIORITIZED = "usr/bin/sha256sum"  # what the container below runs first
TOP_FILE = "acceld/hello.txt"
TOP_BYTES = b"lazy pulled by acceld's e2e test\n"
WHITED_OUT = "etc/issue.net"  # a rootfs file the top layer deletes (overlay whiteout on a lazy lower layer)
HASH_CMD = ("sh", "-c", "find /etc /usr/bin /acceld -type f | sort | xargs sha256sum; "
            f"test ! -e /{WHITED_OUT} && echo whiteout-ok")
LAYER_LABEL = "containerd.io/snapshot/remote/stargz.digest"  # the layer a remote snapshot mounts
COLD = "usr/lib/x86_64-linux-gnu/libc.so.6"  # mid-layer, 1.9 MB: neither prefetched nor in the TOC's range
FETCH_CHUNK = 50000  # stargz-snapshotter's default blob chunk_size: it fetches ranges in these units
SAMPLES = ["usr/bin/sha256sum", "usr/bin/dpkg", "etc/debian_version", TOP_FILE]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(registry):
    with RegistryClient() as c:
        yield c


@pytest.fixture(scope="module")
def source(registry, client):
    """The two-layer source image (gzip): the Debian rootfs and a small top layer with a whiteout."""
    from bench.images import build_rootfs

    ROOTFS.parent.mkdir(parents=True, exist_ok=True)
    build_rootfs(str(ROOTFS.parent))
    ref = parse(f"{registry.host}/lazy/debian:v1")
    size = ROOTFS.stat().st_size
    with open(ROOTFS, "rb") as fh:
        digest = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()  # streamed, not held
    client.push_blob(ref, digest, size, str(ROOTFS))
    top = simple_tar({TOP_FILE: TOP_BYTES, os.path.join(os.path.dirname(WHITED_OUT),
                                                        ".wh." + os.path.basename(WHITED_OUT)): b""})
    top_gz = gzip.compress(top, mtime=0)
    client.push_blob(ref, sha(top_gz), len(top_gz), io.BytesIO(top_gz))
    diff_ids = [json.load(open(f"{ROOTFS}.json"))["diff_id"], sha(top)]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/bin:/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    client.push_blob(ref, sha(config), len(config), io.BytesIO(config))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": digest, "size": size},
                                      {"mediaType": oci.OCI_LAYER_GZIP, "digest": sha(top_gz),
                                       "size": len(top_gz)}]}).encode()
    client.put_manifest(ref, manifest, oci.OCI_MANIFEST)
    return str(ref)


@pytest.fixture(scope="module")
def stack(registry):
    with LazyPullStack(registry.host) as s:  # stopped (daemons, FUSE mounts) even when a test fails
        yield s


@pytest.fixture(scope="module")
def witness(stack, source):
    """The source image run by containerd's overlayfs snapshotter (an ordinary full pull)."""
    stack.pull(source)
    return stack.run(source, "witness", *HASH_CMD, snapshotter="overlayfs")


def source_hashes() -> dict[str, str]:
    """sha256 of SAMPLES straight from the source tar and the top layer, without any container."""
    want = {f"/{name}": None for name in SAMPLES}
    with tarfile.open(ROOTFS, "r:gz") as tf:
        for member in tf:
            name = "/" + member.name.lstrip("./")
            if name in want and member.isfile():
                want[name] = hashlib.sha256(tf.extractfile(member).read()).hexdigest()
    want[f"/{TOP_FILE}"] = hashlib.sha256(TOP_BYTES).hexdigest()
    return want


def converted(tmp_path, source: str, suffix: str, **opts) -> tuple[str, dict]:
    cfg = config_mod.from_dict({"provider": {"work_dir": str(tmp_path / "work")},
                                "converter": {"driver": {"type": "estargz", "config": opts},
                                              "rules": [{"tag_suffix": suffix}]}})
    target = convert(cfg, source).target
    with RegistryClient() as c:
        return target, json.loads(c.get_manifest(parse(target)).raw)


def lazy_problems(stack: LazyPullStack, registry: RegistryServer, layers: list[str], log_start: int) -> list[str]:
    """What makes this pull not lazy, one line per broken layer; empty when every layer is a remote mount
    and no layer blob came down whole (containerd's content store, the registry's access log since log_start)."""
    problems = []
    stored = stack.content_digests()
    requests = blob_gets(registry, log_start)
    remote = {info.get("Labels", {}).get(LAYER_LABEL)
              for info in stack.snapshots().values() if REMOTE_LABEL in info.get("Labels", {})}
    for digest in layers:
        if digest in stored:
            problems.append(f"{digest}: downloaded whole into containerd's content store")
        if any(d == digest and status == "200" for d, status, _ in requests):
            problems.append(f"{digest}: the registry served the whole blob (200, not a range)")
        if digest not in remote:
            problems.append(f"{digest}: no remote snapshot (label {REMOTE_LABEL})")
    if len(stack.fuse_mounts()) < len(layers):
        problems.append(f"{len(stack.fuse_mounts())} FUSE mounts for {len(layers)} layers")
    return problems


def blob_gets(registry: RegistryServer, log_start: int) -> list[tuple[str, str, str]]:
    """(digest, status, bytes written) of every blob GET in the registry's access log since log_start."""
    return re.findall(r'"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (\d{3}) (\d+)',
                      registry.log()[log_start:])


def served_bytes(registry: RegistryServer, digest: str, log_start: int) -> int:
    return sum(int(n) for d, _, n in blob_gets(registry, log_start) if d == digest)


def prefetched(stack: LazyPullStack, digest: str) -> int | None:
    """The bytes the snapshotter prefetched for a layer at mount (its prefetch_total metrics log line)."""
    found = re.findall(rf'prefetch_size=(\d+) bytes" layer_sha="{digest}".*operation=prefetch_total',
                       stack.snapshotter_log())
    return int(found[-1]) if found else None


def layer_mount(stack: LazyPullStack, digest: str) -> str:
    """Where the snapshotter mounted the layer ``digest`` (its snapshot's mountpoint, from the snapshotter's log)."""
    name = next(key for key, info in stack.snapshots().items() if info.get("Labels", {}).get(LAYER_LABEL) == digest)
    found = re.findall(rf'preparing filesystem mount at mountpoint=(\S+)" key="[^"]* {name}"', stack.snapshotter_log())
    assert found, f"no mountpoint for {digest} in the snapshotter's log"
    return found[-1]


def wait_prefetched(stack: LazyPullStack, digest: str, timeout: float = 60) -> int:
    """The mount starts the prefetch in the background; wait for its report."""
    deadline = time.monotonic() + timeout
    while (size := prefetched(stack, digest)) is None:
        assert time.monotonic() < deadline, f"no prefetch report for {digest} within {timeout} s"
        time.sleep(0.1)
    return size


@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_a_debian_image_lazy_pulls_and_runs_as_its_source(tmp_path, registry, stack, source, witness, compression):
    level = 1 if compression == "estargz" else 3  # gzip 1: a faster test; the lazy pull does not depend on it
    target, manifest = converted(tmp_path, source, f"-lazy-{compression}", compression=compression,
                                 prioritized_files=[PRIORITIZED], compression_level=level)
    layers = [layer["digest"] for layer in manifest["layers"]]
    assert all(TOC_DIGEST_ANNOTATION in layer["annotations"] for layer in manifest["layers"])

    log_start = len(registry.log())
    stack.rpull(target)
    assert lazy_problems(stack, registry, layers, log_start) == []
    prefetch_size = wait_prefetched(stack, layers[0])
    after_pull = served_bytes(registry, layers[0], log_start)

    # The landmark works, seen from the file system: with the registry down, the prioritized file reads whole
    # from the mounted layer (its chunks were prefetched at mount), a file nobody asked for cannot be read.
    mount = layer_mount(stack, layers[0])
    registry.stop()
    try:
        with open(os.path.join(mount, PRIORITIZED), "rb") as fh:
            assert hashlib.file_digest(fh, "sha256").hexdigest() == source_hashes()[f"/{PRIORITIZED}"]
        with pytest.raises(OSError), open(os.path.join(mount, COLD), "rb") as fh:
            fh.read()
    finally:
        registry.start()  # same port, same storage, same access log

    out = stack.run(target, f"lazy-{compression}", *HASH_CMD)
    assert out == witness and out.endswith("whiteout-ok\n")
    lines = dict(reversed(line.split("  ", 1)) for line in out.splitlines()[:-1])
    assert {name: lines.get(name) for name in source_hashes()} == source_hashes()
    assert len(lines) > 300  # /etc and /usr/bin of a minbase Debian were really read
    # the run read more of the rootfs, still only by ranges; and the layer was never fetched whole
    assert lazy_problems(stack, registry, layers, log_start) == []
    assert after_pull < served_bytes(registry, layers[0], log_start) < manifest["layers"][0]["size"]

    # The landmark works: at mount the snapshotter prefetched exactly the bytes before the prefetch landmark,
    # and the prioritized file's chunks lie there. Read the TOC last: downloading the blob shows in the log.
    blob = tmp_path / "rootfs-layer"
    with RegistryClient() as c, open(blob, "wb") as fh:
        c.download_blob(parse(target), layers[0], fh)
    with open(blob, "rb") as fh:
        toc = read_toc(fh, Descriptor.from_dict(manifest["layers"][0]))["entries"]
    landmark = next(e for e in toc if e["name"] == ".prefetch.landmark")
    assert prefetch_size == landmark["offset"] > 0
    chunks = [e for e in toc if e["name"] == PRIORITIZED]
    assert chunks and all(e["offset"] < landmark["offset"] for e in chunks)
    assert after_pull >= landmark["offset"]  # fetched before the container ran
    # ... and nothing else but the TOC: the last entry's member, the TOC and the footer, plus fetch rounding
    tail = manifest["layers"][0]["size"] - max(e.get("offset", 0) for e in toc)
    assert after_pull <= tail + landmark["offset"] + FETCH_CHUNK, (after_pull, tail, landmark["offset"])


def test_a_stripped_toc_digest_is_not_lazy_and_the_checker_says_so(tmp_path, registry, client, stack):
    """Without ``containerd.io/snapshot/stargz/toc.digest`` the snapshotter refuses a lazy mount and containerd
    downloads the layers: the checker must fail. (Own small layers: a chain already mounted would be reused.)"""
    small = push_image(client, f"{registry.host}/lazy/small:v1",
                       [simple_tar({"bin/a": b"first layer\n"}), simple_tar({"b/c": b"second layer\n" * 100})])
    target, manifest = converted(tmp_path, str(small.ref), "-esgz")
    for layer in manifest["layers"]:
        del layer["annotations"][TOC_DIGEST_ANNOTATION]
    raw = json.dumps(manifest).encode()
    stripped_ref = f"{registry.host}/lazy/small:stripped"
    client.put_manifest(parse(stripped_ref), raw, oci.OCI_MANIFEST)

    log_start = len(registry.log())
    stack.rpull(stripped_ref)
    problems = lazy_problems(stack, registry, [layer["digest"] for layer in manifest["layers"]], log_start)
    assert any("content store" in p for p in problems) and any("no remote snapshot" in p for p in problems), problems
