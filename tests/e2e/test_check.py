"""``accelctl check`` and ``converter.verify`` against a real registry: PASS on good eStargz, zstd:chunked and
nydus output; FAIL naming the layer (and the entry) on a corrupted chunk, a wrong TOC digest annotation, a missing
annotation and a source that is not the one converted; a verifying conversion whose output is corrupt fails and
never writes its tag."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import yaml

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.check import check_image
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import ConfigError, ConversionError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.estargz.driver import EStargzDriver
from drivers.estargz.reader import read_toc
from tests.support.images import push_image, push_index, sha, simple_tar

TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
BIG = os.urandom(40_000)  # several 4 KiB chunks


def cfg_dict(work, driver="estargz", verify=False, **opts):
    opts = opts or ({"compression_level": 1, "chunk_size": 4096} if driver == "estargz" else {"fs_chunk_size": "0x1000"})
    return {"provider": {"work_dir": str(work)},
            "converter": {"driver": {"type": driver, "config": opts}, "verify": verify}}


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def source_image(client, repo, tag="v1", passwd=b"root:x:0:0"):
    layers = [simple_tar({"bin/sh": b"#!" + bytes(100), "etc/passwd": passwd}), simple_tar({"big": BIG})]
    return push_image(client, f"{repo}:{tag}", layers)


def converted(tmp_path, client, repo, driver="estargz", **opts):
    source_image(client, repo)
    result = convert(config_mod.from_dict(cfg_dict(tmp_path / "work", driver, **opts)), f"{repo}:v1")
    return result.target


def run_cli(tmp_path, *args):
    cfg = tmp_path / "check.yaml"
    cfg.write_text(yaml.safe_dump(cfg_dict(tmp_path / "cli-work")))
    proc = subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", "check", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout.strip().splitlines(), proc.stderr


def repush(client, ref, tag, mutate):
    """Push a variant of the image ``ref`` under ``tag``: ``mutate(manifest, client, repo)`` edits the manifest."""
    fetched = client.get_manifest(parse(ref))
    manifest = json.loads(fetched.raw)
    repo = parse(ref)
    mutate(manifest, client, repo)
    raw = json.dumps(manifest).encode()
    client.put_manifest(parse(f"{repo.host}/{repo.repository}:{tag}"), raw, manifest["mediaType"])
    return f"{repo.host}/{repo.repository}:{tag}"


def blob(client, repo, digest) -> bytes:
    buf = io.BytesIO()
    client.download_blob(repo, digest, buf)
    return buf.getvalue()


@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_check_passes_good_output_and_its_source(tmp_path, registry, client, compression):
    repo = f"{registry.host}/library/app"
    target = converted(tmp_path, client, repo, compression=compression, compression_level=1, chunk_size=4096)
    result = check_image(client, parse(target), tmp_dir=str(tmp_path), source=parse(f"{repo}:v1"))
    assert result.ok, result.lines
    assert result.verdict.startswith(f"PASS {target}: 2 layer(s)")
    assert [line.split()[0] for line in result.lines[1:-1]] == ["ok", "ok"]
    assert "same as source layer" in result.lines[1]


def test_cli_check_pass_and_corrupted_chunk_names_layer_and_entry(tmp_path, registry, client):
    repo = f"{registry.host}/library/app"
    target = converted(tmp_path, client, repo)
    code, out, err = run_cli(tmp_path, "--source", f"{repo}:v1", target)
    assert code == 0 and out[-1].startswith("PASS"), (out, err)

    def corrupt(manifest, client, r):
        layer = manifest["layers"][1]
        data = bytearray(blob(client, r, layer["digest"]))
        toc = read_toc(io.BytesIO(bytes(data)), oci.Descriptor.from_dict(layer))
        chunk = next(e for e in toc["entries"] if e["name"] == "big" and e.get("chunkOffset") == 8192)
        data[chunk["offset"] + 40] ^= 0xFF  # inside the chunk's deflate data, past its gzip header
        client.push_blob(r, sha(bytes(data)), len(data), io.BytesIO(bytes(data)))
        layer["digest"], layer["size"] = sha(bytes(data)), len(data)

    bad = repush(client, target, "v1-bad", corrupt)
    code, out, err = run_cli(tmp_path, bad)
    layer = json.loads(client.get_manifest(parse(bad)).raw)["layers"][1]["digest"]
    assert code == 1, (out, err)
    assert out[-1].startswith(f"FAIL {layer}: 'big': chunk at 8192"), out
    assert sum(line.startswith("ok ") for line in out) == 1  # the other layer still passes


def test_wrong_toc_digest_annotation_fails_that_layer(tmp_path, registry, client):
    repo = f"{registry.host}/library/app"
    target = converted(tmp_path, client, repo)

    def wrong(manifest, _c, _r):
        manifest["layers"][0]["annotations"][TOC_DIGEST] = sha(b"not the toc")

    bad = repush(client, target, "v1-wrong", wrong)
    result = check_image(client, parse(bad), tmp_dir=str(tmp_path))
    layer = json.loads(client.get_manifest(parse(bad)).raw)["layers"][0]["digest"]
    assert not result.ok
    assert result.verdict == f"FAIL {layer}: the TOC does not match the {TOC_DIGEST} annotation {sha(b'not the toc')}"


def test_missing_annotation_fails_that_layer(tmp_path, registry, client):
    repo = f"{registry.host}/library/app"
    target = converted(tmp_path, client, repo)

    def strip(manifest, _c, _r):
        del manifest["layers"][1]["annotations"][TOC_DIGEST]

    bad = repush(client, target, "v1-stripped", strip)
    result = check_image(client, parse(bad), tmp_dir=str(tmp_path))
    layer = json.loads(client.get_manifest(parse(bad)).raw)["layers"][1]["digest"]
    assert not result.ok
    assert result.verdict == f"FAIL {layer}: missing annotation {TOC_DIGEST}"
    assert result.lines[1].startswith("ok ")


def test_mismatched_source_names_the_entry(tmp_path, registry, client):
    repo = f"{registry.host}/library/app"
    target = converted(tmp_path, client, repo)
    source_image(client, repo, tag="other", passwd=b"root:x:0:0:changed")
    result = check_image(client, parse(target), tmp_dir=str(tmp_path), source=parse(f"{repo}:other"))
    layer = json.loads(client.get_manifest(parse(target)).raw)["layers"][0]["digest"]
    assert not result.ok
    assert result.verdict.startswith(f"FAIL {layer}: differs from source layer ")
    assert "'etc/passwd': file bytes differ" in result.verdict
    assert result.lines[2].startswith("ok ")  # the second layer is the same as the other source's


def test_nydus_output_passes_and_a_stripped_blob_annotation_fails(tmp_path, registry, client):
    repo = f"{registry.host}/library/app"
    target = converted(tmp_path, client, repo, driver="nydus")
    result = check_image(client, parse(target), tmp_dir=str(tmp_path), source=parse(f"{repo}:v1"))
    assert result.ok, result.lines
    assert result.lines[0].startswith(f"check {target}@sha256:") and ": nydus, 3 layer(s)" in result.lines[0]
    assert "verified against the blob layers" in result.lines[3]

    def strip(manifest, _c, _r):
        del manifest["layers"][0]["annotations"]["containerd.io/snapshot/nydus-blob"]

    bad = repush(client, target, "v1-nydus-bad", strip)
    result = check_image(client, parse(bad), tmp_dir=str(tmp_path))
    layer = json.loads(client.get_manifest(parse(bad)).raw)["layers"][0]["digest"]
    assert result.verdict == f'FAIL {layer}: missing annotation containerd.io/snapshot/nydus-blob: "true"'

    def corrupt(manifest, client, r):
        layer = manifest["layers"][1]
        data = bytearray(blob(client, r, layer["digest"]))
        data[100] ^= 0xFF  # in the first chunk's compressed data (a blob starts with its chunks)
        client.push_blob(r, sha(bytes(data)), len(data), io.BytesIO(bytes(data)))
        layer["digest"], layer["size"] = sha(bytes(data)), len(data)

    bad = repush(client, target, "v1-nydus-chunk", corrupt)
    result = check_image(client, parse(bad), tmp_dir=str(tmp_path))
    layer = json.loads(client.get_manifest(parse(bad)).raw)["layers"][1]["digest"]
    assert result.lines[2] == f"FAIL {layer}: 'big': chunk 0: blake3 digest does not match blob.digest"
    assert result.verdict.startswith(f"FAIL {layer}: ") and result.verdict.endswith("(and 1 more)")


class FakeCorruptingDriver(EStargzDriver):
    """A fake: eStargz layers whose TOC digest annotation is wrong, as a buggy driver would write them."""

    def cache_key(self) -> str:  # its own layer-cache entries: the real driver must not reuse them
        return "fake-corrupting/" + super().cache_key()

    def convert_layer(self, content, desc):
        layer = super().convert_layer(content, desc)
        bad = layer.descriptor.replace(annotations={**layer.descriptor.annotations, TOC_DIGEST: sha(b"wrong")})
        return type(layer)(bad, layer.diff_id)


def test_verify_fails_a_corrupt_conversion_and_never_writes_the_tag(tmp_path, registry, client):
    repo = f"{registry.host}/library/app"
    source_image(client, repo)
    cfg = config_mod.from_dict(cfg_dict(tmp_path / "work", verify=True))
    with pytest.raises(ConversionError) as info:
        convert(cfg, f"{repo}:v1", driver=FakeCorruptingDriver(dict(cfg.converter.driver.config)))
    assert "tag 'v1-esgz' not written" in str(info.value)
    assert f"the TOC does not match the {TOC_DIGEST} annotation" in str(info.value)
    assert client.head_manifest(parse(f"{repo}:v1-esgz")) is None

    result = convert(cfg, f"{repo}:v1")  # the real driver passes the same check, and gets its tag
    assert client.head_manifest(parse(result.target)).digest == result.digest


def test_verify_config_key(tmp_path):
    assert config_mod.from_dict({}).converter.verify is False
    assert config_mod.from_dict({"converter": {"verify": True}}).converter.verify is True
    with pytest.raises(ConfigError) as info:
        config_mod.from_dict({"converter": {"verify": "yes"}})
    assert info.value.path == "converter.verify"


def test_index_every_platform_checked_against_the_same_platform_of_the_source(tmp_path, registry, client):
    repo = f"{registry.host}/library/multi"
    images = [push_image(client, f"{repo}:{arch}", [simple_tar({"arch": arch.encode()})], tag=False,
                         platform=("linux", arch)) for arch in ("amd64", "arm64")]
    push_index(client, f"{repo}:v1", images)
    result = convert(config_mod.from_dict(cfg_dict(tmp_path / "work")), f"{repo}:v1")
    checked = check_image(client, parse(result.target), tmp_dir=str(tmp_path), source=parse(f"{repo}:v1"))
    assert checked.ok, checked.lines
    assert [line.split(" (")[-1] for line in checked.lines if line.startswith("check ")] == \
        ["linux/amd64): estargz, 1 layer(s)", "linux/arm64): estargz, 1 layer(s)"]
    assert checked.verdict == f"PASS {result.target}: 2 layer(s) verified"


def test_check_and_its_readers_never_load_pytest_and_help_is_true():
    code = ("import sys, acceleration_sdk.cli, acceleration_sdk.check, drivers.estargz.check, drivers.nydus.check, "
            "drivers.soci.check; "
            "assert 'pytest' not in sys.modules, 'pytest loaded'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    out = subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", "check", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: accelctl check [-h] [--config FILE] [--source REF] REF")


def test_an_unconverted_image_fails_recognition_or_the_configured_format(tmp_path, registry, client):
    repo = f"{registry.host}/library/plain"
    src = source_image(client, repo)
    alone = check_image(client, parse(f"{repo}:v1"), tmp_dir=str(tmp_path))
    assert alone.verdict == f"FAIL {repo}:v1@{src.digest}: no installed driver recognises the image's layers"
    forced = check_image(client, parse(f"{repo}:v1"), tmp_dir=str(tmp_path), fallback="estargz")
    first = src.manifest["layers"][0]["digest"]
    assert forced.verdict == f"FAIL {first}: missing annotation {TOC_DIGEST}, " \
                             "io.containers.estargz.uncompressed-size (and 1 more)"
