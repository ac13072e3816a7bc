"""``chunk_dict_ref`` end to end with the real registry: image A converted to nydus is the chunk dict of image B.

B's blobs hold only the chunks A's blobs do not; B's manifest lists A's blobs it uses after its own (as
nydus-snapshotter appends them), mounted into B's repository from A's; every file of B reads back through our
reader from B's and A's blobs, and the kernel mounts it. The dict is read with the engine's registry client, only
from a configured registry; a layer converted against a dict is cached under that dict's digest.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk.driver import load_driver
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import ConfigError, ConversionError, NotFoundError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.nydus.blobfile import BlobFile
from drivers.nydus.media import BLOB_ANNOTATION, NYDUS_BLOB
from drivers.nydus.reader import Rafs
from drivers.nydus.validate import validate
from tests.drivers.nydus_oracle import compare, device_files, flatten
from tests.support import erofs, tars
from tests.support.images import push_image, push_index

needs_kernel = erofs.requires_kernel()
SHARED = tars.payload(9 * 0x1000 + 5, "shared")
LIB = tars.payload(6 * 0x1000, "lib")


def cfg(work_dir, host, suffix="-nydus", **opts):
    return config_mod.from_dict({
        "provider": {"work_dir": str(work_dir), "source": {host: {}}},
        "converter": {"driver": {"type": "nydus", "config": {"fs_chunk_size": "0x1000", **opts}},
                      "rules": [{"tag_suffix": suffix}]}})


def layers_a() -> list[bytes]:
    return [tars.build_tar([tars.directory("usr"), tars.reg("usr/shared", SHARED), tars.reg("etc/a", b"a\n")]),
            tars.build_tar([tars.reg("usr/lib", LIB), tars.reg("a-only", tars.payload(4 * 0x1000, "a-only"))])]


def layers_b() -> list[bytes]:
    lib = LIB[:3 * 0x1000] + tars.payload(0x1000, "patched") + LIB[4 * 0x1000:]
    return [tars.build_tar([tars.directory("usr"), tars.reg("usr/shared", SHARED), tars.reg("etc/b", b"b\n")]),
            tars.build_tar([tars.reg("usr/lib", lib), tars.hardlink("usr/lib2", "usr/lib"),
                            tars.reg("b-only", tars.payload(3 * 0x1000 + 1, "b-only")), tars.symlink("l", "usr/lib")])]


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def manifest_of(client, ref: str) -> dict:
    return json.loads(client.get_manifest(parse(ref)).raw)


def blob(client, repo: str, digest: str) -> bytes:
    buf = io.BytesIO()
    client.download_blob(parse(repo), digest, buf)
    return buf.getvalue()


def pulled(client, repo: str, manifest: dict, tmp_path):
    """Every blob layer downloaded (by its digest, from ``repo``) and the merged bootstrap."""
    *blob_layers, boot_layer = manifest["layers"]
    blobs = {}
    for layer in blob_layers:
        path = tmp_path / layer["digest"][7:]
        path.write_bytes(blob(client, repo, layer["digest"]))
        blobs[layer["digest"][7:]] = BlobFile(path)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(client, repo, boot_layer["digest"])))) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    boot = tmp_path / "image.boot"
    boot.write_bytes(files["image/image.boot"])
    return boot, blobs, files


def read_files(rafs: Rafs, blobs: dict[str, BlobFile]) -> dict[str, bytes]:
    out = {}
    for path, inode in rafs.walk():
        if stat.S_ISREG(inode.mode):
            data = b""
            for chunk in rafs.file_chunks(inode):
                entry = rafs.blobs[chunk.blob_index]
                with open(blobs[entry.blob_id].path, "rb") as fh:
                    data += blobs[entry.blob_id].read_chunk(fh, chunk.index, entry.compressor)
            out[path] = data[:inode.size]
    return out


def expected_files(layers: list[bytes]) -> dict[str, bytes]:
    out = {}
    for layer in layers:
        with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
            out.update({m.name.removeprefix("./"): tf.extractfile(m).read() for m in tf.getmembers()
                        if m.isreg() or m.islnk()})
    return out


def own_sizes(manifest: dict, count: int) -> int:
    return sum(layer["size"] for layer in manifest["layers"][:count])


@needs_kernel
def test_image_b_built_against_image_a(tmp_path, registry, client):
    host = registry.host
    push_image(client, f"{host}/base/dict:v1", layers_a())
    dict_result = convert(cfg(tmp_path / "dict-work", host), f"{host}/base/dict:v1")   # made elsewhere
    dict_manifest = manifest_of(client, dict_result.target)
    dict_blobs = dict_manifest["layers"][:-1]

    src = push_image(client, f"{host}/apps/app:v1", layers_b())
    plain = convert(cfg(tmp_path / "work", host, suffix="-plain"), f"{host}/apps/app:v1")
    mark = len(registry.log())
    events = []
    result = convert(cfg(tmp_path / "work", host, chunk_dict_ref=dict_result.target), f"{host}/apps/app:v1",
                     progress=events.append)
    # not the plain conversion's layers from the cache: a layer built against a dict is another blob
    assert [e.message for e in events if e.phase == "convert"].count("cached") == 0

    manifest = manifest_of(client, result.target)
    layers = manifest["layers"]
    # B's two blobs, then A's blobs B uses (both: usr/shared is in A's first, usr/lib's chunks in its second),
    # then the bootstrap; diff_ids follow, history gets the bootstrap's entry only (nydus-snapshotter's layout)
    assert [layer["digest"] for layer in layers[2:4]] == sorted(
        [b["digest"] for b in dict_blobs], key=[layer["digest"] for layer in layers[2:4]].index)
    assert {json.dumps(layer, sort_keys=True) for layer in layers[2:4]} == {
        json.dumps(b, sort_keys=True) for b in dict_blobs}
    assert all(layer["mediaType"] == NYDUS_BLOB and layer["annotations"] == {BLOB_ANNOTATION: "true"}
               for layer in layers[:4])
    config = json.loads(blob(client, f"{host}/apps/app", manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"][:4] == [layer["digest"] for layer in layers[:4]]
    assert len(config["rootfs"]["diff_ids"]) == len(layers)
    assert config["history"] == src.config["history"] + [{"created_by": "Nydus Converter",
                                                          "comment": "Nydus Bootstrap Layer"}]
    # A's blobs reached B's repository by a cross-repository mount from A's, not by an upload
    log = registry.log()[mark:]
    for b in dict_blobs:
        assert f"mount=sha256%3A{b['digest'][7:]}&from=base%2Fdict" in log

    plain_manifest = manifest_of(client, plain.target)
    assert own_sizes(manifest, 2) < own_sizes(plain_manifest, 2) / 2        # B's own blobs: most chunks are A's

    boot, blobs, files = pulled(client, f"{host}/apps/app", manifest, tmp_path)
    rafs = Rafs(boot.read_bytes())
    assert sorted(b.blob_id for b in rafs.blobs) == sorted(layer["digest"][7:] for layer in layers[:4])
    assert sorted(files) == sorted(["image/image.boot"] + [f"image/{b.blob_id}.blob.meta" for b in rafs.blobs])
    validate(rafs, blobs, strict=True)                                   # nydusd's rules, every chunk's data
    assert read_files(rafs, blobs) == expected_files(layers_b())
    with erofs.mounted(boot, device_files(tmp_path, blobs, rafs)) as root:   # loop devices detached in finally
        compare(flatten(layers_b()), erofs.snapshot(root))

    # again: both layers from the cache (keyed by the dict's digest), the very same image
    events = []
    again = convert(cfg(tmp_path / "work", host, chunk_dict_ref=dict_result.target), f"{host}/apps/app:v1",
                    progress=events.append)
    assert again.digest == result.digest
    assert [e.message for e in events if e.phase == "convert"].count("cached") == 2

    # the dict's tag moves to another image: the layers are converted again, against the new dict
    push_image(client, f"{host}/base/dict:v1", [layers_a()[0]])
    convert(cfg(tmp_path / "work", host), f"{host}/base/dict:v1")
    events = []
    moved = convert(cfg(tmp_path / "work", host, chunk_dict_ref=dict_result.target), f"{host}/apps/app:v1",
                    progress=events.append)
    assert [e.message for e in events if e.phase == "convert"].count("converted") == 2
    assert len(manifest_of(client, moved.target)["layers"]) == 4                # one dict blob now



def test_a_multi_arch_dict_gives_each_platform_its_own(tmp_path, registry, client):
    """A dict that is an index (our multi-arch output): each platform of B is built against the dict manifest
    of its platform, and Docker manifests (docker2oci: false) carry the dict blobs as nydus blob layers too."""
    host = registry.host
    amd_lib, arm_lib = tars.payload(5 * 0x1000, "amd-lib"), tars.payload(5 * 0x1000, "arm-lib")
    dicts = [push_image(client, f"{host}/base/multi:{arch}", [tars.build_tar([tars.reg("lib", lib)])],
                        platform=("linux", arch), tag=False, docker=True)
             for arch, lib in (("amd64", amd_lib), ("arm64", arm_lib))]
    push_index(client, f"{host}/base/multi:v1", dicts, docker=True)
    dict_result = convert(cfg(tmp_path / "work", host, docker2oci=False), f"{host}/base/multi:v1")
    dict_index = manifest_of(client, dict_result.target)
    dict_blob = {m["platform"]["architecture"]: manifest_of(client, f"{host}/base/multi@{m['digest']}")["layers"][0]
                 for m in dict_index["manifests"]}

    apps = [push_image(client, f"{host}/apps/multi:{arch}", [tars.build_tar([tars.reg("lib", lib),
                                                                              tars.reg(arch, arch.encode())])],
                       platform=("linux", arch), tag=False, docker=True)
            for arch, lib in (("amd64", amd_lib), ("arm64", arm_lib))]
    push_index(client, f"{host}/apps/multi:v1", apps, docker=True)
    result = convert(cfg(tmp_path / "work", host, docker2oci=False, chunk_dict_ref=dict_result.target),
                     f"{host}/apps/multi:v1")
    for child in manifest_of(client, result.target)["manifests"]:
        arch = child["platform"]["architecture"]
        manifest = manifest_of(client, f"{host}/apps/multi@{child['digest']}")
        own, linked, _boot = manifest["layers"]
        assert linked == dict_blob[arch]                                      # its own platform's dict blob
        (tmp_path / arch).mkdir()
        boot, blobs, _files = pulled(client, f"{host}/apps/multi", manifest, tmp_path / arch)
        rafs = Rafs(boot.read_bytes())
        validate(rafs, blobs, strict=True)
        assert read_files(rafs, blobs) == {"lib": amd_lib if arch == "amd64" else arm_lib, arch: arch.encode()}
        assert BlobFile(blobs[own["digest"][7:]].path).chunk_count == 1      # only the file "amd64"/"arm64"



def test_a_dict_on_another_configured_registry_is_copied_to_the_target(tmp_path, registry, client):
    """No mount across registries: the dict's blobs B uses are fetched from the dict's registry (verified) into
    the content store and uploaded to B's repository."""
    from tests.support.registry import RegistryServer

    with RegistryServer(tmp_path / "other-registry") as other:
        push_image(client, f"{other.host}/base/dict:v1", layers_a())
        both = {"provider": {"work_dir": str(tmp_path / "work"), "source": {registry.host: {}, other.host: {}}}}

        def cfg2(**opts):
            return config_mod.from_dict({**both, "converter": {"driver": {"type": "nydus", "config": {
                "fs_chunk_size": "0x1000", **opts}}}})
        dict_result = convert(cfg2(), f"{other.host}/base/dict:v1")
        dict_blobs = manifest_of(client, dict_result.target)["layers"][:-1]
        push_image(client, f"{registry.host}/apps/app:v1", layers_b())
        (tmp_path / "work").rename(tmp_path / "work-old")            # nothing of A's in the content store
        result = convert(cfg2(chunk_dict_ref=dict_result.target), f"{registry.host}/apps/app:v1")
        manifest = manifest_of(client, result.target)
        assert sorted(layer["digest"] for layer in manifest["layers"][2:-1]) == sorted(b["digest"] for b in dict_blobs)
        boot, blobs, _files = pulled(client, f"{registry.host}/apps/app", manifest, tmp_path)
        rafs = Rafs(boot.read_bytes())
        validate(rafs, blobs, strict=True)
        assert read_files(rafs, blobs) == expected_files(layers_b())


def test_the_dict_must_be_on_a_configured_registry(tmp_path, registry, client):
    host = registry.host
    # refused when the config is loaded: converter.driver, and a route's own driver
    with pytest.raises(ConfigError) as info:
        cfg(tmp_path / "work", host, chunk_dict_ref="dict.example.com/base/dict:v1")
    assert info.value.path == "converter.driver.config.chunk_dict_ref"
    assert "dict.example.com is not a configured registry (provider.source)" in str(info.value)
    route = {"name": "r", "match": {"repository": ["apps/*"]}, "target": "{host}/{path}:{tag}-r",
             "driver": {"type": "nydus", "config": {"chunk_dict_ref": "dict.example.com/base/dict:v1"}}}
    with pytest.raises(ConfigError) as info:
        config_mod.from_dict({"provider": {"source": {host: {}}}, "converter": {"routes": [route]}})
    assert info.value.path == "converter.routes[0].driver.config.chunk_dict_ref"

    # and at run time, for a driver built without a config (the SDK): the engine reads configured hosts only
    push_image(client, f"{host}/apps/app:v1", layers_b())
    driver = load_driver("nydus", {"fs_chunk_size": "0x1000", "chunk_dict_ref": "dict.example.com/base/dict:v1"})
    mark = len(registry.log())
    with pytest.raises(ConversionError, match=r"not a configured registry \(provider.source\)") as info:
        convert(cfg(tmp_path / "work", host), f"{host}/apps/app:v1", driver=driver)
    assert "chunk_dict_ref dict.example.com/base/dict:v1" in str(info.value)
    assert '"PUT ' not in registry.log()[mark:]                             # nothing pushed, no tag
    with pytest.raises(NotFoundError):
        client.get_manifest(parse(f"{host}/apps/app:v1-nydus"))


def test_a_dict_that_is_no_nydus_image_fails_with_the_reason(tmp_path, registry, client):
    host = registry.host
    push_image(client, f"{host}/base/plain:v1", layers_a())
    push_image(client, f"{host}/apps/app:v1", layers_b())
    with pytest.raises(ConversionError, match="is not a nydus image"):
        convert(cfg(tmp_path / "work", host, chunk_dict_ref=f"{host}/base/plain:v1"), f"{host}/apps/app:v1")
    with pytest.raises(ConversionError, match=f"chunk_dict_ref {host}/base/plain:gone: .*gone"):
        convert(cfg(tmp_path / "work", host, chunk_dict_ref=f"{host}/base/plain:gone"), f"{host}/apps/app:v1")
    # built with another chunk size: refused by name (nydus's check_compatibility)
    convert(cfg(tmp_path / "work", host, fs_chunk_size="0x2000"), f"{host}/base/plain:v1")
    with pytest.raises(ConversionError, match="fs_chunk_size 0x2000; this conversion uses zstd, blake3, 0x1000"):
        convert(cfg(tmp_path / "work", host, chunk_dict_ref=f"{host}/base/plain:v1-nydus"), f"{host}/apps/app:v1")


def test_a_bad_reference_is_a_config_error_at_load(tmp_path):
    with pytest.raises(ConfigError) as info:
        cfg(tmp_path, "127.0.0.1:5000", chunk_dict_ref="Not A Reference")
    assert info.value.path == "converter.driver.config.chunk_dict_ref"


@pytest.mark.slow
@needs_kernel
def test_two_debian_rootfs_variants(tmp_path, registry, client):
    """bench/chunkdict.py's pair (minbase, and minbase + curl, ca-certificates, less; debootstrap once, cached in
    the git-ignored bench/cache): B against A keeps under a sixth of its blob bytes, and reads back whole."""
    import pathlib

    from bench.chunkdict import build_variant
    from bench.images import build_rootfs, push_layer_image

    cache = pathlib.Path(__file__).resolve().parents[2] / "bench" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    rootfs_a, rootfs_b = build_rootfs(str(cache)), build_variant(str(cache))
    host = registry.host
    push_layer_image(client, f"{host}/debian/minbase:v1", rootfs_a)
    push_layer_image(client, f"{host}/debian/curl:v1", rootfs_b)
    dict_image = convert(cfg(tmp_path / "a", host, fs_chunk_size="0x100000"), f"{host}/debian/minbase:v1")
    result = convert(cfg(tmp_path / "b", host, fs_chunk_size="0x100000", chunk_dict_ref=dict_image.target),
                     f"{host}/debian/curl:v1")
    manifest = manifest_of(client, result.target)
    (a_blob,) = manifest_of(client, dict_image.target)["layers"][:-1]
    own, linked, _boot = manifest["layers"]
    assert linked == a_blob and own["size"] < os.path.getsize(rootfs_b) / 6
    boot, blobs, _files = pulled(client, f"{host}/debian/curl", manifest, tmp_path)
    rafs = Rafs(boot.read_bytes())
    validate(rafs, blobs, strict=True)
    with gzip.open(rootfs_b) as fh:
        layer = fh.read()
    assert read_files(rafs, blobs) == expected_files([layer])
    with erofs.mounted(boot, device_files(tmp_path, blobs, rafs)) as root:
        compare(flatten([layer]), erofs.snapshot(root))


def with_bootstrap_layer(client, dict_target: str, ref: str, layer: bytes) -> str:
    """The dict image ``dict_target`` again at ``ref``, its bootstrap layer replaced by ``layer`` (gzip bytes)."""
    manifest = manifest_of(client, dict_target)
    repo = parse(ref)
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    client.push_blob(repo, digest, len(layer), io.BytesIO(layer))
    manifest["layers"][-1] = dict(manifest["layers"][-1], digest=digest, size=len(layer))
    raw = json.dumps(manifest).encode()
    client.put_manifest(repo, raw, manifest["mediaType"])
    return ref


def bootstrap_members(client, dict_target: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    manifest = manifest_of(client, dict_target)
    data = gzip.decompress(blob(client, parse(dict_target).name, manifest["layers"][-1]["digest"]))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m, tf.extractfile(m).read() if m.isfile() else b"") for m in tf.getmembers()]


def test_blob_meta_files_of_no_dict_blob_are_never_read_into_memory(tmp_path, registry, client):
    """A dict's bootstrap layer may name any number of image/<id>.blob.meta files, and 32 MiB of zeros gzip to
    32 KiB: only the blob.meta of the dict's own blob layers is read, so a small layer cannot fill the memory."""
    import tracemalloc

    host = registry.host
    push_image(client, f"{host}/base/dict:v1", layers_a())
    dict_target = convert(cfg(tmp_path / "dict-work", host), f"{host}/base/dict:v1").target
    fat = io.BytesIO()
    with gzip.GzipFile(fileobj=fat, mode="wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        for info, data in bootstrap_members(client, dict_target):
            tf.addfile(info, io.BytesIO(data))
        for i in range(8):   # 256 MiB of blob.meta for blob ids no layer of the dict has
            info = tarfile.TarInfo(f"image/{i:064x}.blob.meta")
            info.size = 32 << 20
            tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert len(fat.getvalue()) < 2 << 20
    fat_ref = with_bootstrap_layer(client, dict_target, f"{host}/base/dict:fat", fat.getvalue())
    push_image(client, f"{host}/apps/app:v1", layers_b())
    tracemalloc.start()
    try:
        result = convert(cfg(tmp_path / "work", host, chunk_dict_ref=fat_ref), f"{host}/apps/app:v1")
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak} bytes at the peak"
    assert len(manifest_of(client, result.target)["layers"]) == 5      # still deduplicated against the dict


def test_the_blob_meta_files_kept_are_bounded_together(tmp_path, registry, client, monkeypatch):
    """Even the blob.meta of the dict's own blob layers (one per layer, any number of layers) is kept only up to
    MAX_METAS bytes together; past it the conversion fails naming the dict, with nothing pushed."""
    from drivers.nydus import bootlayer

    host = registry.host
    push_image(client, f"{host}/base/dict:v1", layers_a())
    dict_target = convert(cfg(tmp_path / "dict-work", host), f"{host}/base/dict:v1").target
    metas = [data for info, data in bootstrap_members(client, dict_target) if info.name.endswith(".blob.meta")]
    assert len(metas) == 2
    monkeypatch.setattr(bootlayer, "MAX_METAS", len(metas[0]) + len(metas[1]) - 1)   # the dict's two, less one
    push_image(client, f"{host}/apps/app:v1", layers_b())
    mark = len(registry.log())
    with pytest.raises(ConversionError, match=rf"chunk_dict_ref {host}/base/dict@sha256:\w+: the blob.meta files "
                                              r"of its blob layers are more than \d+ bytes together"):
        convert(cfg(tmp_path / "work", host, chunk_dict_ref=dict_target), f"{host}/apps/app:v1")
    assert '"PUT ' not in registry.log()[mark:]


def test_a_dict_whose_bootstrap_layer_is_corrupt_is_named_not_the_layer_converted(tmp_path, registry, client):
    """A broken gzip in the dict's bootstrap layer fails the conversion naming chunk_dict_ref, not the source
    layer that was being converted when the dict was loaded (which is intact)."""
    host = registry.host
    push_image(client, f"{host}/base/dict:v1", layers_a())
    dict_target = convert(cfg(tmp_path / "dict-work", host), f"{host}/base/dict:v1").target
    good = blob(client, parse(dict_target).name, manifest_of(client, dict_target)["layers"][-1]["digest"])
    broken = good[:20] + bytes(200) + good[220:]
    broken_ref = with_bootstrap_layer(client, dict_target, f"{host}/base/dict:broken", broken)
    src = push_image(client, f"{host}/apps/app:v1", layers_b())
    with pytest.raises(ConversionError) as info:
        convert(cfg(tmp_path / "work", host, chunk_dict_ref=broken_ref), f"{host}/apps/app:v1")
    assert f"chunk_dict_ref {host}/base/dict@sha256:" in str(info.value)
    assert "its bootstrap layer is not a readable gzip tar (corrupt gzip stream" in str(info.value)
    assert not any(layer["digest"] in str(info.value) for layer in src.manifest["layers"])
