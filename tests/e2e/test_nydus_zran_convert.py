"""End to end with ``oci_ref: true`` (OCI-referenced nydus, zran): the real registry, the engine, the kernel.

The converted manifest is nydus-snapshotter's OCIRef layout (NYDUS.md section 4): one small nydus blob layer per
source layer annotated with the source layer's digest, the bootstrap last; the source gzip layers are not in
the manifest and stay in the repository, where nydusd fetches them by blob id. The check reads everything back
from the registry: every chunk is decoded from the *source gzip layer* through the blob's ZRAN contexts and held
to blob.digest and crc32c; the device files built that way are mounted with the merged bootstrap by the kernel
and compared entry by entry with the flattened source.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import LayerError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.nydus.media import BLOB_ANNOTATION, BOOTSTRAP_ANNOTATION, FS_VERSION_ANNOTATION, NYDUS_BLOB
from drivers.nydus.reader import Rafs
from drivers.nydus.refblob import REF_ANNOTATION, RefBlob, validate_ref
from tests.drivers.nydus_oracle import compare, flatten, three_layers
from tests.e2e.test_nydus_convert import ACCELD_NYDUS_YAML, ROOTFS
from tests.support import erofs
from tests.support.images import push_image, sha, simple_tar

needs_kernel = erofs.requires_kernel()


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def make_cfg(work_dir, **opts):
    return config_mod.from_dict({"provider": {"work_dir": str(work_dir)},
                                 "converter": {"driver": {"type": "nydus", "config": {"oci_ref": True, **opts}},
                                               "rules": [{"tag_suffix": "-nydus-oci-ref"}]}})


def download(client, repo: str, digest: str, path=None) -> bytes:
    buf = io.BytesIO()
    client.download_blob(parse(repo), digest, buf)
    if path is not None:
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def check_ref_image(client, repo: str, manifest: dict, source: dict, tmp_path):
    """nydus-snapshotter's OCIRef layout, read back from the registry; returns (bootstrap path, rafs, blobs, gzips)."""
    config = json.loads(download(client, repo, manifest["config"]["digest"]))
    *blob_layers, boot_layer = manifest["layers"]
    src_layers = source["layers"]
    assert len(blob_layers) == len(src_layers)                                # one per source layer, in order
    assert not {layer["digest"] for layer in src_layers} & {layer["digest"] for layer in manifest["layers"]}
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(manifest["layers"])
    blobs, gzips = {}, {}
    for i, (layer, src, diff_id) in enumerate(zip(blob_layers, src_layers, diff_ids)):
        assert layer["mediaType"] == NYDUS_BLOB and diff_id == layer["digest"]
        assert layer["annotations"] == {BLOB_ANNOTATION: "true", REF_ANNOTATION: src["digest"]}
        path = tmp_path / f"blob{i}"
        data = download(client, repo, layer["digest"], path)
        assert sha(data) == layer["digest"] and len(data) < src["size"] + 3 * 4096 + 8192
        gz = download(client, repo, src["digest"])                            # still in the repository
        blobs[src["digest"][7:]], gzips[src["digest"][7:]] = RefBlob(path), io.BytesIO(gz)
    assert boot_layer["mediaType"] == oci.OCI_LAYER_GZIP
    assert boot_layer["annotations"] == {BOOTSTRAP_ANNOTATION: "true", FS_VERSION_ANNOTATION: "6"}
    tar = gzip.decompress(download(client, repo, boot_layer["digest"]))
    assert diff_ids[-1] == sha(tar)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    boot = tmp_path / "image.boot"
    boot.write_bytes(files["image/image.boot"])
    rafs = Rafs(boot.read_bytes())
    by_source = {src["digest"][7:]: layer for layer, src in zip(blob_layers, src_layers)}
    # blob.meta files are named by the nydus blob layer (convert_unix.go Merge: layers[idx].Digest)
    assert sorted(files) == sorted(["image/image.boot"] + [f"image/{by_source[b.blob_id]['digest'][7:]}.blob.meta"
                                                           for b in rafs.blobs])
    for entry in rafs.blobs:
        layer, blob = by_source[entry.blob_id], blobs[entry.blob_id]
        assert entry.blob_meta_digest.hex() == layer["digest"][7:] and entry.blob_meta_size == layer["size"]
        assert files[f"image/{layer['digest'][7:]}.blob.meta"] == (blob.ci + bytes(-len(blob.ci) % 4096)
                                                                   + blob.header_bytes)
        assert (entry.compressor, entry.digester) == ("gzip", "sha256")
    validate_ref(rafs, {b.blob_id: blobs[b.blob_id] for b in rafs.blobs}, gzips)   # every chunk from the gzip
    return boot, rafs, blobs, gzips


def kernel_view(tmp_path, boot, rafs, blobs, gzips) -> dict:
    devices = []
    for i, entry in enumerate(rafs.blobs):
        dev = tmp_path / f"device{i}"
        blobs[entry.blob_id].write_device(dev, gzips[entry.blob_id])
        devices.append(dev)
    with erofs.mounted(boot, devices) as root:                                 # loop devices detached in finally
        return erofs.snapshot(root)


@needs_kernel
def test_three_layers_reference_their_gzip_and_mount_as_the_flattened_source(tmp_path, registry, client):
    repo = f"{registry.host}/zran/app"
    layers = three_layers()
    src = push_image(client, f"{repo}:v1", layers)
    result = convert(make_cfg(tmp_path / "work", fs_chunk_size="0x1000"), f"{repo}:v1")
    assert result.target == f"{repo}:v1-nydus-oci-ref" and result.driver == "nydus"
    manifest = json.loads(client.get_manifest(parse(result.target)).raw)
    boot, rafs, blobs, gzips = check_ref_image(client, repo, manifest, src.manifest, tmp_path)
    assert rafs.ext.chunk_size == 0x1000 and len(rafs.blobs) == 3
    seen = kernel_view(tmp_path, boot, rafs, blobs, gzips)
    compare(flatten(layers), seen)                                             # every entry, every attribute

    # again, from the local layer cache: the very same image (the bootstrap rebuilt from the cached blobs)
    events = []
    again = convert(make_cfg(tmp_path / "work", fs_chunk_size="0x1000"), f"{repo}:v1", progress=events.append)
    assert again.digest == result.digest
    assert [e.message for e in events if e.phase == "convert"].count("cached") == 3


def test_acceld_ref_example_config_converts(tmp_path, registry, client):
    """acceld's misc/config/config.nydus.ref.yaml driver keys (oci_ref: true, with_referrer: true)."""
    repo = f"{registry.host}/zran/acceld"
    src = push_image(client, f"{repo}:v1", [simple_tar({"etc/motd": b"hello\n"}), simple_tar({"bin/x": b"x" * 5000})])
    cfg = config_mod.loads(ACCELD_NYDUS_YAML.format(registry=registry.host, work_dir=tmp_path, extra="oci_ref: true")
                           .replace("- tag_suffix: -nydus", "- tag_suffix: -nydus-oci-ref"))
    result = convert(cfg, f"{repo}:v1")
    manifest = json.loads(client.get_manifest(parse(result.target)).raw)
    assert result.target == f"{repo}:v1-nydus-oci-ref" and manifest["subject"]["digest"] == src.digest
    check_ref_image(client, repo, manifest, src.manifest, tmp_path)


def test_a_zstd_layer_is_refused_with_a_reason(tmp_path, registry, client):
    repo = f"{registry.host}/zran/zstd"
    push_image(client, f"{repo}:v1", [simple_tar({"a": b"zstd"})], compression="zstd")
    with pytest.raises(LayerError, match="gzip layers only"):
        convert(make_cfg(tmp_path / "work"), f"{repo}:v1")


@pytest.mark.slow
@needs_kernel
def test_a_debian_rootfs_mounts_as_its_source(tmp_path, registry, client):
    """The bench rootfs (debootstrap, cached in bench/cache) with acceld's defaults: 1 MiB chunks."""
    from bench.images import build_rootfs, push_layer_image

    ROOTFS.parent.mkdir(parents=True, exist_ok=True)
    build_rootfs(str(ROOTFS.parent))
    ref = push_layer_image(client, f"{registry.host}/zran/debian:v1", str(ROOTFS))
    result = convert(make_cfg(tmp_path / "work"), ref)
    manifest = json.loads(client.get_manifest(parse(result.target)).raw)
    source = json.loads(client.get_manifest(parse(ref)).raw)
    boot, rafs, blobs, gzips = check_ref_image(client, f"{registry.host}/zran/debian", manifest, source, tmp_path)
    seen = kernel_view(tmp_path, boot, rafs, blobs, gzips)
    with gzip.open(ROOTFS) as fh:
        compare(flatten([fh.read()]), seen)
    assert len(seen) > 5000 and "etc/os-release" in seen


def test_accelctl_check_and_converter_verify_read_zran_images(tmp_path, registry, client):
    """accelctl check fetches each referenced gzip layer from the repository and decodes every chunk from it;
    converter.verify does the same before the tag is written. A zran layer pointing at the wrong gzip FAILs."""
    from acceleration_sdk.check import check_image

    repo = f"{registry.host}/zran/checked"
    layers = three_layers()
    src = push_image(client, f"{repo}:v1", layers)
    cfg = config_mod.from_dict({"provider": {"work_dir": str(tmp_path / "work")},
                                "converter": {"verify": True, "driver": {"type": "nydus", "config": {
                                    "oci_ref": True, "fs_chunk_size": "0x1000"}},
                                              "rules": [{"tag_suffix": "-zran"}]}})
    result = convert(cfg, f"{repo}:v1")                                        # verified before its tag
    checked = check_image(client, parse(result.target), source=parse(f"{repo}:v1"))
    assert checked.ok, checked.lines
    assert sum(line.startswith("ok ") and "same as source layer" in line for line in checked.lines) == 3

    manifest = json.loads(client.get_manifest(parse(result.target)).raw)
    first, second = manifest["layers"][0], manifest["layers"][1]
    first["annotations"][REF_ANNOTATION] = second["annotations"][REF_ANNOTATION]   # the wrong gzip layer
    client.put_manifest(parse(f"{repo}:bad"), json.dumps(manifest).encode(), oci.OCI_MANIFEST)
    checked = check_image(client, parse(f"{repo}:bad"))
    assert not checked.ok
    assert any(line.startswith(f"FAIL {first['digest']}") for line in checked.lines), checked.lines



def test_docker_source_becomes_an_oci_manifest_even_with_docker2oci_false(tmp_path, registry, client):
    """acceld forces docker2oci for oci_ref (pkg/driver/nydus/nydus.go:203-213): the nydus-ref annotation needs
    an OCI manifest."""
    repo = f"{registry.host}/zran/docker"
    src = push_image(client, f"{repo}:v1", [simple_tar({"a": b"docker" * 1000})], docker=True)
    result = convert(make_cfg(tmp_path / "work", docker2oci=False), f"{repo}:v1")
    manifest = json.loads(client.get_manifest(parse(result.target)).raw)
    assert manifest["mediaType"] == oci.OCI_MANIFEST
    check_ref_image(client, repo, manifest, src.manifest, tmp_path)


def test_a_target_in_another_repository_gets_the_gzip_layers_too(tmp_path, registry, client):
    """nydusd reads the gzip layers from the image's own repository: when the target is another repository (a
    route), the engine mounts them there with the manifest's blobs (Driver.referenced_blobs). nydus-snapshotter
    and acceld push only the manifest's blobs, which leaves such an image unreadable."""
    repo, other = f"{registry.host}/zran/origin", f"{registry.host}/zran/elsewhere"
    layers = three_layers()
    src = push_image(client, f"{repo}:v1", layers)
    mark = len(registry.log())
    result = convert(make_cfg(tmp_path / "work", fs_chunk_size="0x1000"), f"{repo}:v1", target=f"{other}:v1-zran")
    assert result.target == f"{other}:v1-zran"
    manifest = json.loads(client.get_manifest(parse(result.target)).raw)
    check_ref_image(client, other, manifest, src.manifest, tmp_path)            # gzip layers read from `other`
    mounts = [line for line in registry.log()[mark:].splitlines() if "mount=" in line and "zran/elsewhere" in line]
    assert len(mounts) >= 3, registry.log()[mark:][-3000:]


def test_a_file_the_merged_bootstrap_shows_otherwise_than_its_zran_layer_fails(tmp_path, registry, client):
    """The merged bootstrap is held to the zran layers' own trees merged, as for a plain nydus image: a mode
    changed in the merged bootstrap only (every table still agreeing with the zran blobs) FAILs, naming the file."""
    import struct

    from acceleration_sdk.check import check_image
    from tests.e2e.test_check_nydus import variant

    repo = f"{registry.host}/zran/trees"
    push_image(client, f"{repo}:v1", three_layers())
    result = convert(make_cfg(tmp_path / "work", fs_chunk_size="0x1000"), f"{repo}:v1")
    checked = check_image(client, parse(result.target))
    assert checked.ok and checked.lines[-2].endswith(", verified against the blob layers"), checked.lines

    def chmod(boot, rafs):
        inode = next(node for path, node in rafs.walk() if path == "etc/passwd")
        struct.pack_into("<H", boot, inode.offset + 4, 0o100600)   # i_mode: 0644 -> 0600
    bad = variant(client, result.target, "chmod", boot_edit=chmod)
    checked = check_image(client, parse(bad))
    boot_layer = json.loads(client.get_manifest(parse(bad)).raw)["layers"][-1]["digest"]
    assert checked.lines[-1] == (f"FAIL {boot_layer}: the merged bootstrap differs from its blob layers merged: "
                                 "'etc/passwd': mode 384, the layers give 420"), checked.lines
