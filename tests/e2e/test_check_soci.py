"""``accelctl check`` / ``converter.verify`` for SOCI images, against the real registry.

A good conversion PASSes (every ztoc derived again from its layer and compared); a ztoc whose span digest is
wrong -- pushed as a real tampered SOCI index, image manifest and OCI index -- FAILs naming the layer; with
``converter.verify: true`` a conversion with a wrong ztoc is FAILED and its tag never written.
"""
from __future__ import annotations

import io
import json
import random

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.check import check_image
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import ConversionError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.soci import layout, ztoc
from drivers.soci.driver import SociDriver
from tests.support.images import push_image, sha, simple_tar

SPAN = 1 << 16  # the smallest span size the driver accepts


def cfg(work, verify=False):
    return config_mod.from_dict({"provider": {"work_dir": str(work)}, "converter": {
        "verify": verify, "driver": {"type": "soci", "config": {"span_size": SPAN, "min_layer_size": 0}}}})


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def source(client, repo):
    rnd = random.Random(13)
    files = {f"usr/f{i}": rnd.randbytes(60_000) for i in range(4)}  # incompressible: several spans
    return push_image(client, f"{repo}:v1", [simple_tar(files), simple_tar({"etc/hostname": b"box\n"})])


def get_json(client, ref):
    return json.loads(client.get_manifest(ref).raw)


def put_json(client, repo, obj, tag=None) -> dict:
    raw = json.dumps(obj).encode()
    client.put_manifest(repo.with_tag(tag) if tag else repo.with_digest(sha(raw)), raw, obj["mediaType"])
    return {"digest": sha(raw), "size": len(raw)}


def test_soci_output_passes_and_its_source_matches(tmp_path, registry, client):
    repo = f"{registry.host}/soci/check"
    source(client, repo)
    target = convert(cfg(tmp_path / "work"), f"{repo}:v1").target
    result = check_image(client, parse(target), tmp_dir=str(tmp_path), source=parse(f"{repo}:v1"))
    assert result.ok, result.lines
    assert ": soci, 2 layer(s)" in result.lines[0]  # the SOCI index beside the image is no image of its own
    assert [line.split()[0] for line in result.lines[1:-1]] == ["ok", "ok"]
    assert "same as source layer" in result.lines[1]
    assert result.verdict == f"PASS {target}: 2 layer(s) verified"


def test_tampered_span_digest_fails_naming_the_layer(tmp_path, registry, client):
    repo = f"{registry.host}/soci/check"
    src = source(client, repo)
    target = parse(convert(cfg(tmp_path / "work"), f"{repo}:v1").target)
    top = get_json(client, target)
    image_desc = next(d for d in top["manifests"] if not d.get("artifactType"))
    soci_desc = next(d for d in top["manifests"] if d.get("artifactType") == layout.SOCI_INDEX_V2)
    image, soci = get_json(client, target.with_digest(image_desc["digest"])), \
        get_json(client, target.with_digest(soci_desc["digest"]))
    zdesc = soci["layers"][0]
    buf = io.BytesIO()
    client.download_blob(target, zdesc["digest"], buf)
    data = buf.getvalue()
    spans = ztoc.decode(data)["span_digests"]
    assert len(spans) > 2
    wrong = sha(b"not this span")
    bad = data.replace(spans[1].encode(), wrong.encode())
    assert bad != data and len(bad) == len(data)
    client.push_blob(target, sha(bad), len(bad), io.BytesIO(bad))
    zdesc.update(digest=sha(bad))
    soci_desc.update(put_json(client, target, soci))
    image["annotations"][layout.ANN_INDEX_DIGEST] = soci_desc["digest"]
    image_desc.update(put_json(client, target, image))
    soci_desc["annotations"][layout.ANN_MANIFEST_DIGEST] = image_desc["digest"]
    put_json(client, target, top, tag="v1-soci-bad")

    result = check_image(client, target.with_tag("v1-soci-bad"), tmp_dir=str(tmp_path))
    layer = src.manifest["layers"][0]["digest"]
    assert not result.ok
    assert result.verdict == (f"FAIL {layer}: ztoc {sha(bad)} disagrees with the layer: "
                              f"span 1 digest is {wrong}, the layer's span hashes to {spans[1]}")
    assert result.lines[2].startswith("ok ")  # the other layer (and its ztoc) still passes

    # a ztoc that is not a flatbuffer: that layer FAILs, the other passes
    junk = b"not a ztoc" * 10
    client.push_blob(target, sha(junk), len(junk), io.BytesIO(junk))
    soci["layers"][0].update(digest=sha(junk), size=len(junk))
    soci_desc.update(put_json(client, target, soci))
    image["annotations"][layout.ANN_INDEX_DIGEST] = soci_desc["digest"]
    image_desc.update(put_json(client, target, image))
    put_json(client, target, top, tag="v1-soci-junk")
    result = check_image(client, target.with_tag("v1-soci-junk"), tmp_dir=str(tmp_path))
    assert result.verdict.startswith(f"FAIL {layer}: ztoc {sha(junk)} does not decode ("), result.lines
    assert result.lines[2].startswith("ok ")

    # a ztoc that names a layer the image does not have fails before any layer is read
    soci["layers"][0]["annotations"][layout.ANN_LAYER_DIGEST] = sha(b"elsewhere")
    soci_desc.update(put_json(client, target, soci))
    image["annotations"][layout.ANN_INDEX_DIGEST] = soci_desc["digest"]
    image_desc.update(put_json(client, target, image))
    put_json(client, target, top, tag="v1-soci-orphan")
    result = check_image(client, target.with_tag("v1-soci-orphan"), tmp_dir=str(tmp_path))
    assert not result.ok and f"names layer '{sha(b'elsewhere')}', which is not in the image manifest" in result.verdict


def test_verify_true_works_with_soci(tmp_path, registry, client):
    repo = f"{registry.host}/soci/verify"
    source(client, repo)
    result = convert(cfg(tmp_path / "work", verify=True), f"{repo}:v1")
    assert client.head_manifest(parse(result.target)).digest == result.digest
    assert result.target.endswith(":v1-soci")
    assert oci.OCI_INDEX == client.get_manifest(parse(result.target)).media_type


class FakeWrongSpanDriver(SociDriver):
    """A fake: the real soci driver with the first span digest of every ztoc wrong, as a buggy builder would."""

    def _build_all(self, content, layers):
        built = super()._build_all(content, layers)
        for z in built.values():
            z.span_digests[0] = sha(b"wrong")
        return built


def test_verify_fails_a_wrong_ztoc_and_never_writes_the_tag(tmp_path, registry, client):
    repo = f"{registry.host}/soci/verify-bad"
    src = source(client, repo)
    config = cfg(tmp_path / "work", verify=True)
    with pytest.raises(ConversionError) as info:
        convert(config, f"{repo}:v1", driver=FakeWrongSpanDriver(dict(config.converter.driver.config)))
    assert "tag 'v1-soci' not written" in str(info.value)
    assert f"FAIL {src.manifest['layers'][0]['digest']}: ztoc " in str(info.value)
    assert f"span 0 digest is {sha(b'wrong')}" in str(info.value)
    assert client.head_manifest(parse(f"{repo}:v1-soci")) is None
