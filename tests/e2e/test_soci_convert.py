"""End to end with the ``soci`` driver: push a source image into the real registry, convert it with the engine,
then let upstream soci-snapshotter's own code (``soci-verify``, tests/support/soci_tools.py) read the result
from the registry: the v2 binding, every ztoc, every file of every indexed layer through the snapshotter's span
manager, compared with a full gunzip + untar of the layer. Its last line must start ``soci: PASS``.

Also: the layers are never uploaded again (the registry's access log shows no PUT or mount of a layer), small
layers get no ztoc, and a layer that claims gzip but is not fails the conversion with a reason and no tag.
"""
from __future__ import annotations

import gzip
import json
import pathlib
import random

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk import content as content_mod
from acceleration_sdk import oci
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import ConfigError, LayerError, NotFoundError, StorageFullError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.soci import layout
from tests.support import soci_tools
from tests.support.images import push_image, push_index, simple_tar

SPAN = 1 << 16
MIN = 100_000
# The Debian bookworm minbase rootfs layer `make bench` builds once (bench/images.py; git-ignored cache)
ROOTFS = pathlib.Path(__file__).resolve().parents[2] / "bench" / "cache" / "rootfs.tar.gz"


def make_cfg(work_dir, platforms: str = "", **driver_opts):
    opts = {"span_size": SPAN, "min_layer_size": MIN, **driver_opts}
    converter = {"driver": {"type": "soci", "config": opts}}
    if platforms:
        converter["platforms"] = platforms
    return config_mod.from_dict({"provider": {"work_dir": str(work_dir)}, "converter": converter})


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def big_tar(seed: int) -> bytes:
    rnd = random.Random(seed)
    files = {f"usr/lib/f{i}.bin": rnd.randbytes(rnd.randrange(1, 60_000)) for i in range(30)}
    files["usr/share/doc/readme"] = b"soci says hello\n" * 20_000
    return simple_tar(files)


def manifest_of(client, ref) -> dict:
    return json.loads(client.get_manifest(parse(ref) if isinstance(ref, str) else ref).raw)


def layer_writes(log: str, digests: list[str]) -> list[str]:
    """Access-log lines that upload or mount one of ``digests``."""
    return [line for line in log.splitlines()
            if any(d in line for d in digests) and ('"PUT ' in line or "mount=" in line)]


def test_converted_image_passes_upstream_soci_verify(tmp_path, registry, client):
    repo = f"{registry.host}/soci/app"
    small = simple_tar({"etc/small": b"tiny"})
    src = push_image(client, f"{repo}:v1", [big_tar(1), small])
    big_layer, small_layer = src.manifest["layers"]
    assert big_layer["size"] > MIN > small_layer["size"]
    mark = len(registry.log())
    result = convert(make_cfg(tmp_path / "work", optimizations=["xattr"]), f"{repo}:v1")
    assert result.target == f"{repo}:v1-soci"
    assert result.source_size == src.manifest["config"]["size"] + big_layer["size"] + small_layer["size"]
    assert result.target_size > result.source_size  # the same layers plus the ztoc

    proc = soci_tools.soci_verify(f"{repo}:v1-soci", "-strict")
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0
    # layers untouched and never uploaded again: the image manifest shares them, the log shows no write
    top = manifest_of(client, f"{repo}:v1-soci")
    assert top["mediaType"] == oci.OCI_INDEX and len(top["manifests"]) == 2
    assert top["annotations"]["io.goharbor.artifact.v1alpha1.acceleration.driver.name"] == "soci"
    assert top["annotations"]["io.goharbor.artifact.v1alpha1.acceleration.source.digest"] == src.digest
    image = manifest_of(client, parse(repo).with_digest(top["manifests"][0]["digest"]))
    assert image["layers"] == src.manifest["layers"]
    assert layer_writes(registry.log()[mark:], [big_layer["digest"], small_layer["digest"]]) == []
    soci = manifest_of(client, parse(repo).with_digest(top["manifests"][1]["digest"]))
    assert [x["annotations"][layout.ANN_LAYER_DIGEST] for x in soci["layers"]] == [big_layer["digest"]]
    assert soci["layers"][0]["annotations"][layout.ANN_DISABLE_XATTRS] == "true"  # no xattrs in big_tar


def test_ztocs_are_reused_from_the_local_and_the_remote_cache(tmp_path, registry, client):
    """Same layer + span size -> the ztoc is not built again: on this host (layer cache), and on another host
    (a fresh work dir) through the remote cache tag; the other options may differ."""
    repo = f"{registry.host}/soci/cached"
    push_image(client, f"{repo}:v1", [big_tar(11)])
    push_image(client, f"{repo}:v2", [big_tar(11), simple_tar({"etc/more": b"x" * 10})])  # shares the big layer

    def run(work, ref, **opts):
        events = []
        cfg = config_mod.from_dict({"provider": {"work_dir": str(work)}, "converter": {
            "driver": {"type": "soci", "config": {"span_size": SPAN, "min_layer_size": MIN, **opts}},
            "rules": [{"tag_suffix": "-soci", "cache_tag": "soci-cache"}]}})
        convert(cfg, ref, progress=events.append)
        return [e.message for e in events if e.phase == "convert" and e.message in ("indexing", "cached")]

    assert run(tmp_path / "a", f"{repo}:v1") == ["indexing"]
    assert run(tmp_path / "a", f"{repo}:v2", optimizations=["xattr"]) == ["cached"]  # local layer cache
    assert run(tmp_path / "b", f"{repo}:v2") == ["cached"]  # another host: the remote cache
    assert run(tmp_path / "c", f"{repo}:v1", span_size=SPAN * 2) == ["indexing"]  # another span size
    for tag in ("v1-soci", "v2-soci"):
        proc = soci_tools.soci_verify(f"{repo}:{tag}", "-strict")
        assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]
    top = manifest_of(client, f"{repo}:v2-soci")
    soci = manifest_of(client, parse(repo).with_digest(top["manifests"][1]["digest"]))
    assert soci["layers"][0]["annotations"] == {  # the cache's own annotation does not leak into the index
        layout.ANN_LAYER_MEDIA_TYPE: oci.OCI_LAYER_GZIP, layout.ANN_LAYER_DIGEST: soci["layers"][0]["annotations"][
            layout.ANN_LAYER_DIGEST], layout.ANN_SPAN_SIZE: str(SPAN)}


def test_small_outputs_take_one_upload_each(tmp_path, registry, client):
    """The ztoc and ``{}`` are uploaded as they are written and the push phase knows it (no HEAD of them after);
    the SOCI index and the manifests are not uploaded as blobs, only PUT under /manifests/ by the push."""
    repo = f"{registry.host}/soci/requests"
    push_image(client, f"{repo}:v1", [big_tar(13)])
    mark = len(registry.log())
    convert(make_cfg(tmp_path / "work"), f"{repo}:v1")
    log = registry.log()[mark:]
    top = manifest_of(client, f"{repo}:v1-soci")
    image, soci_desc = top["manifests"]
    soci = manifest_of(client, parse(repo).with_digest(soci_desc["digest"]))
    ztoc_digest = soci["layers"][0]["digest"]
    for blob in (ztoc_digest, soci["config"]["digest"]):
        lines = [line for line in log.splitlines() if blob in line]
        assert [line for line in lines if "/blobs/uploads/" in line and '"PUT ' in line], lines
        assert not [line for line in lines if '"HEAD ' in line], lines
    for manifest in (image["digest"], soci_desc["digest"]):
        lines = [line for line in log.splitlines() if manifest in line]
        assert not [line for line in lines if "/blobs/" in line], lines
        assert [line for line in lines if '"PUT ' in line and "/manifests/" in line], lines


@pytest.mark.parametrize("failing", ["ztoc", "config"])
def test_a_failed_write_leaves_no_cache_entry_and_no_tag(tmp_path, registry, client, monkeypatch, failing):
    """The ztoc, the ``{}`` config and the manifests are written at once (drivers/soci/writes.py); when one of
    them fails, the conversion fails with that error, nothing is tagged, and no layer-cache entry was
    recorded -- the next run indexes the layer again instead of trusting a ztoc that may not exist."""
    repo = f"{registry.host}/soci/failwrite"
    push_image(client, f"{repo}:v1", [big_tar(12)])
    real_commit = content_mod.Ingest.commit

    def commit(self, expected=None):  # fault injection: the disk fills up under one blob (the only big one: the ztoc)
        if self.size > 100_000 if failing == "ztoc" else self.size == len(layout.EMPTY_CONFIG):
            self.abort()
            raise StorageFullError("no space left on the device under work_dir (injected)")
        return real_commit(self, expected)

    def run():
        events = []
        convert(make_cfg(tmp_path / "work"), f"{repo}:v1", progress=events.append)
        return [e.message for e in events if e.phase == "convert" and e.message in ("indexing", "cached")]

    with monkeypatch.context() as m:
        m.setattr(content_mod.Ingest, "commit", commit)
        with pytest.raises(StorageFullError, match="injected"):
            run()
    with pytest.raises(NotFoundError):
        client.get_manifest(parse(f"{repo}:v1-soci"))
    assert run() == ["indexing"]  # not "cached": the failed run recorded nothing
    proc = soci_tools.soci_verify(f"{repo}:v1-soci", "-strict")
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_multi_arch_index_gets_one_soci_index_per_platform(tmp_path, registry, client):
    repo = f"{registry.host}/soci/multi"
    amd = push_image(client, f"{repo}:amd", [big_tar(2)], platform=("linux", "amd64"), tag=False)
    arm = push_image(client, f"{repo}:arm", [big_tar(3), simple_tar({"x": b"y"})], platform=("linux", "arm64"),
                     tag=False)
    push_index(client, f"{repo}:v1", [amd, arm], attest=amd)
    convert(make_cfg(tmp_path / "work"), f"{repo}:v1")
    top = manifest_of(client, f"{repo}:v1-soci")
    socis = [d for d in top["manifests"] if d.get("artifactType") == layout.SOCI_INDEX_V2]
    assert [d["platform"]["architecture"] for d in socis] == ["amd64", "arm64"]
    for arch in ("amd64", "arm64"):
        proc = soci_tools.soci_verify(f"{repo}:v1-soci", "-strict", "-platform", f"linux/{arch}")
        assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]
    # the attestation stays, describing the re-serialised amd64 manifest
    images = {d["platform"]["architecture"]: d for d in top["manifests"] if "artifactType" not in d}
    assert images["unknown"]["annotations"][oci.ANNOTATION_REFERENCE_DIGEST] == images["amd64"]["digest"]
    assert socis[0]["annotations"][layout.ANN_MANIFEST_DIGEST] == images["amd64"]["digest"]


def test_a_layer_two_platforms_share_is_indexed_once(tmp_path, registry, client):
    """Cache entries are recorded only when every write committed (writes.finish), yet the second platform
    must reuse the ztoc the first one just made, not index the same layer again."""
    repo = f"{registry.host}/soci/shared"
    shared = big_tar(20)
    amd = push_image(client, f"{repo}:amd", [shared], platform=("linux", "amd64"), tag=False)
    arm = push_image(client, f"{repo}:arm", [shared, big_tar(21)], platform=("linux", "arm64"), tag=False)
    push_index(client, f"{repo}:v1", [amd, arm])
    events = []
    convert(make_cfg(tmp_path / "work"), f"{repo}:v1", progress=events.append)
    seen = [(e.layer, e.message) for e in events if e.phase == "convert" and e.message in ("indexing", "cached")]
    layer = amd.manifest["layers"][0]["digest"]
    assert [m for d, m in seen if d == layer] == ["indexing", "cached"], seen
    for arch in ("amd64", "arm64"):
        proc = soci_tools.soci_verify(f"{repo}:v1-soci", "-strict", "-platform", f"linux/{arch}")
        assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_no_write_commits_while_a_layer_is_being_indexed(tmp_path, registry, client, monkeypatch):
    """A blob write's commit verifies -- and drains -- every source stream the conversion has open. The small
    writes run on a pool (writes.py): if one committed while the next platform's layer was being read by a
    builder thread, it would take that stream's bytes away. Each write here waits (bounded) for a layer to be
    read for the next platform; the driver must settle its writes before it opens that platform's layers."""
    import threading
    import time

    from drivers.soci import driver as soci_driver
    from drivers.soci import writes as soci_writes

    repo = f"{registry.host}/soci/settle"
    amd = push_image(client, f"{repo}:amd", [big_tar(22)], platform=("linux", "amd64"), tag=False)
    arm = push_image(client, f"{repo}:arm", [big_tar(23)], platform=("linux", "arm64"), tag=False)
    push_index(client, f"{repo}:v1", [amd, arm])
    second, lock, overlaps = threading.Event(), threading.Lock(), []
    active, calls = [0], [0]
    real_ztoc, real_write = soci_driver.SociDriver._ztoc, soci_writes.Writes._write_blob

    def ztoc(self, content, layer, stop):
        with lock:
            active[0] += 1
            calls[0] += 1
            if calls[0] == 2:  # the second platform's layer
                second.set()
        try:
            time.sleep(0.2)  # a builder in the middle of its layer
            return real_ztoc(self, content, layer, stop)
        finally:
            with lock:
                active[0] -= 1

    def write_blob(self, data, digest):
        second.wait(3)  # hold the write until the next platform's layer is read (or give up: the driver waits)
        with lock:
            if active[0]:
                overlaps.append(digest)
        return real_write(self, data, digest)

    monkeypatch.setattr(soci_driver.SociDriver, "_ztoc", ztoc)
    monkeypatch.setattr(soci_writes.Writes, "_write_blob", write_blob)
    convert(make_cfg(tmp_path / "work"), f"{repo}:v1")
    assert overlaps == [], f"blob writes committed while a layer was read: {overlaps}"
    for arch in ("amd64", "arm64"):
        proc = soci_tools.soci_verify(f"{repo}:v1-soci", "-strict", "-platform", f"linux/{arch}")
        assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_platforms_filter_keeps_only_the_selected_platform(tmp_path, registry, client):
    repo = f"{registry.host}/soci/filtered"
    amd = push_image(client, f"{repo}:amd", [big_tar(5)], platform=("linux", "amd64"), tag=False)
    arm = push_image(client, f"{repo}:arm", [big_tar(6)], platform=("linux", "arm64"), tag=False)
    push_index(client, f"{repo}:v1", [amd, arm])
    convert(make_cfg(tmp_path / "work", platforms="linux/arm64"), f"{repo}:v1")
    top = manifest_of(client, f"{repo}:v1-soci")
    assert [d["platform"]["architecture"] for d in top["manifests"]] == ["arm64", "arm64"]
    proc = soci_tools.soci_verify(f"{repo}:v1-soci", "-strict", "-platform", "linux/arm64")
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_docker_source_with_plain_tar_and_zstd_layers(tmp_path, registry, client):
    """Docker v2s2 source: the OCI index wraps an OCI manifest; the uncompressed tar layer gets a ztoc."""
    repo = f"{registry.host}/soci/docker"
    src = push_image(client, f"{repo}:v1", [big_tar(7)], compression="", docker=True)
    convert(make_cfg(tmp_path / "work"), f"{repo}:v1")
    top = manifest_of(client, f"{repo}:v1-soci")
    image = manifest_of(client, parse(repo).with_digest(top["manifests"][0]["digest"]))
    assert image["mediaType"] == oci.OCI_MANIFEST and image["config"]["mediaType"] == oci.OCI_CONFIG
    assert image["layers"] == src.manifest["layers"]  # Docker layer types kept, as upstream keeps them
    proc = soci_tools.soci_verify(f"{repo}:v1-soci", "-strict")
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_zstd_layers_get_no_ztoc(tmp_path, registry, client):
    repo = f"{registry.host}/soci/zstd"
    push_image(client, f"{repo}:v1", [big_tar(8)], compression="zstd")
    with pytest.raises(Exception) as info:  # upstream skips zstd layers; nothing left to index
        convert(make_cfg(tmp_path / "work"), f"{repo}:v1")
    assert "no layer to index" in str(info.value)


def _broken_layer(case: str) -> bytes:
    good = gzip.compress(big_tar(4), mtime=0)
    return {"not-gzip": big_tar(4),  # a plain tar that the manifest calls gzip
            "truncated": good[:len(good) // 2],
            "trailing-garbage": good + b"GARBAGE!" * 64}[case]


@pytest.mark.parametrize("case, words", [("not-gzip", "not a valid gzip stream"),
                                         ("truncated", "truncated gzip stream"),
                                         ("trailing-garbage", "not a valid gzip stream")])
def test_a_broken_gzip_layer_fails_with_a_reason_and_nothing_is_tagged(tmp_path, registry, client, case, words):
    repo = f"{registry.host}/soci/bad-{case}"
    blob = _broken_layer(case)
    src = push_image(client, f"{repo}:v1", [blob], compression="")  # pushed as is ...
    manifest = dict(src.manifest)
    manifest["layers"] = [dict(manifest["layers"][0], mediaType=oci.OCI_LAYER_GZIP)]  # ... typed as gzip
    client.put_manifest(parse(f"{repo}:v1"), json.dumps(manifest).encode(), oci.OCI_MANIFEST)
    mark = len(registry.log())
    with pytest.raises(LayerError) as info:
        convert(make_cfg(tmp_path / "work"), f"{repo}:v1")
    assert manifest["layers"][0]["digest"] in str(info.value)
    assert words in str(info.value), str(info.value)
    puts = [line for line in registry.log()[mark:].splitlines() if '"PUT ' in line]
    assert not any("/manifests/" in line for line in puts), puts  # no manifest, no tag
    with pytest.raises(NotFoundError):
        client.get_manifest(parse(f"{repo}:v1-soci"))


def test_a_broken_layer_stops_the_other_layers(tmp_path, registry, client):
    """With a broken small layer next to a big good one, the failure is the broken layer's, not a later one."""
    repo = f"{registry.host}/soci/bad-two"
    good = gzip.compress(simple_tar({"big": random.Random(12).randbytes(4_000_000)}), 1, mtime=0)
    broken = big_tar(13)  # a plain tar typed gzip: fails at its first bytes, while the good layer is read
    src = push_image(client, f"{repo}:v1", [good, broken], compression="")
    manifest = dict(src.manifest, layers=[dict(x, mediaType=oci.OCI_LAYER_GZIP) for x in src.manifest["layers"]])
    client.put_manifest(parse(f"{repo}:v1"), json.dumps(manifest).encode(), oci.OCI_MANIFEST)
    with pytest.raises(LayerError) as info:
        convert(make_cfg(tmp_path / "work"), f"{repo}:v1")
    assert manifest["layers"][1]["digest"] in str(info.value), str(info.value)
    assert "not a valid gzip stream" in str(info.value)


def test_layers_with_whiteouts_and_xattrs(tmp_path, registry, client):
    """Two layers, the upper one with a whiteout, an opaque directory and an xattr: with the xattr optimization
    only the lower layer is marked disable-xattrs, and soci-verify reads both."""
    import io
    import tarfile

    lower = big_tar(9)
    buf = io.BytesIO()
    rnd = random.Random(10)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("usr/lib/.wh.f1.bin", b""), ("usr/share/doc/.wh..wh..opq", b""),
                           ("usr/share/doc/new", rnd.randbytes(200_000))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("usr/bin/ping")
        info.pax_headers = {"SCHILY.xattr.security.capability": "caps"}
        tf.addfile(info)
    repo = f"{registry.host}/soci/layers"
    src = push_image(client, f"{repo}:v1", [lower, buf.getvalue()])
    convert(make_cfg(tmp_path / "work", optimizations=["xattr"]), f"{repo}:v1")
    proc = soci_tools.soci_verify(f"{repo}:v1-soci", "-strict")
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]
    top = manifest_of(client, f"{repo}:v1-soci")
    soci = manifest_of(client, parse(repo).with_digest(top["manifests"][1]["digest"]))
    marks = {x["annotations"][layout.ANN_LAYER_DIGEST]: x["annotations"].get(layout.ANN_DISABLE_XATTRS)
             for x in soci["layers"]}
    lower_digest, upper_digest = (x["digest"] for x in src.manifest["layers"])
    assert marks == {lower_digest: "true", upper_digest: None}


def test_an_image_without_a_large_enough_layer_fails_with_a_reason(tmp_path, registry, client):
    repo = f"{registry.host}/soci/small"
    push_image(client, f"{repo}:v1", [simple_tar({"a": b"b"})])
    with pytest.raises(Exception) as info:
        convert(make_cfg(tmp_path / "work"), f"{repo}:v1")
    assert "min_layer_size" in str(info.value)
    with pytest.raises(NotFoundError):
        client.get_manifest(parse(f"{repo}:v1-soci"))


@pytest.mark.parametrize("key, value, words", [
    ("optimizations", ["prefetch"], "unknown optimization"),
    ("index_version", "v3", "index_version"),
    ("span_size", 10, "span_size"),
])
def test_bad_options_are_config_errors(tmp_path, key, value, words):
    with pytest.raises(ConfigError) as info:
        make_cfg(tmp_path, **{key: value})
    assert words in str(info.value)


@pytest.mark.slow
def test_a_debian_rootfs_passes_upstream_soci_verify(tmp_path, registry, client):
    """A real root file system (~6,800 entries, ~90 MB gzip; `make bench`'s, cached in bench/cache) with the
    driver's defaults: soci-verify reads every file through upstream's span manager and compares the ztoc
    with upstream BuildZtoc's (byte-identical, else -strict fails)."""
    from bench.images import build_rootfs, push_layer_image

    ROOTFS.parent.mkdir(parents=True, exist_ok=True)
    build_rootfs(str(ROOTFS.parent))
    ref = push_layer_image(client, f"{registry.host}/soci/debian:v1", str(ROOTFS))
    convert(make_cfg(tmp_path / "work", span_size=1 << 22, min_layer_size=10 << 20), ref)
    proc = soci_tools.soci_verify(f"{registry.host}/soci/debian:v1-soci", "-strict")
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "byte-identical to upstream BuildZtoc" in proc.stdout
