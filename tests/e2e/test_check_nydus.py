"""``accelctl check`` on nydus images against the real registry: a good image PASSes with ``--source``; images
broken on purpose -- a blob layer's media type, the bootstrap not last, a chunk digest in the merged bootstrap,
a file the merged bootstrap shows differently from its blob layer, a source whose file differs, a config that is
not the source's -- each FAIL with one line that says what is wrong (nydusify check's rules, nydusd's reads)."""
from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import tarfile

import pytest
import yaml

from acceleration_sdk import config as config_mod
from acceleration_sdk.check import check_image
from acceleration_sdk.engine import convert
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.nydus.driver import write_bootstrap_layer
from drivers.nydus.reader import Rafs
from tests.support.images import push_image, sha, simple_tar

BIG = bytes(range(256)) * 40  # 10 KiB: three 4 KiB chunks


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


@pytest.fixture
def image(tmp_path, registry, client):
    """(source ref, converted ref) of a two-layer image converted to nydus with 4 KiB chunks."""
    repo = f"{registry.host}/check/nydus"
    push_image(client, f"{repo}:v1", [simple_tar({"bin/sh": b"#!" + bytes(100), "etc/passwd": b"root:x:0:0"}),
                                      simple_tar({"big": BIG})])
    cfg = config_mod.from_dict({"provider": {"work_dir": str(tmp_path / "work")},
                                "converter": {"driver": {"type": "nydus", "config": {"fs_chunk_size": "0x1000"}}}})
    return f"{repo}:v1", convert(cfg, f"{repo}:v1").target


def cli(tmp_path, *args):
    cfg = tmp_path / "check.yaml"
    cfg.write_text(yaml.safe_dump({"provider": {"work_dir": str(tmp_path / "cli-work")},
                                   "converter": {"driver": {"type": "nydus"}}}))
    proc = subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", "check", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr
    return proc.returncode, proc.stdout.strip().splitlines()


def fetch(client, ref, digest) -> bytes:
    buf = io.BytesIO()
    client.download_blob(parse(ref), digest, buf)
    return buf.getvalue()


def put(client, ref, data: bytes) -> dict:
    client.push_blob(parse(ref), sha(data), len(data), io.BytesIO(data))
    return {"digest": sha(data), "size": len(data)}


def variant(client, ref, tag, *, manifest_edit=None, config_edit=None, boot_edit=None) -> str:
    """Push ``ref`` changed under ``tag``: its manifest, its config, or its merged bootstrap (the bootstrap layer is
    rebuilt around the edited bytes, its diff_id updated, so only the edit is wrong)."""
    manifest = json.loads(client.get_manifest(parse(ref)).raw)
    config = json.loads(fetch(client, ref, manifest["config"]["digest"]))
    if boot_edit is not None:
        layer = manifest["layers"][-1]
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(fetch(client, ref, layer["digest"])))) as tf:
            files = {m.name.split("/")[-1]: tf.extractfile(m).read() for m in tf if m.isfile()}
        boot = bytearray(files.pop("image.boot"))
        boot_edit(boot, Rafs(bytes(boot)))
        out = io.BytesIO()
        diff_id = write_bootstrap_layer(out, bytes(boot), [(n[:-len(".blob.meta")], d) for n, d in files.items()])
        layer.update(put(client, ref, out.getvalue()))
        config["rootfs"]["diff_ids"][-1] = diff_id
    if config_edit is not None:
        config_edit(config)
    manifest["config"].update(put(client, ref, json.dumps(config).encode()))
    if manifest_edit is not None:
        manifest_edit(manifest)
    new = parse(ref)
    new = f"{new.host}/{new.repository}:{tag}"
    client.put_manifest(parse(new), json.dumps(manifest).encode(), manifest["mediaType"])
    return new


def digests(client, ref) -> list[str]:
    return [layer["digest"] for layer in json.loads(client.get_manifest(parse(ref)).raw)["layers"]]


def test_a_good_image_passes_with_its_source(tmp_path, image):
    source, target = image
    code, out = cli(tmp_path, "--source", source, target)
    assert code == 0, out
    assert ": nydus, 3 layer(s)" in out[0] and out[-1] == f"PASS {target}: 3 layer(s) verified"
    assert "same as source layer" in out[1] and "same as source layer" in out[2]


def test_a_blob_layer_with_a_wrong_media_type_fails(tmp_path, client, image):
    def edit(manifest):
        manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    bad = variant(client, image[1], "wrong-type", manifest_edit=edit)
    code, out = cli(tmp_path, bad)
    assert code == 1
    assert f"FAIL {digests(client, bad)[0]}: media type application/vnd.oci.image.layer.v1.tar+gzip is not " \
           "application/vnd.oci.image.layer.nydus.blob.v1" in out


def test_a_bootstrap_that_is_not_last_fails_the_manifest(tmp_path, client, image):
    def edit(manifest):
        manifest["layers"].insert(0, manifest["layers"].pop())
    bad = variant(client, image[1], "boot-first", manifest_edit=edit,
                  config_edit=lambda c: c["rootfs"]["diff_ids"].insert(0, c["rootfs"]["diff_ids"].pop()))
    code, out = cli(tmp_path, bad)
    layers = digests(client, bad)
    manifest_digest = client.get_manifest(parse(bad)).digest
    assert code == 1
    assert out[-1] == (f"FAIL {bad}@{manifest_digest}: nydus: the bootstrap must be the last layer: {layers[-1]} is "
                       "not annotated containerd.io/snapshot/nydus-bootstrap: \"true\"; layer 1 of 3 carries it "
                       "(nydus-snapshotter mounts the last layer's bootstrap)")


def test_a_wrong_chunk_digest_in_the_merged_bootstrap_fails(tmp_path, client, image):
    def edit(boot, rafs):
        boot[rafs.ext.chunk_table_offset + 3] ^= 0xFF   # the first chunk table entry's digest
    bad = variant(client, image[1], "bad-digest", boot_edit=edit)
    code, out = cli(tmp_path, bad)
    assert code == 1
    layers = digests(client, bad)
    assert out[-1] == (f"FAIL {layers[-1]}: chunk 0 of blob {layers[1]}: the chunk table's digest is not the one "
                       "the blob's blob.digest records")
    assert [line.split()[0] for line in out[1:-1]] == ["ok", "ok", "FAIL"]   # the blobs themselves are fine


def test_a_file_the_merged_bootstrap_shows_otherwise_than_its_layer_fails(tmp_path, client, image):
    def edit(boot, rafs):
        inode = next(node for path, node in rafs.walk() if path == "big")
        struct.pack_into("<H", boot, inode.offset + 4, 0o100600)   # i_mode: 0644 -> 0600
    bad = variant(client, image[1], "chmod", boot_edit=edit)
    code, out = cli(tmp_path, bad)
    assert code == 1
    assert out[-1] == (f"FAIL {digests(client, bad)[-1]}: the merged bootstrap differs from its blob layers "
                       "merged: 'big': mode 384, the layers give 420")


def test_a_file_differing_from_the_source_fails_naming_it(tmp_path, client, image):
    source, target = image
    other = push_image(client, source.replace(":v1", ":other"),
                       [simple_tar({"bin/sh": b"#!" + bytes(100), "etc/passwd": b"root:x:0:0:changed"}),
                        simple_tar({"big": BIG})])
    code, out = cli(tmp_path, "--source", str(other.ref), target)
    layer = digests(client, target)[0]
    assert code == 1
    assert out[1].startswith(f"FAIL {layer}: differs from source layer ") and "'etc/passwd': file bytes differ" \
        in out[1], out
    assert out[2].startswith("ok ") and out[3].startswith("ok ")


def test_a_config_that_is_not_the_sources_fails(tmp_path, client, image):
    source, target = image
    bad = variant(client, target, "env", config_edit=lambda c: c["config"].update(Env=["PATH=/evil"]))
    result = check_image(client, parse(bad), tmp_dir=str(tmp_path), source=parse(source))
    manifest_digest = client.get_manifest(parse(bad)).digest
    assert not result.ok
    assert result.lines[1] == (f"FAIL {bad}@{manifest_digest}: the image config differs from the source's: "
                               'config.Env is ["PATH=/evil"], the source has ["PATH=/bin"]')
    # ArgsEscaped is ignored, as nydusify ignores it; the layers were still checked
    fine = variant(client, target, "escaped", config_edit=lambda c: c["config"].update(ArgsEscaped=True))
    assert check_image(client, parse(fine), tmp_dir=str(tmp_path), source=parse(source)).ok


def test_a_blob_layer_appended_after_the_images_own_is_not_merged(tmp_path, registry, client, image):
    """chunk_dict_ref appends the dict image's blobs before the bootstrap, with no history entry
    (nydus-snapshotter's MergeLayers): their files are not the image's, and the merged view leaves them out."""
    repo = f"{registry.host}/check/dict"
    push_image(client, f"{repo}:v1", [simple_tar({"dict/only": b"from the dict image"})])
    cfg = config_mod.from_dict({"provider": {"work_dir": str(tmp_path / "work-dict")},
                                "converter": {"driver": {"type": "nydus", "config": {"fs_chunk_size": "0x1000"}}}})
    dict_blob = json.loads(client.get_manifest(parse(convert(cfg, f"{repo}:v1").target)).raw)["layers"][0]
    client.push_blob(parse(image[1]), dict_blob["digest"], dict_blob["size"],
                     io.BytesIO(fetch(client, f"{repo}:v1", dict_blob["digest"])))

    def edit(manifest):
        manifest["layers"].insert(-1, dict_blob)
    appended = variant(client, image[1], "with-dict", manifest_edit=edit,
                       config_edit=lambda c: c["rootfs"]["diff_ids"].insert(-1, dict_blob["digest"]))
    result = check_image(client, parse(appended), tmp_dir=str(tmp_path))
    assert result.ok, result.lines
    assert result.verdict == f"PASS {appended}: 4 layer(s) verified"
