"""RegistryClient manifests, indexes and tags against the real docker-registry."""
from __future__ import annotations

import hashlib
import io
import json

import pytest

from acceleration_sdk import oci
from acceleration_sdk.errors import DigestMismatchError, NotFoundError, RegistryError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient, client as client_module


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(client, ref, docker: bool = False) -> tuple[bytes, str]:
    """A one-layer image; returns (manifest bytes, media type)."""
    layer = b"layer-bytes-" + ref.repository.encode()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
    for blob in (layer, config):
        client.push_blob(ref, sha(blob), len(blob), io.BytesIO(blob))
    mt = oci.DOCKER_MANIFEST if docker else oci.OCI_MANIFEST
    manifest = oci.canonical_json({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": oci.DOCKER_CONFIG if docker else oci.OCI_CONFIG, "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": oci.DOCKER_LAYER if docker else oci.OCI_LAYER, "digest": sha(layer),
                    "size": len(layer)}],
    })
    return manifest, mt


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker-v2s2"])
def test_manifest_and_index_roundtrip(registry, docker):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/img:v1")
    manifest, mt = push_image(client, ref, docker)
    assert client.put_manifest(ref, manifest, mt) == sha(manifest)

    fetched = client.get_manifest(ref)
    assert (fetched.raw, fetched.media_type, fetched.digest) == (manifest, mt, sha(manifest))
    by_digest = client.get_manifest(ref.with_digest(sha(manifest)))
    assert by_digest.raw == manifest
    head = client.head_manifest(ref)
    assert (head.media_type, head.digest, head.size) == (mt, sha(manifest), len(manifest))

    index_mt = oci.DOCKER_LIST if docker else oci.OCI_INDEX
    index = oci.canonical_json({"schemaVersion": 2, "mediaType": index_mt, "manifests": [
        {"mediaType": mt, "digest": sha(manifest), "size": len(manifest),
         "platform": {"architecture": "amd64", "os": "linux"}}]})
    index_ref = ref.with_tag("multi")
    assert client.put_manifest(index_ref, index, index_mt) == sha(index)
    got = client.get_manifest(index_ref)
    assert (got.raw, got.media_type) == (index, index_mt)
    assert sorted(client.list_tags(ref)) == ["multi", "v1"]


def test_put_by_digest_and_delete(registry):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/del:v1")
    manifest, mt = push_image(client, ref)
    digest = sha(manifest)
    assert client.put_manifest(ref.with_digest(digest), manifest, mt) == digest
    assert client.head_manifest(ref.with_digest(digest)).digest == digest
    with pytest.raises(DigestMismatchError):
        client.put_manifest(ref.with_digest(sha(b"other")), manifest, mt)
    client.delete_manifest(ref, digest)
    assert client.head_manifest(ref.with_digest(digest)) is None
    with pytest.raises(NotFoundError):
        client.delete_manifest(ref, digest)


def test_missing_tag_is_a_one_line_not_found_naming_it(registry):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/nothing:nope")
    with pytest.raises(NotFoundError) as info:
        client.get_manifest(ref)
    assert str(info.value) == f"manifest unknown: {registry.host}/app/nothing:nope"
    assert info.value.status == 404 and info.value.registry_code == "MANIFEST_UNKNOWN"
    assert "\n" not in str(info.value)
    assert client.head_manifest(ref) is None


def test_tags_of_an_unknown_repository_are_not_found(registry):
    with pytest.raises(NotFoundError, match=f"^repository name not known to registry: {registry.host}/no/such$"):
        RegistryClient().list_tags(parse(f"{registry.host}/no/such"))


def test_tag_list_when_the_registry_ignores_page_size(registry, monkeypatch):
    """distribution 2.8 ignores ``n`` and sends every tag at once (paging is tested on the fake)."""
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/paged:t0")
    manifest, mt = push_image(client, ref)
    tags = [f"t{i}" for i in range(7)]
    for tag in tags:
        client.put_manifest(ref.with_tag(tag), manifest, mt)
    monkeypatch.setattr(client_module, "TAGS_PAGE", 2)
    assert sorted(client.list_tags(ref)) == tags
    assert '"GET /v2/app/paged/tags/list?n=2 HTTP/1.1" 200' in registry.log()


def test_registry_error_carries_code_and_message(registry):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/bad:v1")
    missing_config = oci.canonical_json({
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(b"absent"), "size": 6}, "layers": []})
    with pytest.raises(RegistryError) as info:
        client.put_manifest(ref, missing_config, oci.OCI_MANIFEST)
    assert info.value.registry_code == "MANIFEST_BLOB_UNKNOWN" and info.value.status == 400
    assert "blob unknown to registry" in str(info.value) and registry.host in str(info.value)
    assert client.head_manifest(ref) is None
