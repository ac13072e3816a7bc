"""``oci_ref: true`` with ``merge_manifest: true`` end to end against the real registry: one tag, an OCI index
holding per platform the source image with acceld's empty layer first and the OCI-ref (zran) nydus image marked
with its artifactType.

The zran image reads its chunks from the *source gzip layers*, which its manifest does not list: they must be
in the target repository (the plain entry lists them too, so a runtime without nydus pulls the same blobs).
Both entries are pulled back; the nydus one passes the OCI-ref layout checks of test_nydus_zran_convert (every
chunk decoded from the gzip layer read back from the target repository), and ``accelctl check`` /
``converter.verify`` read it there.
"""
from __future__ import annotations

import json

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.check import check_image
from acceleration_sdk.engine import convert
from acceleration_sdk.reference import parse
from drivers.nydus.merge import ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, SOURCE_DIGEST_ANNOTATION
from drivers.nydus.refblob import REF_ANNOTATION
from tests.drivers.nydus_oracle import three_layers
from tests.e2e.test_nydus_merge import check_oci_entry, pull_child
from tests.e2e.test_nydus_zran_convert import check_ref_image, client  # noqa: F401  (the fixture)
from tests.support.images import push_image, push_index, simple_tar


def zran_merge_cfg(work_dir, *, verify: bool = False, **opts):
    return config_mod.from_dict({"provider": {"work_dir": str(work_dir)},
                                 "converter": {"verify": verify, "driver": {"type": "nydus", "config": {
                                     "oci_ref": True, "merge_manifest": True, "fs_chunk_size": "0x1000", **opts}},
                                     "rules": [{"tag_suffix": "-zran"}]}})


def check_zran_entry(client, repo: str, entry: dict, src, tmp_path) -> dict:
    """The OCI-ref nydus image of one platform, its gzip layers read from ``repo``."""
    assert entry["artifactType"] == ARTIFACT_TYPE and entry["platform"] == src.platform
    manifest = pull_child(client, repo, entry)
    assert manifest["mediaType"] == oci.OCI_MANIFEST                          # oci_ref forces OCI
    assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE                # containerd skips it
    assert manifest["annotations"][SOURCE_DIGEST_ANNOTATION] == src.digest
    *zran, _boot = manifest["layers"]
    assert [layer["annotations"][REF_ANNOTATION] for layer in zran] == [d["digest"] for d in src.manifest["layers"]]
    tmp_path.mkdir(exist_ok=True)
    check_ref_image(client, repo, manifest, src.manifest, tmp_path)            # every chunk from the gzip layers
    return manifest


def test_a_merged_index_holds_the_source_and_its_oci_ref_image(tmp_path, registry, client):
    repo = f"{registry.host}/zranmerge/single"
    src = push_image(client, f"{repo}:v1", three_layers())
    result = convert(zran_merge_cfg(tmp_path / "work"), f"{repo}:v1")
    assert result.target == f"{repo}:v1-zran"
    index = json.loads(client.get_manifest(parse(result.target)).raw)
    assert index["mediaType"] == oci.OCI_INDEX and len(index["manifests"]) == 2
    plain, nydus = index["manifests"]
    check_oci_entry(client, repo, plain, src, docker=False)
    check_zran_entry(client, repo, nydus, src, tmp_path / "n")
    checked = check_image(client, parse(result.target), tmp_dir=str(tmp_path), source=parse(f"{repo}:v1"))
    assert checked.ok, checked.lines
    assert sum("same as source layer" in line for line in checked.lines) == 3   # the zran image, from its gzip
    assert any(line.startswith("skip ") and plain["digest"] in line for line in checked.lines)


def test_a_multi_arch_docker_source_into_another_repository(tmp_path, registry, client):
    """A route's target repository: the gzip layers reach it (mounted) with the plain entries and as the zran
    images' referenced blobs; the plain entries stay Docker (the source's), the nydus ones are OCI."""
    repo, other = f"{registry.host}/zranmerge/origin", f"{registry.host}/zranmerge/elsewhere"
    amd = push_image(client, f"{repo}:amd", [simple_tar({"amd": b"64" * 3000})], platform=("linux", "amd64"),
                     tag=False, docker=True)
    arm = push_image(client, f"{repo}:arm", [simple_tar({"arm": b"64" * 500}), simple_tar({"more": b"x" * 9000})],
                     platform=("linux", "arm64"), tag=False, docker=True)
    push_index(client, f"{repo}:v1", [amd, arm], docker=True)
    result = convert(zran_merge_cfg(tmp_path / "work"), f"{repo}:v1", target=f"{other}:v1-zran")
    index = json.loads(client.get_manifest(parse(result.target)).raw)
    assert index["mediaType"] == oci.OCI_INDEX
    plain_amd, plain_arm, nydus_amd, nydus_arm = index["manifests"]
    for entry, src in ((plain_amd, amd), (plain_arm, arm)):
        check_oci_entry(client, other, entry, src, docker=True)                # every blob pulls from `other`
    for entry, src in ((nydus_amd, amd), (nydus_arm, arm)):
        check_zran_entry(client, other, entry, src, tmp_path / entry["digest"][7:19])
    checked = check_image(client, parse(result.target), tmp_dir=str(tmp_path))  # no driver named: recognised
    assert checked.ok, checked.lines
    assert sum(line.startswith("skip ") for line in checked.lines) == 2


def test_converter_verify_reads_the_zran_entries_before_the_tag(tmp_path, registry, client):
    """converter.verify checks the pushed index by digest: the zran entry's gzip layers are fetched from the
    target repository and every chunk decoded, before the tag is written."""
    repo = f"{registry.host}/zranmerge/verify"
    src = push_image(client, f"{repo}:v1", three_layers())
    mark = len(registry.log())
    result = convert(zran_merge_cfg(tmp_path / "work", verify=True), f"{repo}:v1")
    log = registry.log()[mark:].splitlines()
    puts = [i for i, line in enumerate(log) if '"PUT ' in line and "/manifests/" in line]
    assert "/manifests/v1-zran" in log[puts[-1]] and all("/manifests/sha256:" in log[i] for i in puts[:-1])
    # between the manifests pushed by digest and the tag: the check read each gzip layer from the repository
    fetched = {d["digest"] for d in src.manifest["layers"] for line in log[puts[-2]:puts[-1]]
               if '"GET ' in line and f"/blobs/{d['digest']}" in line}
    assert len(fetched) == 3, log[puts[-2]:puts[-1]]
    index = json.loads(client.get_manifest(parse(result.target)).raw)
    check_zran_entry(client, repo, index["manifests"][1], src, tmp_path / "n")
