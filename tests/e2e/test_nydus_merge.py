"""``merge_manifest: true`` end to end against the real registry: one tag, an OCI index holding per platform the
source image with an empty layer first and the nydus image marked with its artifactType (acceld's
``makeManifestIndex`` / ``PrependEmptyLayer``; nydus-snapshotter's index detection reads the mark).

Both manifests of every platform are pulled back: the OCI one's layers are the empty layer and then the
source's (every blob present in the target repository), its config the source's with the empty diff_id and
history entry first; the nydus one passes the same layout and nydusd-rule checks as a plain nydus conversion.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import subprocess

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.check import check_image
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import LayerError, NotFoundError
from acceleration_sdk.reference import parse
from drivers.nydus.media import FS_VERSION_ANNOTATION
from drivers.nydus.merge import (ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, EMPTY_LAYER_ANNOTATION, EMPTY_LAYER_DIFF_ID,
                                 SOURCE_DIGEST_ANNOTATION, SOURCE_REFERENCE_ANNOTATION)
from tests.drivers.nydus_oracle import three_layers
from tests.e2e.test_nydus_convert import check_nydus_image, client, download, fetch_json, make_cfg  # noqa: F401
from tests.support import tars
from tests.support.images import push_image, push_index, simple_tar

HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Empty Layer"}


def pull_child(client, repo: str, entry: dict) -> dict:
    manifest = fetch_json(client, parse(f"{repo}@{entry['digest']}"))
    raw = client.get_manifest(parse(f"{repo}@{entry['digest']}")).raw
    assert hashlib.sha256(raw).hexdigest() == entry["digest"].split(":")[1] and len(raw) == entry["size"]
    return manifest


def check_oci_entry(client, repo: str, entry: dict, src, *, docker: bool) -> dict:
    """The source image with acceld's empty layer first; every blob it names pulls from the target repository."""
    assert entry["mediaType"] == src.media_type and "artifactType" not in entry
    assert entry["platform"] == src.platform
    assert entry["annotations"] == {SOURCE_DIGEST_ANNOTATION: src.digest}
    manifest = pull_child(client, repo, entry)
    assert manifest["mediaType"] == src.media_type
    assert manifest["annotations"] == {SOURCE_DIGEST_ANNOTATION: src.digest}
    empty, *rest = manifest["layers"]
    assert rest == src.manifest["layers"]                                      # the source's layers, unchanged
    assert empty["mediaType"] == (oci.DOCKER_LAYER_GZIP if docker else oci.OCI_LAYER_GZIP)
    assert empty["annotations"] == {EMPTY_LAYER_ANNOTATION: "true"}
    blob = download(client, repo, empty["digest"], None)
    assert len(blob) == empty["size"] == 32 and hashlib.sha256(blob).hexdigest() == empty["digest"][7:]
    assert gzip.decompress(blob) == bytes(1024)                                # an empty tar: the end marker
    assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == EMPTY_LAYER_DIFF_ID
    for layer in rest:                                                         # mounted/copied: all pull
        data = download(client, repo, layer["digest"], None)
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
    assert manifest["config"]["mediaType"] == src.manifest["config"]["mediaType"]
    config = json.loads(download(client, repo, manifest["config"]["digest"], None))
    assert config["rootfs"]["diff_ids"] == [EMPTY_LAYER_DIFF_ID] + src.config["rootfs"]["diff_ids"]
    assert config["history"] == [HISTORY] + src.config["history"]
    assert {k: v for k, v in config.items() if k not in ("rootfs", "history")} == \
        {k: v for k, v in src.config.items() if k not in ("rootfs", "history")}
    return manifest


def check_nydus_entry(client, repo: str, entry: dict, src, tmp_path, *, docker: bool) -> dict:
    assert entry["artifactType"] == ARTIFACT_TYPE and entry["platform"] == src.platform
    manifest = pull_child(client, repo, entry)
    assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE                # containerd skips it
    # acceld's PostConvertHook annotations: where the nydus image came from, and its RAFS version
    annotations = manifest["annotations"]
    assert annotations[SOURCE_DIGEST_ANNOTATION] == src.digest
    assert annotations[SOURCE_REFERENCE_ANNOTATION] == f"{repo}:v1"            # every test converts :v1
    assert annotations[FS_VERSION_ANNOTATION] == "6"
    tmp_path.mkdir(exist_ok=True)
    check_nydus_image(client, repo, manifest, src.config, tmp_path, docker=docker)
    return manifest


def skopeo_pulls(ref: str, dest) -> list[str]:
    """A real client (Debian's skopeo) copies the whole index, every blob digest-checked; the files it wrote."""
    subprocess.run(["skopeo", "copy", "--all", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"dir:{dest}"],
                   check=True, capture_output=True, timeout=300)
    return sorted(p.name for p in dest.iterdir())


def image_bytes(manifest: dict) -> int:
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def test_single_manifest_becomes_an_index_of_the_oci_and_the_nydus_image(tmp_path, registry, client):
    repo = f"{registry.host}/merge/single"
    src = push_image(client, f"{repo}:v1", three_layers())
    mark = len(registry.log())
    result = convert(make_cfg(tmp_path / "work", merge_manifest=True), f"{repo}:v1")

    assert result.target == f"{repo}:v1-nydus"
    index = fetch_json(client, result.target)
    assert index["mediaType"] == oci.OCI_INDEX and len(index["manifests"]) == 2
    assert index["annotations"]["io.goharbor.artifact.v1alpha1.acceleration.driver.name"] == "nydus"
    first, second = index["manifests"]
    plain = check_oci_entry(client, repo, first, src, docker=False)           # first: runtimes without nydus
    nydus = check_nydus_entry(client, repo, second, src, tmp_path / "n", docker=False)
    assert len(nydus["layers"]) == 4                                           # three blobs + the bootstrap
    assert result.target_size == image_bytes(plain) + image_bytes(nydus)
    assert result.digest == "sha256:" + hashlib.sha256(client.get_manifest(parse(result.target)).raw).hexdigest()

    # children before parents, the tag last
    puts = [line for line in registry.log()[mark:].splitlines() if '"PUT ' in line and "/manifests/" in line]
    assert len(puts) == 4 and "/manifests/v1-nydus" in puts[-1]
    assert all("/manifests/sha256:" in line for line in puts[:-1])

    pulled = skopeo_pulls(result.target, tmp_path / "skopeo")
    for manifest in (plain, nydus):
        digests = [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]
        assert all(d.split(":")[1] in pulled for d in digests), pulled

    # the check and converter.verify understand the index: the nydus image checked, the plain one left
    checked = check_image(client, parse(result.target), tmp_dir=str(tmp_path), driver="nydus")
    assert checked.ok, checked.lines
    assert any(line.startswith("skip ") and first["digest"] in line for line in checked.lines)
    assert any(second["digest"] in line and line.startswith("check ") for line in checked.lines)

    # again: the layer cache serves every blob, and the very same index comes out
    events = []
    again = convert(make_cfg(tmp_path / "work", merge_manifest=True), f"{repo}:v1", progress=events.append)
    assert again.digest == result.digest
    assert [e.message for e in events if e.phase == "convert"].count("cached") == 3


@pytest.mark.parametrize("docker2oci", [True, False])
def test_multi_arch_docker_source(tmp_path, registry, client, docker2oci):
    repo = f"{registry.host}/merge/multi"
    amd = push_image(client, f"{repo}:amd", [simple_tar({"amd": b"64" * 3000})], platform=("linux", "amd64"),
                     tag=False, docker=True)
    arm = push_image(client, f"{repo}:arm", [simple_tar({"arm": b"64"}), simple_tar({"more": b"x"})],
                     platform=("linux", "arm64"), tag=False, docker=True)
    push_index(client, f"{repo}:v1", [amd, arm], attest=arm, docker=True)
    result = convert(make_cfg(tmp_path / "work", merge_manifest=True, docker2oci=docker2oci,
                              with_referrer=True), f"{repo}:v1")
    index = fetch_json(client, result.target)
    assert index["mediaType"] == oci.OCI_INDEX                                 # artifactType: never a Docker list
    plain_amd, plain_arm, nydus_amd, nydus_arm, att = index["manifests"]      # acceld: OCI ones, then nydus ones
    plain = [check_oci_entry(client, repo, e, s, docker=True) for e, s in ((plain_amd, amd), (plain_arm, arm))]
    nydus = [check_nydus_entry(client, repo, e, s, tmp_path / e["digest"][7:19], docker=not docker2oci)
             for e, s in ((nydus_amd, amd), (nydus_arm, arm))]
    for manifest, src in zip(nydus, (amd, arm)):
        assert manifest["mediaType"] == (oci.OCI_MANIFEST if docker2oci else oci.DOCKER_MANIFEST)
        if docker2oci:                                                         # with_referrer: the source
            assert manifest["subject"]["digest"] == src.digest
    assert att["annotations"][oci.ANNOTATION_REFERENCE_DIGEST] == plain_arm["digest"]
    assert result.target_size == sum(image_bytes(m) for m in plain + nydus)
    checked = check_image(client, parse(result.target), tmp_dir=str(tmp_path))  # no driver named: recognised
    assert checked.ok, checked.lines
    assert sum(line.startswith("skip ") for line in checked.lines) == 2


def test_converter_platforms_filter_both_entries(tmp_path, registry, client):
    repo = f"{registry.host}/merge/platforms"
    amd = push_image(client, f"{repo}:amd", [simple_tar({"a": b"1"})], platform=("linux", "amd64"), tag=False)
    arm = push_image(client, f"{repo}:arm", [simple_tar({"b": b"2"})], platform=("linux", "arm64"), tag=False)
    push_index(client, f"{repo}:v1", [amd, arm])
    cfg = config_mod.from_dict({"provider": {"work_dir": str(tmp_path / "work")},
                                "converter": {"platforms": "linux/arm64", "driver": {"type": "nydus", "config": {
                                    "fs_chunk_size": "0x1000", "merge_manifest": True}}}})
    result = convert(cfg, f"{repo}:v1")
    index = fetch_json(client, result.target)
    assert [(e["platform"]["architecture"], e.get("artifactType", "")) for e in index["manifests"]] == [
        ("arm64", ""), ("arm64", ARTIFACT_TYPE)]


def test_a_broken_layer_pushes_no_manifest_and_no_tag(tmp_path, registry, client):
    repo = f"{registry.host}/merge/broken"
    bad = tars.truncated(tars.build_tar([tars.reg("big", tars.payload(40_000, "t"))]), 20_000)
    push_image(client, f"{repo}:v1", [simple_tar({"ok": b"fine"}), bad])
    mark = len(registry.log())
    with pytest.raises(LayerError):
        convert(make_cfg(tmp_path / "work", merge_manifest=True), f"{repo}:v1")
    puts = [line for line in registry.log()[mark:].splitlines() if '"PUT ' in line]
    assert not any("/manifests/" in line for line in puts), puts
    with pytest.raises(NotFoundError):
        client.get_manifest(parse(f"{repo}:v1-nydus"))


def test_converter_verify_passes_a_merged_index(tmp_path, registry, client):
    """converter.verify checks the pushed index by digest before the tag: the nydus entries are checked."""
    repo = f"{registry.host}/merge/verify"
    push_image(client, f"{repo}:v1", [simple_tar({"etc/motd": b"hi\n"})])
    cfg = config_mod.from_dict({"provider": {"work_dir": str(tmp_path / "work")},
                                "converter": {"verify": True, "driver": {"type": "nydus", "config": {
                                    "fs_chunk_size": "0x1000", "merge_manifest": "true"}}}})
    result = convert(cfg, f"{repo}:v1")
    assert fetch_json(client, result.target)["manifests"][1]["artifactType"] == ARTIFACT_TYPE
