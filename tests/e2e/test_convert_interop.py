"""End to end through the engine, then every converted layer through the reference reader (Go, stargz-snapshotter).

Source layers carry every tar feature (tests/support/tars.py) in gzip, zstd and plain tar; the image goes
through the real registry both ways; the checker opens each pushed layer, verifies its TOC against the
annotation and every chunk, and must see every source entry unchanged.
"""
import hashlib
import io
import json

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk.compression import open_decompressed
from acceleration_sdk.engine import convert
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.interop.conftest import Checker, build_checker
from tests.interop.test_estargz_interop import assert_reader_sees_source
from tests.support import tars
from tests.support.images import push_image, sha

CHUNK = 64 << 10
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"


@pytest.fixture(scope="module")
def checker():
    return Checker(build_checker())


@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_every_layer_of_a_converted_image_passes_the_reference_reader(tmp_path, registry, checker, compression):
    client = RegistryClient()
    repo = f"{registry.host}/interop/features"
    sources = [tars.feature_tar(CHUNK), tars.build_tar([tars.reg("only/one", tars.payload(3 * CHUNK + 5))]),
               tars.feature_tar(4096)]
    descs, diff_ids = [], []
    # one image whose layers are gzip, zstd and plain tar
    src = push_image(client, f"{repo}:v1", [sources[0]], compression="gzip")
    for tar, comp in ((sources[1], "zstd"), (sources[2], "")):
        part = push_image(client, f"{repo}:part-{comp or 'plain'}", [tar], compression=comp)
        descs.append(part.manifest["layers"][0])
        diff_ids.append(part.config["rootfs"]["diff_ids"][0])
    manifest = dict(src.manifest, layers=src.manifest["layers"] + descs)
    config = dict(src.config, rootfs={"type": "layers", "diff_ids": src.config["rootfs"]["diff_ids"] + diff_ids},
                  history=[{"created_by": str(i)} for i in range(3)])
    config_raw = json.dumps(config).encode()
    client.push_blob(parse(repo), sha(config_raw), len(config_raw), io.BytesIO(config_raw))
    manifest["config"] = dict(manifest["config"], digest=sha(config_raw), size=len(config_raw))
    client.put_manifest(parse(f"{repo}:v1"), json.dumps(manifest).encode(), manifest["mediaType"])

    cfg = config_mod.from_dict({
        "provider": {"work_dir": str(tmp_path / "work")},
        "converter": {"driver": {"type": "estargz", "config": {"compression": compression, "chunk_size": CHUNK,
                                                               "compression_level": 1}},
                      "rules": [{"tag_suffix": "-esgz"}]}})
    result = convert(cfg, f"{repo}:v1")
    target = json.loads(client.get_manifest(parse(result.target)).raw)
    target_config = json.loads(_blob(client, repo, target["config"]["digest"]))
    assert len(target["layers"]) == 3
    for i, (layer, source_tar) in enumerate(zip(target["layers"], sources)):
        path = tmp_path / f"layer-{i}"
        path.write_bytes(_blob(client, repo, layer["digest"]))
        report = checker.check(path, layer["annotations"][TOC_DIGEST])
        assert report["tocDigest"] == layer["annotations"][TOC_DIGEST]
        assert_reader_sees_source(report, tars.expected_view(source_tar))
        with open(path, "rb") as fh:
            uncompressed = open_decompressed(fh).read()
        assert "sha256:" + hashlib.sha256(uncompressed).hexdigest() == target_config["rootfs"]["diff_ids"][i]


def _blob(client, repo, digest) -> bytes:
    buf = io.BytesIO()
    client.download_blob(parse(repo), digest, buf)
    return buf.getvalue()
