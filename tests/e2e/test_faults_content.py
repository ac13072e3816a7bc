"""Bad content from a real docker-registry: blobs whose bytes do not match their digest (damaged on the
registry's disk), truncated blobs, and manifests that lie about sizes. Each fails with one clear line
naming the digest; nothing is tagged and nothing unverified is left in the content store.
"""
from __future__ import annotations

import glob
import json
import os

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.engine import convert, store_for
from acceleration_sdk.errors import AccelError, DigestMismatchError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support.images import compress, push_image, sha, simple_tar


def make_cfg(tmp_path):
    return config_mod.from_dict({
        "provider": {"work_dir": str(tmp_path / "work")},
        "converter": {"driver": {"type": "estargz", "config": {"compression_level": 1}},
                      "rules": [{"tag_suffix": "-esgz"}]},
    })


@pytest.fixture
def client(registry):
    with RegistryClient(retries=1, backoff=0.01) as c:
        yield c


def registry_file(registry, digest: str) -> str:
    """The registry's own data file of a blob (distribution's filesystem layout)."""
    found = glob.glob(os.path.join(registry.root, "data", "**", "blobs", "sha256", digest[7:9], digest[7:], "data"),
                      recursive=True)
    assert len(found) == 1, found
    return found[0]


def assert_failed_cleanly(tmp_path, registry, client, repo: str, exc: AccelError, digest: str) -> None:
    message = str(exc)
    assert "\n" not in message and digest in message, message
    assert getattr(exc, "digest", "") == digest
    assert sorted(client.list_tags(parse(f"{repo}:x"))) == ["v1"]
    assert "/manifests/v1-esgz" not in registry.log()
    store = store_for(make_cfg(tmp_path))
    assert not store.has(digest)  # bad bytes never become a blob under their claimed name
    assert os.listdir(store.ingest_dir) == [] and os.listdir(store.tmp_dir) == []


def seed(client, repo: str):
    layers = [simple_tar({"a": os.urandom(20_000)}), simple_tar({"b": os.urandom(50_000)})]
    return push_image(client, f"{repo}:v1", layers)


@pytest.mark.parametrize("which", ["layer", "config"])
@pytest.mark.parametrize("damage", ["flipped", "truncated", "extended"])
def test_damaged_blob_on_the_registry_disk(tmp_path, registry, client, which, damage):
    repo = f"{registry.host}/damaged/{which}-{damage}"
    src = seed(client, repo)
    digest = src.manifest["layers"][1]["digest"] if which == "layer" else src.manifest["config"]["digest"]
    path = registry_file(registry, digest)
    good = open(path, "rb").read()
    bad = {"flipped": good[:-10] + bytes(b ^ 0xFF for b in good[-10:]),
           "truncated": good[:len(good) // 2],
           "extended": good + b"\0" * 100}[damage]
    with open(path, "wb") as fh:
        fh.write(bad)
    with pytest.raises(DigestMismatchError) as info:
        convert(make_cfg(tmp_path), f"{repo}:v1", client=client)
    assert_failed_cleanly(tmp_path, registry, client, repo, info.value, digest)


def push_lying_manifest(client, repo: str, layer_delta: int = 0, config_delta: int = 0) -> tuple[str, str]:
    """An image whose manifest states the layer's (or config's) size off by ``*_delta`` bytes."""
    tar = simple_tar({"f": os.urandom(30_000)})
    blob = compress(tar, "gzip")
    ref = parse(f"{repo}:v1")
    client.push_blob(ref, sha(blob), len(blob), _bytes(blob))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(tar)]}}).encode()
    client.push_blob(ref, sha(config), len(config), _bytes(config))
    manifest = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(config), "size": len(config) + config_delta},
                "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": sha(blob), "size": len(blob) + layer_delta}]}
    client.put_manifest(ref, json.dumps(manifest).encode(), oci.OCI_MANIFEST)
    return sha(blob), sha(config)


def _bytes(data: bytes):
    import io
    return io.BytesIO(data)


@pytest.mark.parametrize("case", ["layer-larger", "layer-smaller", "config-larger", "config-smaller"])
def test_manifest_that_lies_about_a_size(tmp_path, registry, client, case):
    repo = f"{registry.host}/lying/{case}"
    what, direction = case.split("-")
    delta = 1000 if direction == "larger" else -1000 if what == "layer" else -5
    layer, config = push_lying_manifest(client, repo, **{f"{what}_delta": delta})
    digest = layer if what == "layer" else config
    with pytest.raises(DigestMismatchError) as info:
        convert(make_cfg(tmp_path), f"{repo}:v1", client=client)
    message = str(info.value)
    assert ("expected" in message or "larger than" in message or "truncated" in message), message
    assert_failed_cleanly(tmp_path, registry, client, repo, info.value, digest)
