"""``accelctl check`` on nydus images against the real registry: a good image PASSes with ``--source``; images
broken on purpose -- a blob layer's media type, the bootstrap not last, a chunk digest in the merged bootstrap,
a file the merged bootstrap shows differently from its blob layer, a source whose file differs, a config that is
not the source's -- each FAIL with one line that says what is wrong (nydusify check's rules, nydusd's reads).
An image converted with ``chunk_dict_ref`` PASSes (CLI with ``--source``, and ``converter.verify``); a lying dict
chunk, a dict blob missing from the manifest, a dict blob layer's media type each FAIL by name."""
from __future__ import annotations

import gzip
import io
import json
import re
import struct
import subprocess
import sys
import tarfile

import pytest
import yaml

from acceleration_sdk import config as config_mod
from acceleration_sdk.check import check_image
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import ConversionError, NotFoundError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.nydus.driver import write_bootstrap_layer
from drivers.nydus.layout import CHUNK_INFO_SIZE
from drivers.nydus.reader import Rafs
from tests.support import tars
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


# -- chunk_dict_ref: B converted against A's nydus image reads chunks from A's blobs, appended to B's layers ----

SHARED = tars.payload(9 * 0x1000, "shared")
LIB = tars.payload(6 * 0x1000, "lib")


def dict_cfg(tmp_path, host, work="work-b", verify=False, **opts):
    return config_mod.from_dict({
        "provider": {"work_dir": str(tmp_path / work), "source": {host: {}}},
        "converter": {"verify": verify, "driver": {"type": "nydus", "config": {"fs_chunk_size": "0x1000", **opts}}}})


@pytest.fixture
def dict_pair(tmp_path, registry, client):
    """(A's nydus image, B's source, B's plain source layers): A = usr/shared + usr/lib, B shares most chunks."""
    host = registry.host
    push_image(client, f"{host}/check/dict:v1", [simple_tar({"usr/shared": SHARED, "etc/a": b"a\n"}),
                                                 simple_tar({"usr/lib": LIB})])
    dict_ref = convert(dict_cfg(tmp_path, host, work="work-a"), f"{host}/check/dict:v1").target
    patched = LIB[:3 * 0x1000] + tars.payload(0x1000, "patched") + LIB[4 * 0x1000:]
    push_image(client, f"{host}/check/app:v1", [simple_tar({"usr/shared": SHARED, "etc/b": b"b\n"}),
                                                simple_tar({"usr/lib": patched, "b-only": b"b" * 5000})])
    return dict_ref, f"{host}/check/app:v1"


@pytest.fixture
def dict_image(tmp_path, registry, dict_pair):
    """(B's source, B converted against A): B's two blobs, A's two blobs, the bootstrap."""
    dict_ref, source = dict_pair
    return source, convert(dict_cfg(tmp_path, registry.host, chunk_dict_ref=dict_ref), source).target


def test_a_chunk_dict_image_passes_with_its_source(tmp_path, registry, client, dict_pair, dict_image):
    source, target = dict_image
    layers = digests(client, target)
    assert sorted(layers[2:4]) == sorted(digests(client, dict_pair[0])[:2])   # A's blobs, appended
    mark = len(registry.log())
    code, out = cli(tmp_path, "--source", source, target)
    log = registry.log()[mark:]
    assert code == 0, out
    assert ": nydus, 5 layer(s)" in out[0] and out[-1] == f"PASS {target}: 5 layer(s) verified"
    # B's own blobs read through A's (each chunk against its digest) and are the source's files
    assert all("same as source layer" in line for line in out[1:3]), out
    assert all(line.startswith(f"ok   {d}: ") and line.endswith("chunks verified (a chunk dict blob: no source layer)")
               for line, d in zip(out[3:5], layers[2:4])), out
    assert out[5].startswith(f"ok   {layers[4]}: ") and "verified against the blob layers" in out[5]
    # each dict blob fetched once: ahead of the first layer reading from it, reused on its own turn
    assert all(log.count(f"GET /v2/check/app/blobs/{d} ") == 1 for d in layers[2:4]), log
    # a config whose history does not count the image's own layers: the dict blobs B reads from are still left
    # out of the merged view
    bare = variant(client, target, "no-history", config_edit=lambda c: c.pop("history"))
    result = check_image(client, parse(bare), tmp_dir=str(tmp_path))
    assert result.ok, result.lines


def test_converter_verify_passes_a_chunk_dict_conversion(tmp_path, registry, client, dict_pair):
    dict_ref, source = dict_pair
    result = convert(dict_cfg(tmp_path, registry.host, verify=True, chunk_dict_ref=dict_ref), source)
    assert len(digests(client, result.target)) == 5                      # tagged: the check passed


def swap_two_chunk_digests(boot, rafs):
    """Swap the digests of two full chunks of one blob in the chunk table: each names the other's data."""
    full = [(i, c) for i, (c, _f, _o) in enumerate(rafs.chunks) if c.uncompressed_size == 0x1000]
    (i, a), (j, b) = next(((x, y) for x in full for y in full
                           if x[1].blob_index == y[1].blob_index and x[1].digest != y[1].digest))
    for k, digest in ((i, b.digest), (j, a.digest)):
        at = rafs.ext.chunk_table_offset + k * CHUNK_INFO_SIZE
        boot[at:at + 32] = digest


def test_a_dict_chunk_whose_data_is_not_its_digest_fails(tmp_path, registry, client, dict_pair):
    """A dict whose chunk table lies (two digests swapped): B's chunks point at A's chunks holding other data.
    converter.verify refuses the conversion (no tag); accelctl check names the file and the dict blob."""
    dict_ref, source = dict_pair
    lying = variant(client, dict_ref, "lying", boot_edit=swap_two_chunk_digests)
    verified = dict_cfg(tmp_path, registry.host, work="work-v", verify=True, chunk_dict_ref=lying)
    bad_chunk = (r"FAIL sha256:\w{64}: 'usr/shared': chunk \d+ of blob sha256:(\w{64}): the chunk table's digest is "
                 "not the one the blob's blob.digest records")
    with pytest.raises(ConversionError, match="verification of the pushed image failed, tag 'v1-nydus' not written: "
                                              + bad_chunk):
        convert(verified, source)
    with pytest.raises(NotFoundError):
        client.get_manifest(parse(source.replace(":v1", ":v1-nydus")))

    target = convert(dict_cfg(tmp_path, registry.host, chunk_dict_ref=lying), source).target
    code, out = cli(tmp_path, target)
    layers = digests(client, target)
    assert code == 1
    found = re.fullmatch(bad_chunk, out[1])                               # B's first blob: usr/shared's chunks
    assert found and out[1].startswith(f"FAIL {layers[0]}: ") and f"sha256:{found.group(1)}" in layers[2:4], out
    assert out[-1].startswith(out[1]), out                               # the verdict


def test_a_dict_blob_missing_from_the_manifest_fails(tmp_path, client, dict_image):
    target = dict_image[1]
    gone = digests(client, target)[2]

    def edit(manifest):
        del manifest["layers"][2]
    bad = variant(client, target, "no-dict-blob", manifest_edit=edit,
                  config_edit=lambda c: c["rootfs"]["diff_ids"].pop(2))
    code, out = cli(tmp_path, bad)
    assert code == 1
    # the first of B's blobs that reads from it says so (the bootstrap's line too, counted in the verdict)
    assert re.fullmatch(f"FAIL ({'|'.join(digests(client, bad)[:2])}): the layer was built against chunk dict blob "
                        rf"{gone}, which is no other blob layer of the image \(nydus-snapshotter appends the dict "
                        r"blobs a layer uses before the bootstrap\) \(and 1 more\)", out[-1]), out


def test_a_dict_blob_layer_with_a_wrong_media_type_fails(tmp_path, client, dict_image):
    target = dict_image[1]

    def edit(manifest):
        manifest["layers"][3]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    bad = variant(client, target, "dict-type", manifest_edit=edit)
    code, out = cli(tmp_path, bad)
    assert code == 1
    assert out[-1] == (f"FAIL {digests(client, bad)[3]}: media type application/vnd.oci.image.layer.v1.tar+gzip is "
                       "not application/vnd.oci.image.layer.nydus.blob.v1"), out
