"""The ``nydus`` driver without a registry: its options, its cache key, and finalize_manifest over the engine's own
provider (the conformance harness), including layers without file data and what it refuses."""
from __future__ import annotations

import gzip
import io
import logging
import tarfile

import pytest

from acceleration_sdk import oci
from acceleration_sdk.content import ContentStore
from acceleration_sdk.driver import load_driver
from acceleration_sdk.errors import DriverError
from acceleration_sdk.oci import Descriptor
from acceleration_sdk.testing import StoreProvider
from drivers.nydus import driver as nydus_driver
from drivers.nydus.driver import BOOTSTRAP_ANNOTATION, NYDUS_BLOB
from drivers.nydus.reader import Rafs
from tests.support import tars
from tests.support.images import sha


@pytest.fixture
def provider(tmp_path):
    p = StoreProvider(ContentStore(tmp_path / "store"))
    yield p
    p.close()


def test_acceld_string_options_are_read_as_acceld_writes_them():
    driver = load_driver("nydus", {"fs_chunk_size": "0x4000", "fs_version": "6", "docker2oci": "false",
                                   "prefetch_patterns": "/usr/bin\n/etc\n", "fs_align_chunk": "true",
                                   "work_dir": "/tmp", "merge_manifest": "false", "oci_ref": "false"})
    assert driver.build.chunk_size == 0x4000 and driver.build.prefetch == ("/usr/bin", "/etc")
    assert driver.docker2oci() is False and driver.name() == "nydus"


def test_the_builder_option_is_logged_once(caplog):
    nydus_driver._builder_logged.clear()
    with caplog.at_level(logging.INFO, logger="drivers.nydus"):
        load_driver("nydus", {"builder": "/usr/bin/nydus-image"})
        load_driver("nydus", {"builder": "/usr/bin/nydus-image"})
    said = [r.getMessage() for r in caplog.records if "natively" in r.getMessage()]
    assert len(said) == 1 and "/usr/bin/nydus-image" in said[0]


def test_cache_key_follows_what_enters_the_blob_bytes_only():
    key = load_driver("nydus").cache_key()
    for changed in ({"compressor": "lz4_block"}, {"digester": "sha256"}, {"fs_chunk_size": 0x2000}):
        assert load_driver("nydus", changed).cache_key() != key, changed
    for same in ({"prefetch_patterns": "/bin"}, {"workers": 1}, {"with_referrer": True}):
        assert load_driver("nydus", same).cache_key() == key, same


def convert_layers(provider, driver, layers: list[bytes]) -> list[dict]:
    out = []
    for tar in layers:
        result = driver.convert_layer(provider, provider.add_layer(tar))
        provider.finish()
        assert result.diff_id == result.descriptor.digest and result.descriptor.media_type == NYDUS_BLOB
        out.append(result.descriptor.to_dict())
    return out


@pytest.mark.parametrize("media_type, layer_type", [(oci.OCI_MANIFEST, oci.OCI_LAYER_GZIP),
                                                    (oci.DOCKER_MANIFEST, oci.DOCKER_LAYER_GZIP)])
def test_finalize_appends_the_bootstrap_naming_only_blobs_with_data(provider, media_type, layer_type):
    driver = load_driver("nydus", {"fs_chunk_size": 0x1000})
    layers = [tars.build_tar([tars.directory("etc"), tars.symlink("bin", "usr/bin")]),   # metadata only
              tars.build_tar([tars.reg("usr/bin/a", tars.payload(9000, "a"))])]
    descs = convert_layers(provider, driver, layers)
    config = {"rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]},
              "history": [{"created_by": "one"}, {"created_by": "two"}]}
    manifest, config = driver.finalize_manifest(provider, {"mediaType": media_type, "layers": list(descs)}, config)
    provider.finish()

    *blob_layers, boot = manifest["layers"]
    assert blob_layers == descs and boot["mediaType"] == layer_type
    assert boot["annotations"][BOOTSTRAP_ANNOTATION] == "true"
    tar = gzip.decompress(provider.store.read_bytes(boot["digest"], 64 << 20))
    assert config["rootfs"]["diff_ids"] == [d["digest"] for d in descs] + [sha(tar)]
    assert config["history"][-1] == {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        names = tf.getnames()
        rafs = Rafs(tf.extractfile("image/image.boot").read())
    # the metadata-only layer has no blob in the merged bootstrap, so no blob.meta either
    assert [b.blob_id for b in rafs.blobs] == [descs[1]["digest"][7:]]
    assert names == ["image", "image/image.boot", f"image/{descs[1]['digest'][7:]}.blob.meta"]
    assert {path for path, _ in rafs.walk()} >= {"etc", "bin", "usr/bin/a"}


def test_finalize_refuses_a_layer_that_is_no_nydus_blob(provider):
    driver = load_driver("nydus", {"fs_chunk_size": 0x1000})
    foreign = {"mediaType": oci.OCI_LAYER_NONDIST_GZIP, "digest": "sha256:" + "ab" * 32, "size": 1}
    with pytest.raises(DriverError, match="was not converted to a nydus blob"):
        driver.finalize_manifest(provider, {"mediaType": oci.OCI_MANIFEST, "layers": [foreign]}, {})


def test_a_nydus_source_is_refused(provider):
    driver = load_driver("nydus")
    desc = provider.add_layer(tars.build_tar([tars.reg("image/image.boot", b"x")]))
    desc = Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size,
                      annotations={BOOTSTRAP_ANNOTATION: "true"})
    with pytest.raises(DriverError, match="nydus image already"):
        driver.convert_layer(provider, desc)


def test_fresh_layers_and_layers_read_back_from_their_blobs_merge_alike(provider):
    """finalize_manifest takes just-converted trees from memory, cache hits from their blobs: same bootstrap."""
    from tests.drivers.nydus_oracle import three_layers

    converting = load_driver("nydus", {"fs_chunk_size": 0x1000})
    descs = convert_layers(provider, converting, three_layers())
    manifest = {"mediaType": oci.OCI_MANIFEST, "layers": list(descs)}
    fresh, _ = converting.finalize_manifest(provider, dict(manifest), {})
    assert not converting._fresh                                       # handed over once, then forgotten
    again, _ = converting.finalize_manifest(provider, dict(manifest), {})        # now from the blobs
    other, _ = load_driver("nydus", {"fs_chunk_size": 0x1000}).finalize_manifest(provider, dict(manifest), {})
    provider.finish()
    assert fresh["layers"][-1] == again["layers"][-1] == other["layers"][-1]


def test_acceld_older_and_newer_keys_are_known():
    """rafs_version / rafs_compressor (acceld's older names) are read; batch_size and encrypt_recipients
    (acceld's newer keys) are refused by name while unsupported, not as unknown options."""
    driver = load_driver("nydus", {"rafs_version": "6", "rafs_compressor": "lz4_block"})
    assert driver.options["fs_version"] == 6 and driver.build.compressor == "lz4_block"
    assert load_driver("nydus", {"compressor": "none", "rafs_compressor": "lz4_block"}).build.compressor == "none"
    for options, key, words in [({"rafs_version": 5}, "rafs_version", "only RAFS v6"),
                                ({"batch_size": "0x100000"}, "batch_size", "not supported yet"),
                                ({"encrypt_recipients": "jwe:pub.pem"}, "encrypt_recipients", "not supported yet")]:
        with pytest.raises(DriverError, match=f"converter.driver.config.{key}: .*{words}"):
            load_driver("nydus", options)
