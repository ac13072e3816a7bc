"""End to end with the ``nydus`` driver: push a source image into the real registry, convert it with the engine,
pull the result back and check it as nydus-snapshotter and nydusd would read it, and as the kernel mounts it.

The layout checks follow nydus-snapshotter's pkg/converter (/work/shared/NYDUS.md section 3). The merged
bootstrap is mounted by the Linux kernel (one loop device per blob's device file) and compared entry by entry
with the source layers flattened by the stdlib tarfile (tests/drivers/nydus_oracle.py); the project's RAFS
reader holds it and every blob to nydusd's load rules (drivers/nydus/validate.py).
"""
from __future__ import annotations

import gzip
import io
import json
import pathlib
import tarfile

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import ConfigError, LayerError, NotFoundError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.nydus.blobfile import BlobFile
from drivers.nydus.driver import BLOB_ANNOTATION, BOOTSTRAP_ANNOTATION, FS_VERSION_ANNOTATION, NYDUS_BLOB
from drivers.nydus.reader import Rafs
from drivers.nydus.validate import validate
from tests.drivers.nydus_oracle import compare, device_files, flatten, three_layers
from tests.support import erofs, tars
from tests.support.images import push_image, push_index, sha, simple_tar

needs_kernel = erofs.requires_kernel()
# The Debian bookworm minbase rootfs layer `make bench` builds once (bench/images.py; git-ignored cache)
ROOTFS = pathlib.Path(__file__).resolve().parents[2] / "bench" / "cache" / "rootfs.tar.gz"


def make_cfg(work_dir, rules=(), **driver_opts):
    opts = {"fs_chunk_size": "0x1000", **driver_opts}
    return config_mod.from_dict({"provider": {"work_dir": str(work_dir)},
                                 "converter": {"driver": {"type": "nydus", "config": opts}, "rules": list(rules)}})


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def fetch_json(client, ref) -> dict:
    return json.loads(client.get_manifest(parse(ref) if isinstance(ref, str) else ref).raw)


def download(client, repo: str, digest: str, path) -> bytes:
    buf = io.BytesIO()
    client.download_blob(parse(repo), digest, buf)
    if path is not None:
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def check_nydus_image(client, repo: str, manifest: dict, source_config: dict, tmp_path, *, docker=False):
    """The nydus layout of one converted manifest; returns (merged bootstrap path, blobs by id, rafs)."""
    config = fetch_json_blob(client, repo, manifest["config"]["digest"])
    *blob_layers, boot_layer = manifest["layers"]
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(manifest["layers"])                          # nydusify's manifest rule
    assert config.get("config") == source_config.get("config")               # ... and the config rule
    assert config["history"] == source_config.get("history", []) + [
        {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}]
    blobs = {}
    for i, (layer, diff_id) in enumerate(zip(blob_layers, diff_ids)):
        assert layer["mediaType"] == NYDUS_BLOB
        assert layer["annotations"] == {BLOB_ANNOTATION: "true"}
        assert diff_id == layer["digest"]                                    # a nydus blob is not compressed
        path = tmp_path / f"blob{i}"
        data = download(client, repo, layer["digest"], path)
        assert sha(data) == layer["digest"] and len(data) == layer["size"]
        blobs[layer["digest"].split(":")[1]] = BlobFile(path)
    assert boot_layer["mediaType"] == (oci.DOCKER_LAYER_GZIP if docker else oci.OCI_LAYER_GZIP)
    assert boot_layer["annotations"] == {BOOTSTRAP_ANNOTATION: "true", FS_VERSION_ANNOTATION: "6"}
    tar = gzip.decompress(download(client, repo, boot_layer["digest"], None))
    assert diff_ids[-1] == sha(tar)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        files = {name: tf.extractfile(m).read() for name, m in members.items() if m.isfile()}
    assert members["image"].isdir() and members["image"].mode == 0o755
    assert members["image/image.boot"].mode == 0o444
    boot = tmp_path / "image.boot"
    boot.write_bytes(files["image/image.boot"])
    rafs = Rafs(boot.read_bytes())
    # one blob.meta per blob the bootstrap names: the blob's ci array, zero pad to 4 KiB, its header
    assert sorted(files) == sorted(["image/image.boot"] + [f"image/{b.blob_id}.blob.meta" for b in rafs.blobs])
    for entry in rafs.blobs:
        blob = blobs[entry.blob_id]
        assert files[f"image/{entry.blob_id}.blob.meta"] == blob.ci + bytes(-len(blob.ci) % 4096) + blob.header_bytes
        blob.verify(entry.compressor, entry.digester)                          # every TOC digest, chunk digest, crc
    for blob in blobs.values():                                                # each per-layer bootstrap too
        own = Rafs(blob.bootstrap)
        validate(own, {"x" * 64: blob} if own.blobs else None, strict=True)
    validate(rafs, {b.blob_id: blobs[b.blob_id] for b in rafs.blobs}, strict=True)   # nydusd's load rules
    return boot, blobs, rafs


def fetch_json_blob(client, repo: str, digest: str) -> dict:
    return json.loads(download(client, repo, digest, None))


def kernel_view(tmp_path, boot, blobs, rafs) -> dict:
    with erofs.mounted(boot, device_files(tmp_path, blobs, rafs)) as root:     # loop devices detached in finally
        return erofs.snapshot(root)


@needs_kernel
def test_three_layers_convert_and_mount_as_the_flattened_source(tmp_path, registry, client):
    repo = f"{registry.host}/nydus/app"
    layers = three_layers()
    src = push_image(client, f"{repo}:v1", layers)
    result = convert(make_cfg(tmp_path / "work"), f"{repo}:v1")

    assert result.target == f"{repo}:v1-nydus" and not result.skipped and result.driver == "nydus"
    manifest = fetch_json(client, result.target)
    assert manifest["mediaType"] == oci.OCI_MANIFEST and len(manifest["layers"]) == 4
    assert result.target_size == manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    boot, blobs, rafs = check_nydus_image(client, repo, manifest, src.config, tmp_path)
    assert len(rafs.blobs) == 3 and rafs.ext.chunk_size == 0x1000
    assert (rafs.compressor, rafs.digester) == ("zstd", "blake3")
    seen = kernel_view(tmp_path, boot, blobs, rafs)
    compare(flatten(layers), seen)                                             # every entry, every attribute
    assert seen["usr/bin/tool"].xattrs and seen["dev/console"].rdev == (5, 1)
    # erofs-utils too: fsck.erofs checks and extracts it (1.5 extracts neither xattrs nor hard links, and its
    # chown after chmod clears setuid/setgid: those are the kernel's to check, above)
    extracted = erofs.extracted(boot, device_files(tmp_path, blobs, rafs), tmp_path / "fsck")
    compare(flatten(layers), extracted, inodes=False, xattrs=False, mode_mask=0o1777)

    # again, from the local layer cache: the very same image (the bootstrap rebuilt from the cached blobs)
    events = []
    again = convert(make_cfg(tmp_path / "work"), f"{repo}:v1", progress=events.append)
    assert again.digest == result.digest
    assert [e.message for e in events if e.phase == "convert"].count("cached") == 3


def test_remote_cache_hit_on_another_host_fetches_the_blobs_for_the_bootstrap(tmp_path, registry, client):
    """A layer-cache hit whose blob only the registry has: finalize_manifest fetches it from the target."""
    repo = f"{registry.host}/nydus/cached"
    base = tars.build_tar([tars.reg("base/big", tars.payload(3 * 0x1000 + 5, "base")), tars.symlink("b", "base")])
    push_image(client, f"{repo}:v1", [base, simple_tar({"app": b"v1"})])

    def cfg(host):
        return make_cfg(tmp_path / host, rules=[{"cache_tag": "nydus-cache"}], compressor="lz4_block",
                        digester="sha256", prefetch_patterns="/base\n/app")
    first = convert(cfg("host-a"), f"{repo}:v1")
    src2 = push_image(client, f"{repo}:v2", [base, simple_tar({"app": b"v2"})])
    events = []
    second = convert(cfg("host-b"), f"{repo}:v2", progress=events.append)
    assert sorted(e.message for e in events if e.phase == "convert" and e.message in ("cached", "converted")) == [
        "cached", "converted"]
    m1, m2 = fetch_json(client, first.target), fetch_json(client, second.target)
    assert m1["layers"][0] == m2["layers"][0]                                  # the very same base blob
    boot, blobs, rafs = check_nydus_image(client, repo, m2, src2.config, tmp_path)
    assert (rafs.compressor, rafs.digester) == ("lz4_block", "sha256")
    paths = {path: node.nid for path, node in rafs.walk()}
    assert rafs.prefetch == [paths["base"], paths["app"]]


@pytest.mark.parametrize("docker2oci", [True, False])
def test_multi_arch_index_of_docker_manifests(tmp_path, registry, client, docker2oci):
    repo = f"{registry.host}/nydus/multi"
    amd = push_image(client, f"{repo}:amd", [simple_tar({"amd": b"64" * 3000})], platform=("linux", "amd64"),
                     tag=False, docker=True)
    arm = push_image(client, f"{repo}:arm", [simple_tar({"arm": b"64"}), simple_tar({"more": b"x"})],
                     platform=("linux", "arm64"), tag=False, docker=True)
    push_index(client, f"{repo}:v1", [amd, arm], attest=arm, docker=True)
    result = convert(make_cfg(tmp_path / "work", docker2oci=docker2oci), f"{repo}:v1")
    index = fetch_json(client, result.target)
    assert index["mediaType"] == (oci.OCI_INDEX if docker2oci else oci.DOCKER_LIST)
    assert [m["platform"]["architecture"] for m in index["manifests"][:2]] == ["amd64", "arm64"]
    att = index["manifests"][2]                                                # kept, pointing at the new arm64
    assert att["annotations"][oci.ANNOTATION_REFERENCE_DIGEST] == index["manifests"][1]["digest"]
    for child, src, count in zip(index["manifests"], (amd, arm), (2, 3)):
        manifest = fetch_json(client, parse(f"{repo}@{child['digest']}"))
        # docker2oci false keeps Docker manifests: nydus blob layers in them, as nydus-snapshotter writes
        assert manifest["mediaType"] == (oci.OCI_MANIFEST if docker2oci else oci.DOCKER_MANIFEST)
        assert len(manifest["layers"]) == count
        (tmp_path / child["digest"][7:19]).mkdir()
        check_nydus_image(client, repo, manifest, src.config, tmp_path / child["digest"][7:19],
                          docker=not docker2oci)


@pytest.mark.parametrize("case", ["truncated", "dotdot"])
def test_broken_source_layers_fail_with_a_reason_and_nothing_is_pushed(tmp_path, registry, client, case):
    repo = f"{registry.host}/nydus/broken-{case}"
    good = simple_tar({"ok": b"fine" * 1000})
    if case == "truncated":
        bad = tars.truncated(tars.build_tar([tars.reg("big", tars.payload(40_000, "t"))]), 20_000)
    else:
        bad = tars.build_tar([tars.reg("../escape", b"out of the layer")])
    src = push_image(client, f"{repo}:v1", [good, bad])
    mark = len(registry.log())
    with pytest.raises(LayerError) as info:
        convert(make_cfg(tmp_path / "work"), f"{repo}:v1")
    message = str(info.value)
    assert src.manifest["layers"][1]["digest"] in message
    assert ("leaves the layer" in message) if case == "dotdot" else ("broken tar" in message or "early" in message), message
    assert client.list_tags(parse(f"{repo}:x")) == ["v1"]
    puts = [line for line in registry.log()[mark:].splitlines() if '"PUT ' in line]
    assert not any("/manifests/" in line for line in puts), puts              # no manifest, no tag
    with pytest.raises(NotFoundError):
        client.get_manifest(parse(f"{repo}:v1-nydus"))


@pytest.mark.parametrize("key, value, words", [
    ("fs_chunk_size", "0x3000", "power of two"),
    ("fs_version", 5, "only RAFS v6"),
    ("compressor", "gzip", "nydus-image create refuses it"),
    ("backend_type", "oss", "storage backends are not supported yet"),
])
def test_bad_options_are_config_errors_at_load(tmp_path, key, value, words):
    with pytest.raises(ConfigError) as info:
        make_cfg(tmp_path, **{key: value})
    assert info.value.path == f"converter.driver.config.{key}" and words in str(info.value), str(info.value)


# The keys of acceld's own nydus example (misc/config/config.nydus.yaml): only host, port and work_dirs changed.
ACCELD_NYDUS_YAML = """
server:
  name: API
  host: 127.0.0.1
  port: 0
metric:
  enabled: true
provider:
  source:
    {registry}:
      insecure: false
      webhook:
        auth_header: header
  work_dir: {work_dir}
  gcpolicy:
      threshold: 1000MB
  cache_size: 200
converter:
  worker: 5
  harbor_annotation: true
  driver:
    type: nydus
    config:
      work_dir: {work_dir}
      {extra}
      with_referrer: true
  rules:
    - tag_suffix: -nydus
    - cache_tag: nydus-cache
"""


def test_acceld_example_nydus_config_converts_unchanged(tmp_path, registry, client):
    repo = f"{registry.host}/nydus/acceld"
    src = push_image(client, f"{repo}:v1", [simple_tar({"etc/motd": b"hello\n"}), simple_tar({"bin/x": b"x" * 5000})])
    cfg = config_mod.loads(ACCELD_NYDUS_YAML.format(registry=registry.host, work_dir=tmp_path, extra=""))
    result = convert(cfg, f"{repo}:v1")
    assert result.target == f"{repo}:v1-nydus"
    manifest = fetch_json(client, result.target)
    assert manifest["subject"]["digest"] == src.digest                          # with_referrer: true
    assert manifest["annotations"]["io.goharbor.artifact.v1alpha1.acceleration.driver.name"] == "nydus"
    assert manifest["layers"][-1]["annotations"][BOOTSTRAP_ANNOTATION] == "true"
    assert client.get_manifest(parse(f"{repo}:nydus-cache"))                     # the remote cache was written

    # acceld's OCI-ref example (oci_ref: true) loads; it converts in tests/e2e/test_nydus_zran_convert.py
    ref = config_mod.loads(ACCELD_NYDUS_YAML.format(registry=registry.host, work_dir=tmp_path, extra="oci_ref: true"))
    assert ref.converter.driver.config["oci_ref"] is True


@pytest.mark.slow
@needs_kernel
def test_a_debian_rootfs_mounts_as_its_source(tmp_path, registry, client):
    """A real root file system (~6,800 entries, 1 MiB chunks, the driver's defaults) through the kernel.
    The rootfs is `make bench`'s (debootstrap, once; cached in the git-ignored bench/cache)."""
    from bench.images import build_rootfs, push_layer_image

    ROOTFS.parent.mkdir(parents=True, exist_ok=True)
    build_rootfs(str(ROOTFS.parent))

    ref = push_layer_image(client, f"{registry.host}/nydus/debian:v1", str(ROOTFS))
    result = convert(make_cfg(tmp_path / "work", fs_chunk_size="0x100000"), ref)
    manifest = fetch_json(client, result.target)
    boot, blobs, rafs = check_nydus_image(client, f"{registry.host}/nydus/debian", manifest, {}, tmp_path)
    seen = kernel_view(tmp_path, boot, blobs, rafs)
    with gzip.open(ROOTFS) as fh:
        compare(flatten([fh.read()]), seen)
    assert len(seen) > 5000 and "etc/os-release" in seen
