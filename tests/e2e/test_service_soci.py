"""The service with the soci driver: Harbor-shaped webhooks -> gunicorn -> a real qcluster -> the engine with
the soci driver -> a real registry, and upstream's soci-verify on the result.

Bad input -- a layer that is not gzip or not tar where its media type says so, a truncated layer, a gzip with
trailing garbage -- FAILs the task with a reason naming the layer and what to do; nothing is pushed (no target
tag, no referrers tag, no manifest PUT) and no traceback reaches the logs. With ``index_version: v1`` the task
records the source image by digest as its target and the SOCI index is listed under the referrers tag."""
from __future__ import annotations

import gzip
import json
import random

import pytest

from acceleration_sdk import oci
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from acceleration_sdk.referrers import referrers_tag
from drivers.soci import layout
from tests.service.stack import ServiceStack, manifest_exists
from tests.support import soci_tools
from tests.support.images import push_image, simple_tar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from tests.support.registry import RegistryServer
    reg = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def stack(registry, tmp_path_factory):
    soci = {"driver": {"type": "soci", "config": {"span_size": 65536, "min_layer_size": 100000,
                                                  "optimizations": ["xattr"]}},
            "rules": [{"tag_suffix": "-soci"}]}
    s = ServiceStack(tmp_path_factory.mktemp("stack"), registry.host, converter=soci).start()
    yield s
    s.stop()


def _big_tar() -> bytes:
    rnd = random.Random(1)
    return simple_tar({f"usr/lib/f{i}": rnd.randbytes(40_000) for i in range(10)})


def test_a_pushed_image_converts_to_soci_through_the_service(stack, registry):
    repo = f"{registry.host}/library/app"
    with RegistryClient() as client:
        push_image(client, f"{repo}:1", [_big_tar(), simple_tar({"etc/app.conf": b"x=1\n"})])
    resp = stack.post(f"{repo}:1", sync=True)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack.logs()
    task = next(t for t in stack.tasks() if t["source"] == f"{repo}:1")
    assert task["status"] == "COMPLETED" and task["reason"] == "", task
    assert task["target"] == f"{repo}:1-soci" and task["driver"] == "soci"
    proc = soci_tools.soci_verify(f"{repo}:1-soci", "-strict")
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]


def _bad_layer(case: str) -> tuple[bytes, str]:
    """A blob and the media type it claims."""
    tar = _big_tar()
    good = gzip.compress(tar, mtime=0)
    noise = random.Random(2).randbytes(400_000)
    return {"not-gzip": (tar, oci.OCI_LAYER_GZIP),  # a plain tar called gzip
            "gzip-not-tar": (gzip.compress(noise, mtime=0), oci.OCI_LAYER_GZIP),  # gzip, but not of a tar
            "not-tar": (noise, oci.OCI_LAYER),  # random bytes called an uncompressed tar
            "truncated-gzip": (good[:len(good) // 2], oci.OCI_LAYER_GZIP),
            "truncated-tar": (tar[:len(tar) // 2 + 100], oci.OCI_LAYER),
            "trailing-garbage": (good + b"GARBAGE!" * 64, oci.OCI_LAYER_GZIP)}[case]


@pytest.mark.parametrize("case, words", [
    ("not-gzip", "not a valid gzip stream"),
    ("gzip-not-tar", "not a tar stream"),
    ("not-tar", "not a tar stream"),
    ("truncated-gzip", "truncated gzip stream"),
    ("truncated-tar", "tar stream truncated"),
    ("trailing-garbage", "not a valid gzip stream"),
])
def test_a_bad_layer_fails_the_task_with_its_reason_and_nothing_is_pushed(stack, registry, case, words):
    repo = f"{registry.host}/bad/{case}"
    blob, media_type = _bad_layer(case)
    with RegistryClient() as client:
        src = push_image(client, f"{repo}:1", [blob], compression="")  # pushed as it is ...
        manifest = dict(src.manifest, layers=[dict(src.manifest["layers"][0], mediaType=media_type)])  # ... typed
        raw = json.dumps(manifest).encode()
        client.put_manifest(parse(f"{repo}:1"), raw, oci.OCI_MANIFEST)
    layer = manifest["layers"][0]["digest"]
    mark = len(registry.log())
    resp = stack.post(f"{repo}:1", sync=True)
    assert resp.status_code == 500 and resp.json()["code"] == "ERR_CONVERT_FAILED", resp.content
    task = next(t for t in stack.tasks() if t["source"] == f"{repo}:1")
    assert task["status"] == "FAILED", task
    reason = task["reason"]
    assert layer in reason and media_type in reason and words in reason, reason
    assert "push the image again with an intact layer" in reason  # what to do about it
    assert "Traceback" not in reason and "Traceback" not in stack.logs(tail=200_000)
    assert not manifest_exists(registry.host, f"bad/{case}:1-soci")
    assert not manifest_exists(registry.host, f"bad/{case}:{referrers_tag(oci.sha256_digest(raw))}")
    puts = [line for line in registry.log()[mark:].splitlines() if '"PUT ' in line and "/manifests/" in line]
    assert puts == []


@pytest.fixture(scope="module")
def stack_v1(registry, tmp_path_factory):
    soci = {"driver": {"type": "soci", "config": {"span_size": 65536, "min_layer_size": 100000,
                                                  "index_version": "v1"}},
            "rules": [{"tag_suffix": "-soci"}]}
    s = ServiceStack(tmp_path_factory.mktemp("stack-v1"), registry.host, converter=soci).start()
    yield s
    s.stop()


def test_v1_through_the_service_records_the_source_image_as_target(stack_v1, registry):
    repo = f"{registry.host}/v1/app"
    with RegistryClient() as client:
        src = push_image(client, f"{repo}:1", [_big_tar()])
    resp = stack_v1.post(f"{repo}:1", sync=True)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack_v1.logs()
    task = next(t for t in stack_v1.tasks() if t["source"] == f"{repo}:1")
    assert task["status"] == "COMPLETED" and not task["skipped"], task
    assert task["target"] == f"{repo}@{src.digest}" and task["target_digest"] == src.digest, task
    assert not manifest_exists(registry.host, "v1/app:1-soci")
    tag = referrers_tag(src.digest)
    with RegistryClient() as client:
        listed = json.loads(client.get_manifest(parse(f"{repo}:{tag}")).raw)["manifests"]
    assert [d["artifactType"] for d in listed] == [layout.SOCI_INDEX_V1]
    proc = soci_tools.soci_verify(f"{repo}@{src.digest}", "-strict", "-index", listed[0]["digest"])
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]
    # Harbor < 2.8 sends a push event for the referrers tag: it is not an image to convert
    resp = stack_v1.post(f"{repo}:{tag}", sync=True)
    assert resp.status_code == 200, resp.content
    again = next(t for t in stack_v1.tasks() if t["source"] == f"{repo}:{tag}")
    assert again["status"] == "COMPLETED" and again["skipped"], again
    assert "referrers tag" in again["progress"]["message"], again
