"""End to end: push a source image into the real registry, convert it with the engine, read back the target."""
import dataclasses
import glob
import io
import json
import os
import subprocess
import sys

import pytest
import zstandard

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.compression import open_decompressed
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import DigestMismatchError, NotFoundError, ConversionError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support.images import push_image, push_index, sha, simple_tar

TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"


def make_cfg(tmp_path, **driver_opts):
    opts = {"compression_level": 1, **driver_opts}
    return config_mod.from_dict({
        "provider": {"work_dir": str(tmp_path / "work")},
        "converter": {"driver": {"type": "estargz", "config": opts}, "rules": [{"tag_suffix": "-esgz"}]},
    })


def fetch_json(client, ref):
    fetched = client.get_manifest(parse(ref) if isinstance(ref, str) else ref)
    return json.loads(fetched.raw), fetched


def blob_bytes(client, ref, digest):
    buf = io.BytesIO()
    client.download_blob(parse(ref), digest, buf)
    return buf.getvalue()


def check_converted_manifest(client, repo, manifest, expected_layers):
    """Every layer is eStargz with annotations, and diff_ids are the sha256 of the uncompressed layers."""
    config = json.loads(blob_bytes(client, repo, manifest["config"]["digest"]))
    assert len(manifest["layers"]) == expected_layers == len(config["rootfs"]["diff_ids"])
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        assert TOC_DIGEST in layer["annotations"]
        data = blob_bytes(client, repo, layer["digest"])
        tar = open_decompressed(io.BytesIO(data)).read()
        assert sha(tar) == diff_id
        assert int(layer["annotations"]["io.containers.estargz.uncompressed-size"]) == len(tar)
        assert b"stargz.index.json" in tar
    return config


@pytest.fixture
def client(registry):
    return RegistryClient()


@pytest.mark.parametrize("compression", ["gzip", "zstd", ""])
def test_convert_single_image_each_source_compression(tmp_path, registry, client, compression):
    repo = f"{registry.host}/library/app"
    layers = [simple_tar({"bin/sh": b"#!" + os.urandom(100), "etc/passwd": b"root:x:0:0"}),
              simple_tar({"big": os.urandom(300_000)})]
    src = push_image(client, f"{repo}:v1", layers, compression=compression)
    result = convert(make_cfg(tmp_path), f"{repo}:v1")

    assert result.target == f"{repo}:v1-esgz" and not result.skipped
    assert result.source_size == src.manifest["config"]["size"] + sum(l["size"] for l in src.manifest["layers"])
    manifest, fetched = fetch_json(client, result.target)
    assert fetched.digest == result.digest
    assert manifest["mediaType"] == oci.OCI_MANIFEST
    assert all(l["mediaType"] == oci.OCI_LAYER_GZIP for l in manifest["layers"])
    assert result.target_size == manifest["config"]["size"] + sum(l["size"] for l in manifest["layers"])
    assert manifest["annotations"]["io.goharbor.artifact.v1alpha1.acceleration.source.digest"] == src.digest
    config = check_converted_manifest(client, repo, manifest, 2)
    assert config["history"] == src.config["history"]
    assert set(result.durations) >= {"prepare", "convert", "push", "total"}


def test_convert_zstdchunked(tmp_path, registry, client):
    repo = f"{registry.host}/library/z"
    push_image(client, f"{repo}:v1", [simple_tar({"a": b"a" * 5000, "b": os.urandom(70_000)})])
    result = convert(make_cfg(tmp_path, compression="zstdchunked"), f"{repo}:v1")
    manifest, _ = fetch_json(client, result.target)
    layer = manifest["layers"][0]
    assert layer["mediaType"] == oci.OCI_LAYER_ZSTD
    assert "io.containers.zstd-chunked.manifest-position" in layer["annotations"]
    config = json.loads(blob_bytes(client, repo, manifest["config"]["digest"]))
    data = blob_bytes(client, repo, layer["digest"])
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    assert sha(tar) == config["rootfs"]["diff_ids"][0]


def test_multiarch_index_with_attestation_and_platform_filter(tmp_path, registry, client):
    repo = f"{registry.host}/multi"
    amd = push_image(client, f"{repo}:amd", [simple_tar({"amd": b"64"})], platform=("linux", "amd64"), tag=False)
    arm = push_image(client, f"{repo}:arm", [simple_tar({"arm": b"64"})], platform=("linux", "arm64"), tag=False)
    push_index(client, f"{repo}:v1", [amd, arm], attest=arm)
    cfg = make_cfg(tmp_path)
    cfg = dataclasses.replace(cfg, converter=dataclasses.replace(
        cfg.converter, platforms=config_mod.parse_platforms("linux/amd64")))
    result = convert(cfg, f"{repo}:v1")
    index, _ = fetch_json(client, result.target)
    assert index["mediaType"] == oci.OCI_INDEX
    # arm64 filtered out, and with it the attestation describing it
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64"]
    child, _ = fetch_json(client, parse(f"{repo}@{index['manifests'][0]['digest']}"))
    check_converted_manifest(client, repo, child, 1)
    assert result.source_size == amd.manifest["config"]["size"] + amd.manifest["layers"][0]["size"]

    # all platforms: the attestation is kept and now points at the converted arm64 manifest
    result = convert(make_cfg(tmp_path), f"{repo}:v1")
    index, _ = fetch_json(client, result.target)
    plats = [m["platform"]["architecture"] for m in index["manifests"]]
    assert plats == ["amd64", "arm64", "unknown"]
    att = index["manifests"][2]
    assert att["annotations"][oci.ANNOTATION_REFERENCE_DIGEST] == index["manifests"][1]["digest"]


@pytest.mark.parametrize("docker2oci", [True, False])
def test_docker_v2s2_image(tmp_path, registry, client, docker2oci):
    repo = f"{registry.host}/docker/app"
    push_image(client, f"{repo}:v1", [simple_tar({"f": b"x" * 10})], docker=True)
    result = convert(make_cfg(tmp_path, docker2oci=docker2oci), f"{repo}:v1")
    manifest, fetched = fetch_json(client, result.target)
    if docker2oci:
        assert fetched.media_type == oci.OCI_MANIFEST
        assert manifest["config"]["mediaType"] == oci.OCI_CONFIG
        assert manifest["layers"][0]["mediaType"] == oci.OCI_LAYER_GZIP
    else:
        assert fetched.media_type == oci.DOCKER_MANIFEST
        assert manifest["layers"][0]["mediaType"] == oci.DOCKER_LAYER_GZIP
    check_converted_manifest(client, repo, manifest, 1)


def test_with_referrer_sets_subject(tmp_path, registry, client):
    repo = f"{registry.host}/ref"
    src = push_image(client, f"{repo}:v1", [simple_tar({"f": b"x"})])
    result = convert(make_cfg(tmp_path, with_referrer=True), f"{repo}:v1")
    manifest, _ = fetch_json(client, result.target)
    assert manifest["subject"] == {"mediaType": oci.OCI_MANIFEST, "digest": src.digest, "size": src.size}


def test_already_converted_tag_is_skipped_and_nothing_pushed(tmp_path, registry, client):
    repo = f"{registry.host}/skip"
    push_image(client, f"{repo}:v1-esgz", [simple_tar({"f": b"x"})])
    before = registry.log().count('"PUT ')
    result = convert(make_cfg(tmp_path), f"{repo}:v1-esgz")
    assert result.skipped and "already" in result.reason and result.digest == ""
    assert registry.log().count('"PUT ') == before
    assert client.list_tags(parse(f"{repo}:x")) == ["v1-esgz"]


def test_second_conversion_reuses_converted_layers(tmp_path, registry, client):
    repo = f"{registry.host}/cache"
    push_image(client, f"{repo}:v1", [simple_tar({"f": os.urandom(1000)}), simple_tar({"g": b"g"})])
    cfg = make_cfg(tmp_path)
    first = convert(cfg, f"{repo}:v1")
    events = []
    second = convert(cfg, f"{repo}:v1", progress=events.append)
    assert second.digest == first.digest
    assert [e.message for e in events if e.phase == "convert"] == ["cached", "cached"]
    assert not [e for e in events if e.phase == "pull"]


def test_missing_tag_fails_with_clear_error_and_no_target(tmp_path, registry, client):
    repo = f"{registry.host}/missing"
    with pytest.raises(NotFoundError) as info:
        convert(make_cfg(tmp_path), f"{repo}:nope")
    assert "nope" in str(info.value) and "\n" not in str(info.value)


def test_corrupt_layer_in_registry_fails_and_tags_nothing(tmp_path, registry, client):
    repo = f"{registry.host}/corrupt"
    src = push_image(client, f"{repo}:v1", [simple_tar({"f": os.urandom(5000)})])
    layer_digest = src.manifest["layers"][0]["digest"]
    # damage the registry's own copy on disk: it now serves bytes that do not match the digest
    data_file = glob.glob(os.path.join(registry.root, "data", "**", layer_digest[7:], "data"), recursive=True)[0]
    good = open(data_file, "rb").read()
    with open(data_file, "wb") as fh:
        fh.write(good[:100] + bytes(len(good) - 100))
    with pytest.raises(DigestMismatchError) as info:
        convert(make_cfg(tmp_path), f"{repo}:v1")
    assert layer_digest in str(info.value)
    assert client.list_tags(parse(f"{repo}:x")) == ["v1"]  # no v1-esgz


def test_platform_not_wanted_for_single_manifest(tmp_path, registry, client):
    repo = f"{registry.host}/plat"
    push_image(client, f"{repo}:v1", [simple_tar({"f": b"x"})], platform=("linux", "s390x"))
    cfg = make_cfg(tmp_path)
    cfg = dataclasses.replace(cfg, converter=dataclasses.replace(
        cfg.converter, platforms=config_mod.parse_platforms("linux/amd64")))
    with pytest.raises(ConversionError, match="linux/s390x"):
        convert(cfg, f"{repo}:v1")


def run_accelctl(*args, cwd):
    return subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_accelctl_convert_prints_target_and_progress(tmp_path, registry, client):
    repo = f"{registry.host}/cli"
    push_image(client, f"{repo}:v1", [simple_tar({"f": os.urandom(2000)})])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"provider: {{work_dir: {tmp_path / 'work'}}}\nconverter: {{rules: [{{tag_suffix: -esgz}}]}}\n")
    out = run_accelctl("convert", "--config", str(cfg), f"{repo}:v1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{repo}:v1-esgz"
    assert "converted" in out.stderr and "push" in out.stderr


def test_accelctl_failure_is_one_line(tmp_path, registry):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"provider: {{work_dir: {tmp_path / 'work'}}}\n")
    out = run_accelctl("convert", "--config", str(cfg), f"{registry.host}/nothing:here", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.startswith("accelctl: error:") and out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("converter: {wrokers: 1}\n")
    out = run_accelctl("convert", "--config", str(bad), "x/y:z", cwd=tmp_path)
    assert out.returncode == 2 and "converter.wrokers" in out.stderr


def test_converted_layers_stream_to_the_registry_while_written(tmp_path, registry, client):
    repo = f"{registry.host}/stream"
    push_image(client, f"{repo}:v1", [simple_tar({"f": os.urandom(300_000)})])
    events = []
    convert(make_cfg(tmp_path), f"{repo}:v1", progress=events.append, client=client)
    pushed = {e.layer: e.message for e in events if e.phase == "push" and e.message}
    manifest, _ = fetch_json(client, f"{repo}:v1-esgz")
    assert pushed[manifest["layers"][0]["digest"]] == "exists"  # the push phase found it already uploaded
    assert 'PATCH /v2/stream/blobs/uploads/' in registry.log()


def test_failed_streaming_upload_falls_back_to_a_push_from_the_store(tmp_path, registry, client):
    repo = f"{registry.host}/fallback"
    push_image(client, f"{repo}:v1", [simple_tar({"f": os.urandom(300_000)})])
    real_start = client.start_upload
    # the stream goes to a repository name the registry refuses, so it fails at its first request
    client.start_upload = lambda ref: real_start(dataclasses.replace(ref, repository="INVALID//name"))
    events = []
    result = convert(make_cfg(tmp_path), f"{repo}:v1", progress=events.append, client=client)
    manifest, _ = fetch_json(client, result.target)
    pushed = {e.layer: e.message for e in events if e.phase == "push" and e.message}
    assert pushed[manifest["layers"][0]["digest"]] == "uploaded"
    check_converted_manifest(client, repo, manifest, 1)


def test_progress_printer_draws_a_bar_on_a_tty_and_lines_otherwise():
    from acceleration_sdk.cli import ProgressPrinter
    from acceleration_sdk.driver import ProgressEvent

    layer = "sha256:" + "ab" * 32
    events = [ProgressEvent("convert", layer, 0, 100, "converting"), ProgressEvent("pull", layer, 50, 100),
              ProgressEvent("convert", layer, 100, 100, "converted"), ProgressEvent("push", layer, 100, 100, "uploaded"),
              ProgressEvent("done", "", 1, 1, "pushed x")]
    tty, plain = io.StringIO(), io.StringIO()
    for printer in (ProgressPrinter(tty, tty=True), ProgressPrinter(plain, tty=False)):
        for ev in events:
            printer._last_draw = 0  # draw every event
            printer(ev)
    assert "pull+convert abababababab [#####-----]  50%" in tty.getvalue()
    lines = plain.getvalue().splitlines()
    assert lines == ["convert  abababababab converting (100 B)", "convert  abababababab converted (100 B)",
                     "push     abababababab uploaded (100 B)", "done                  pushed x"]
    assert "\x1b" not in plain.getvalue()
