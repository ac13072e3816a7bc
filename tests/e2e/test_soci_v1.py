"""``index_version: v1``: the legacy SOCI index, a referrer of each source image manifest, against the real
registry (Debian's distribution 2.8: no referrers API, so the referrers tag ``sha256-<hex>`` lists it).

Upstream's ``soci-verify`` does not discover a v1 index itself (it follows the v2 binding); given the index
digest with ``-index`` it reads a v1 index with upstream's own code (config type v1, ``subject`` = the image
manifest, every ztoc and every file through the span manager). The tests discover the index the way the
snapshotter's oras client does -- the referrers tag -- and hand it to ``soci-verify``; ``accelctl check``
(check_image) discovers it itself.
"""
from __future__ import annotations

import dataclasses
import io
import json

import pytest
import requests

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.check import check_image
from acceleration_sdk.engine import convert, skip_reason
from acceleration_sdk.errors import ConversionError, DriverError
from acceleration_sdk.reference import parse
from acceleration_sdk.referrers import is_referrers_tag, referrers_tag
from acceleration_sdk.registry import RegistryClient
from acceleration_sdk.session import HARBOR_DRIVER_NAME
from drivers.soci import layout
from drivers.soci.driver import SociDriver
from tests.e2e.test_check_soci import FakeWrongSpanDriver
from tests.e2e.test_soci_convert import big_tar, client  # noqa: F401 - client is a fixture
from tests.support import soci_tools
from tests.support.images import push_image, push_index, sha, simple_tar

SPAN = 1 << 16
MIN = 100_000


def make_cfg(work, verify: bool = False, platforms: str = "", **opts):
    converter = {"verify": verify, "driver": {"type": "soci", "config": {
        "span_size": SPAN, "min_layer_size": MIN, "index_version": "v1", **opts}}}
    if platforms:
        converter["platforms"] = platforms
    return config_mod.from_dict({"provider": {"work_dir": str(work)}, "converter": converter})


def get_json(client, ref: str):
    return json.loads(client.get_manifest(parse(ref)).raw)


def referrers_index(client, repo: str, subject: str) -> dict | None:
    found = client.head_manifest(parse(f"{repo}:{referrers_tag(subject)}"))
    return get_json(client, f"{repo}:{referrers_tag(subject)}") if found else None


def verify_v1(ref: str, index_digest: str, *args: str) -> None:
    proc = soci_tools.soci_verify(ref, "-strict", "-index", index_digest, *args)
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_v1_index_is_a_referrer_of_the_image_and_passes_soci_verify(tmp_path, registry, client):
    repo = f"{registry.host}/sociv1/app"
    src = push_image(client, f"{repo}:1", [big_tar(1), simple_tar({"etc/small": b"x"})])
    # the fact the fallback rests on: this registry has no referrers API
    assert requests.get(f"{registry.url}/v2/sociv1/app/referrers/{src.digest}", timeout=10).status_code == 404
    result = convert(make_cfg(tmp_path / "w"), f"{repo}:1")
    # no new tag: the target is the source image itself, pinned by digest, which is unchanged
    assert (result.target, result.digest) == (f"{repo}@{src.digest}", src.digest)
    assert client.head_manifest(parse(f"{repo}:1-soci")) is None
    assert client.head_manifest(parse(f"{repo}:1")).digest == src.digest

    listed = referrers_index(client, repo, src.digest)
    assert listed["mediaType"] == oci.OCI_INDEX and len(listed["manifests"]) == 1
    entry = listed["manifests"][0]
    assert entry["mediaType"] == oci.OCI_MANIFEST and entry["artifactType"] == layout.SOCI_INDEX_V1
    assert entry["annotations"][layout.ANN_BUILD_TOOL] == "AWS SOCI CLI v0.2"
    assert entry["annotations"][HARBOR_DRIVER_NAME] == "soci"
    index = get_json(client, f"{repo}@{entry['digest']}")
    assert index["config"] == {"mediaType": layout.SOCI_INDEX_V1, "digest": sha(b"{}"), "size": 2}
    assert index["subject"] == {"mediaType": oci.OCI_MANIFEST, "digest": src.digest, "size": src.size}
    assert "artifactType" not in index  # upstream's MarshalIndex writes none
    assert entry["annotations"] == index["annotations"] and entry["size"] == len(
        client.get_manifest(parse(f"{repo}@{entry['digest']}")).raw)
    assert [x["annotations"][layout.ANN_LAYER_DIGEST] for x in index["layers"]] == [src.manifest["layers"][0]["digest"]]

    verify_v1(f"{repo}@{src.digest}", entry["digest"])
    # as accelctl check does: nothing in the manifest names the format, the config's driver is the fallback
    checked = check_image(client, parse(f"{repo}:1"), tmp_dir=str(tmp_path), fallback="soci")
    assert checked.ok, checked.lines


def test_a_second_conversion_replaces_ours_and_keeps_other_referrers(tmp_path, registry, client):
    repo = f"{registry.host}/sociv1/again"
    src = push_image(client, f"{repo}:1", [big_tar(2)])
    # someone else's referrer of the same image (a signature-like artifact), listed before ours
    empty = b"{}"
    client.push_blob(parse(repo), sha(empty), 2, io.BytesIO(empty))
    other = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
             "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(empty), "size": 2},
             "layers": [], "subject": {"mediaType": oci.OCI_MANIFEST, "digest": src.digest, "size": src.size}}
    other_raw = json.dumps(other).encode()
    client.put_manifest(parse(repo).with_digest(sha(other_raw)), other_raw, oci.OCI_MANIFEST)
    first = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        {"mediaType": oci.OCI_MANIFEST, "digest": sha(other_raw), "size": len(other_raw),
         "artifactType": "application/vnd.example.sig"}]}
    first_raw = json.dumps(first).encode()
    client.put_manifest(parse(f"{repo}:{referrers_tag(src.digest)}"), first_raw, oci.OCI_INDEX)

    convert(make_cfg(tmp_path / "w"), f"{repo}:1")
    old = referrers_index(client, repo, src.digest)["manifests"]
    assert [e.get("artifactType") for e in old] == ["application/vnd.example.sig", layout.SOCI_INDEX_V1]
    convert(make_cfg(tmp_path / "w"), f"{repo}:1")  # the same output: nothing changes
    assert referrers_index(client, repo, src.digest)["manifests"] == old
    convert(make_cfg(tmp_path / "w", span_size=SPAN * 2), f"{repo}:1")  # another span size: replaces ours
    new = referrers_index(client, repo, src.digest)["manifests"]
    assert new[0] == old[0] and len(new) == 2
    assert new[1]["artifactType"] == layout.SOCI_INDEX_V1 and new[1]["digest"] != old[1]["digest"]
    index = get_json(client, f"{repo}@{new[1]['digest']}")
    assert index["layers"][0]["annotations"][layout.ANN_SPAN_SIZE] == str(SPAN * 2)
    verify_v1(f"{repo}@{src.digest}", new[1]["digest"])


def test_multi_arch_gets_one_v1_index_per_platform(tmp_path, registry, client):
    repo = f"{registry.host}/sociv1/multi"
    amd = push_image(client, f"{repo}:amd", [big_tar(3)], platform=("linux", "amd64"), tag=False)
    arm = push_image(client, f"{repo}:arm", [big_tar(4)], platform=("linux", "arm64"), tag=False, docker=True)
    push_index(client, f"{repo}:1", [amd, arm], attest=amd)
    root = client.head_manifest(parse(f"{repo}:1")).digest
    result = convert(make_cfg(tmp_path / "w"), f"{repo}:1")
    assert result.target == f"{repo}@{root}"
    assert client.head_manifest(parse(f"{repo}:1")).digest == root  # the index is not rewritten
    for image, arch in ((amd, "amd64"), (arm, "arm64")):
        entries = referrers_index(client, repo, image.digest)["manifests"]
        assert len(entries) == 1 and entries[0]["artifactType"] == layout.SOCI_INDEX_V1
        index = get_json(client, f"{repo}@{entries[0]['digest']}")
        assert index["subject"] == {"mediaType": image.media_type, "digest": image.digest, "size": image.size}
        verify_v1(f"{repo}:1", entries[0]["digest"], "-platform", f"linux/{arch}")
    checked = check_image(client, parse(f"{repo}:1"), tmp_dir=str(tmp_path), driver="soci")
    assert checked.ok, checked.lines


def test_platforms_filter_indexes_only_the_selected_platform_and_verifies_it(tmp_path, registry, client):
    repo = f"{registry.host}/sociv1/filtered"
    amd = push_image(client, f"{repo}:amd", [big_tar(7)], platform=("linux", "amd64"), tag=False)
    arm = push_image(client, f"{repo}:arm", [big_tar(8)], platform=("linux", "arm64"), tag=False)
    push_index(client, f"{repo}:1", [amd, arm])
    convert(make_cfg(tmp_path / "w", verify=True, platforms="linux/arm64"), f"{repo}:1")
    assert referrers_index(client, repo, amd.digest) is None
    entries = referrers_index(client, repo, arm.digest)["manifests"]
    verify_v1(f"{repo}:1", entries[0]["digest"], "-platform", "linux/arm64")


def test_a_failed_verify_changes_no_referrers_tag(tmp_path, registry, client):
    """converter.verify checks the pushed v1 index before any tag moves: a wrong ztoc FAILs the conversion and
    the referrers tag keeps what it listed (here: nothing, then the good index of an earlier conversion)."""
    repo = f"{registry.host}/sociv1/verify"
    src = push_image(client, f"{repo}:1", [big_tar(5)])
    cfg = make_cfg(tmp_path / "w", verify=True)
    bad = FakeWrongSpanDriver(dict(cfg.converter.driver.config))
    with pytest.raises(ConversionError) as info:
        convert(cfg, f"{repo}:1", driver=bad)
    assert f"span 0 digest is {sha(b'wrong')}" in str(info.value)
    assert "no referrers tag written" in str(info.value)
    assert referrers_index(client, repo, src.digest) is None
    # a good one verifies and is listed (another work dir: the fake's ztoc sits in the first one's layer cache)
    convert(make_cfg(tmp_path / "w1", verify=True), f"{repo}:1")
    good = referrers_index(client, repo, src.digest)
    bad_cfg = make_cfg(tmp_path / "w2", verify=True, span_size=SPAN * 4)
    with pytest.raises(ConversionError):
        convert(bad_cfg, f"{repo}:1", driver=FakeWrongSpanDriver(dict(bad_cfg.converter.driver.config)))
    assert referrers_index(client, repo, src.digest) == good


def test_v1_into_another_repository_is_refused(tmp_path, registry, client):
    repo = f"{registry.host}/sociv1/here"
    push_image(client, f"{repo}:1", [big_tar(6)])
    mark = len(registry.log())
    with pytest.raises(ConversionError) as info:
        convert(make_cfg(tmp_path / "w"), f"{repo}:1", target=f"{registry.host}/sociv1/elsewhere:1")
    assert "is not in" in str(info.value) and "its own repository" in str(info.value)
    puts = [line for line in registry.log()[mark:].splitlines() if '"PUT /v2/sociv1/elsewhere/manifests' in line]
    assert puts == []


def test_referrers_tags_are_not_converted():
    cfg = make_cfg("/tmp/unused")
    tag = referrers_tag("sha256:" + "ab" * 32)
    assert tag == "sha256-" + "ab" * 32 and is_referrers_tag(tag)
    assert not is_referrers_tag("v1.2-3") and not is_referrers_tag("sha256-abc")
    assert "referrers tag" in skip_reason(cfg, parse(f"127.0.0.1:5000/app:{tag}"))


def test_check_fails_a_v1_index_of_another_image_and_an_image_without_one(tmp_path, registry, client):
    repo = f"{registry.host}/sociv1/check"
    a = push_image(client, f"{repo}:a", [big_tar(9)])
    b = push_image(client, f"{repo}:b", [big_tar(10)])
    checked = check_image(client, parse(f"{repo}:b"), tmp_dir=str(tmp_path), fallback="soci")
    assert not checked.ok and "not a SOCI image" in checked.verdict, checked.lines
    convert(make_cfg(tmp_path / "w"), f"{repo}:a")
    # b's referrers tag lists a's index (a registry or a tool mixed them up): the subject gives it away
    client.put_manifest(parse(f"{repo}:{referrers_tag(b.digest)}"),
                        client.get_manifest(parse(f"{repo}:{referrers_tag(a.digest)}")).raw, oci.OCI_INDEX)
    checked = check_image(client, parse(f"{repo}:b"), tmp_dir=str(tmp_path), fallback="soci")
    assert not checked.ok and f"has subject '{a.digest}', not this image manifest" in checked.verdict, checked.lines


class FakeReferrersAPIClient(RegistryClient):
    """A fake: the real client, but ``referrers()`` answers as a registry with the OCI referrers API would (no
    such registry runs here: Debian's distribution 2.8 has none), listing the v1 SOCI indexes it was told of."""

    def __init__(self):
        super().__init__()
        self.listed: dict[str, list] = {}

    def referrers(self, ref, subject):
        return list(self.listed.get(subject, []))


def test_with_a_referrers_api_no_referrers_tag_is_written(tmp_path, registry):
    repo = f"{registry.host}/sociv1/api"
    with FakeReferrersAPIClient() as client:
        src = push_image(client, f"{repo}:1", [big_tar(11)])
        result = convert(make_cfg(tmp_path / "w"), f"{repo}:1", client=client)
        assert result.target == f"{repo}@{src.digest}"
        assert referrers_index(client, repo, src.digest) is None  # the registry's API lists it, not a tag
        # what the API would now list: our index, found by check through the API
        soci = [line for line in registry.log().splitlines() if '"PUT /v2/sociv1/api/manifests/sha256:' in line]
        assert len(soci) == 1
        digest = soci[0].split("/manifests/")[1].split(" ")[0]
        index = get_json(client, f"{repo}@{digest}")
        assert index["subject"]["digest"] == src.digest
        client.listed[src.digest] = [oci.Descriptor(oci.OCI_MANIFEST, digest, len(client.get_manifest(
            parse(f"{repo}@{digest}")).raw), artifact_type=layout.SOCI_INDEX_V1)]
        checked = check_image(client, parse(f"{repo}:1"), tmp_dir=str(tmp_path), fallback="soci")
        assert checked.ok, checked.lines


def test_accelctl_convert_and_check_a_v1_image(tmp_path, registry, client):
    """accelctl convert prints the source image pinned by digest (with --digest too: it already is), and
    accelctl check with the same config finds the index through the referrers tag."""
    import subprocess
    import sys

    repo = f"{registry.host}/sociv1/cli"
    src = push_image(client, f"{repo}:1", [big_tar(12)])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"provider: {{work_dir: {tmp_path / 'work'}}}\nconverter: {{driver: {{type: soci, config: "
                   f"{{span_size: {SPAN}, min_layer_size: {MIN}, index_version: v1}}}}}}\n")

    def accelctl(*args):
        return subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", *args, "--config", str(cfg)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)

    out = accelctl("convert", "--digest", f"{repo}:1")
    assert (out.returncode, out.stdout) == (0, f"{repo}@{src.digest}\n"), out.stderr
    out = accelctl("check", f"{repo}:1")
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1].startswith("PASS"), out.stdout + out.stderr


class FakeUnlistedPlanDriver(SociDriver):
    """A fake: the real soci driver whose push plan names its tag or referrers without listing them among the
    manifests to push, as a third-party driver might read PushPlan's fields."""

    def convert(self, content, source):
        from acceleration_sdk.push import PushPlan

        out = super().convert(content, source)
        if isinstance(out, PushPlan):                 # v1: the referrers only
            return dataclasses.replace(out, manifests=())
        return PushPlan(manifests=(), tag=out)        # v2: the tag only


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_push_plan_whose_tag_or_referrers_are_not_among_its_manifests_pushes_nothing(tmp_path, registry, client,
                                                                                         version):
    """Only the manifests a plan lists are pushed with their children before any tag moves: a tag or referrer
    outside them is a DriverError before the first manifest is pushed, not a registry's refusal halfway."""
    repo = f"{registry.host}/sociv1/unlisted"
    push_image(client, f"{repo}:{version}", [big_tar(7)])
    cfg = make_cfg(tmp_path / "w", index_version=version)
    mark = len(registry.log())
    with pytest.raises(DriverError, match="not among its manifests"):
        convert(cfg, f"{repo}:{version}", driver=FakeUnlistedPlanDriver(dict(cfg.converter.driver.config)))
    assert "/manifests/" not in "".join(line for line in registry.log()[mark:].splitlines(keepends=True)
                                        if '"PUT ' in line)
