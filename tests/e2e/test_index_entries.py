"""``LayerDriver.index_entries``: what the engine does with the manifests a driver puts beside the converted one,
against a real registry on loopback, with test drivers that run inside the real engine (nydus's
``merge_manifest`` is the built-in user: tests/e2e/test_nydus_merge.py).

* the index is ordered by rank (every platform's first entry, then every second), attestations follow the first;
* a single-manifest source with more than one entry becomes an OCI index, platforms filled from the config;
* sizes are counted over every entry;
* a hook that fails, or returns a manifest it never stored, fails the conversion: no manifest, no tag.
"""
from __future__ import annotations

import json

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.driver import LayerDriver
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import DriverError, NotFoundError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support.images import push_image, push_index, simple_tar

MARK = "application/x.acceld-test.beside+json"


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def make_cfg(tmp_path):
    return config_mod.from_dict({"provider": {"work_dir": str(tmp_path / "work")},
                                 "converter": {"driver": {"type": "estargz"}, "rules": [{"tag_suffix": "-t"}]}})


class _Unchanged(LayerDriver):
    """A test driver (not a fake: the real engine runs it) that keeps every layer as it is."""

    def name(self) -> str:
        return "test-" + type(self).__name__.lower()

    def version(self) -> str:
        return "1"

    def convert_layer(self, content, desc):
        return None


class Beside(_Unchanged):
    """Puts a copy of the converted manifest (one annotation more) beside it, marked with an artifactType."""

    seen: list = []

    def index_entries(self, content, source, converted):
        Beside.seen.append((source.descriptor.platform, source.config["architecture"], converted.platform))
        manifest = json.loads(content.store.read_bytes(converted.digest))
        manifest["annotations"] = {"beside": source.descriptor.digest}
        extra = content.put_json(manifest)
        return [converted, converted.replace(digest=extra.digest, size=extra.size, artifact_type=MARK)]


class Unstored(_Unchanged):
    def index_entries(self, content, source, converted):
        return [converted, converted.replace(digest="sha256:" + "0" * 64)]


class Refuses(_Unchanged):
    def index_entries(self, content, source, converted):
        raise DriverError("this platform cannot be merged")


def manifest_bytes(client, repo: str, digest: str) -> int:
    m = json.loads(client.get_manifest(parse(f"{repo}@{digest}")).raw)
    return m["config"]["size"] + sum(layer["size"] for layer in m["layers"])


def test_entries_are_ordered_by_rank_and_attestations_follow_the_first(tmp_path, registry, client):
    repo = f"{registry.host}/entries/multi"
    amd = push_image(client, f"{repo}:amd", [simple_tar({"a": b"1"})], platform=("linux", "amd64"), tag=False)
    arm = push_image(client, f"{repo}:arm", [simple_tar({"b": b"2"})], platform=("linux", "arm64"), tag=False)
    push_index(client, f"{repo}:v1", [amd, arm], attest=arm, docker=True)   # a Docker list: artifactType -> OCI
    Beside.seen = []
    result = convert(make_cfg(tmp_path), f"{repo}:v1", driver=Beside())
    index = json.loads(client.get_manifest(parse(result.target)).raw)
    assert index["mediaType"] == oci.OCI_INDEX
    c_amd, c_arm, x_amd, x_arm, att = index["manifests"]
    assert [e["platform"]["architecture"] for e in (c_amd, c_arm, x_amd, x_arm)] == ["amd64", "arm64"] * 2
    assert [e.get("artifactType", "") for e in (c_amd, c_arm, x_amd, x_arm)] == ["", "", MARK, MARK]
    assert att["annotations"][oci.ANNOTATION_REFERENCE_DIGEST] == c_arm["digest"]
    for extra, src in ((x_amd, amd), (x_arm, arm)):                         # pushed by digest, pullable
        assert json.loads(client.get_manifest(parse(f"{repo}@{extra['digest']}")).raw)["annotations"] == {
            "beside": src.digest}
    assert result.target_size == sum(manifest_bytes(client, repo, e["digest"]) for e in (c_amd, c_arm, x_amd, x_arm))
    assert [s[1] for s in Beside.seen] == ["amd64", "arm64"]


def test_a_single_manifest_with_two_entries_becomes_an_oci_index(tmp_path, registry, client):
    repo = f"{registry.host}/entries/single"
    push_image(client, f"{repo}:v1", [simple_tar({"a": b"1"})], platform=("linux", "arm64"))
    Beside.seen = []
    result = convert(make_cfg(tmp_path), f"{repo}:v1", driver=Beside())
    fetched = client.get_manifest(parse(result.target))
    assert fetched.media_type == oci.OCI_INDEX and fetched.digest == result.digest
    entries = json.loads(fetched.raw)["manifests"]
    assert [(e["platform"], e.get("artifactType", "")) for e in entries] == [
        ({"architecture": "arm64", "os": "linux"}, ""), ({"architecture": "arm64", "os": "linux"}, MARK)]
    platform = {"architecture": "arm64", "os": "linux"}                      # from the config, for the hook too
    assert Beside.seen == [(platform, "arm64", platform)]


def test_a_single_manifest_with_one_entry_stays_a_manifest(tmp_path, registry, client):
    repo = f"{registry.host}/entries/plain"
    src = push_image(client, f"{repo}:v1", [simple_tar({"a": b"1"})])
    result = convert(make_cfg(tmp_path), f"{repo}:v1", driver=_Unchanged())
    fetched = client.get_manifest(parse(result.target))
    assert fetched.media_type == oci.OCI_MANIFEST
    assert json.loads(fetched.raw)["layers"] == src.manifest["layers"]


@pytest.mark.parametrize("driver, words", [(Unstored(), "not in the content store"),
                                           (Refuses(), "cannot be merged")])
def test_a_failing_hook_pushes_no_manifest_and_no_tag(tmp_path, registry, client, driver, words):
    repo = f"{registry.host}/entries/{driver.name()}"
    push_image(client, f"{repo}:v1", [simple_tar({"a": b"1"})])
    mark = len(registry.log())
    with pytest.raises(DriverError, match=words):
        convert(make_cfg(tmp_path), f"{repo}:v1", driver=driver)
    puts = [line for line in registry.log()[mark:].splitlines() if '"PUT ' in line and "/manifests/" in line]
    assert puts == []
    with pytest.raises(NotFoundError):
        client.get_manifest(parse(f"{repo}:v1-t"))
