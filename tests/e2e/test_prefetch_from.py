"""``accelctl convert --prefetch-from FILE`` end to end against the real registry: the recorded paths reach the
pushed nydus bootstrap's prefetch table (read back with the project's RAFS reader) and the eStargz/zstd:chunked
layers' order (prioritized files first, then the prefetch landmark); a missing file, a relative path and a driver
without a prefetch list are one-line errors (exit 2); a path the image lacks is a warning on stderr."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from acceleration_sdk import oci
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.estargz.reader import read_toc
from drivers.nydus.bootlayer import read_bootstrap_layer
from drivers.nydus.reader import Rafs
from tests.support.images import push_image, simple_tar

RECORDED = """\
# recorded by a tracer while the app started (one absolute path a line)
/app/main.py

/usr/bin
/etc/ld.so.cache
/missing/file
"""
LOWER = {"usr/bin/python3": b"py" * 5000, "usr/bin/env": b"env", "etc/ld.so.cache": b"cache", "etc/passwd": b"root"}
UPPER = {"app/main.py": b"print()", "app/util.py": b"pass"}


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def accelctl(tmp_path, driver, opts, *args):
    cfg = tmp_path / f"{driver}.yaml"
    cfg.write_text(yaml.safe_dump({"provider": {"work_dir": str(tmp_path / "work")},
                                   "converter": {"driver": {"type": driver, "config": opts}}}))
    return subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", "convert", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


def source(client, repo):
    push_image(client, f"{repo}:v1", [simple_tar(LOWER), simple_tar(UPPER)])
    return f"{repo}:v1"


def pulled(client, ref: str, desc: dict, path) -> str:
    with open(path, "wb") as fh:
        client.download_blob(parse(ref), desc["digest"], fh)
    return str(path)


def test_nydus_prefetch_table_holds_the_recorded_paths_after_prefetch_patterns(tmp_path, registry, client):
    src = source(client, f"{registry.host}/prefetch/nydus")
    (tmp_path / "app.prefetch").write_text(RECORDED)
    out = accelctl(tmp_path, "nydus", {"fs_chunk_size": "0x1000", "prefetch_patterns": "/etc/passwd"},
                   "--prefetch-from", "app.prefetch", src)
    assert out.returncode == 0, out.stderr
    assert "prefetch pattern '/missing/file' names nothing in the image" in out.stderr   # a warning, not silence
    target = out.stdout.strip()
    manifest = json.loads(client.get_manifest(parse(target)).raw)
    with open(pulled(client, target, manifest["layers"][-1], tmp_path / "boot"), "rb") as fh:
        rafs = Rafs(read_bootstrap_layer(fh)[0])
    nids = {path: node.nid for path, node in rafs.walk()}
    assert rafs.prefetch == [nids["etc/passwd"], nids["app/main.py"], nids["usr/bin"], nids["etc/ld.so.cache"]]


@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_estargz_layers_put_the_recorded_paths_first_then_the_landmark(tmp_path, registry, client, compression):
    src = source(client, f"{registry.host}/prefetch/{compression}")
    (tmp_path / "app.prefetch").write_text(RECORDED.replace("/usr/bin\n", "/usr/bin/env\n"))
    out = accelctl(tmp_path, "estargz", {"compression": compression, "compression_level": 1},
                   "--prefetch-from", "app.prefetch", src)
    assert out.returncode == 0, out.stderr
    target = out.stdout.strip()
    layers = json.loads(client.get_manifest(parse(target)).raw)["layers"]
    names = []
    for i, layer in enumerate(layers):
        with open(pulled(client, target, layer, tmp_path / f"layer{i}"), "rb") as fh:
            names.append([e["name"] for e in read_toc(fh, oci.Descriptor.from_dict(layer))["entries"]
                          if e["type"] != "chunk"])
    assert names[0][:3] == ["usr/bin/env", "etc/ld.so.cache", ".prefetch.landmark"]   # the file's order
    assert sorted(names[0][3:]) == ["etc/passwd", "usr/bin/python3"]
    assert names[1][:2] == ["app/main.py", ".prefetch.landmark"] and names[1][2:] == ["app/util.py"]


def test_bad_lists_and_a_driver_without_one_are_one_line_errors(tmp_path, registry):
    nydus = {"fs_chunk_size": "0x1000"}
    out = accelctl(tmp_path, "nydus", nydus, "--prefetch-from", "nope.txt", f"{registry.host}/a:v1")
    assert (out.returncode, out.stderr) == (2, "accelctl: error: --prefetch-from: cannot read the prefetch list "
                                               "nope.txt: No such file or directory\n")
    (tmp_path / "rel.txt").write_text("# ok\n/usr/bin\n./app/main.py\n")
    out = accelctl(tmp_path, "nydus", nydus, "--prefetch-from", "rel.txt", f"{registry.host}/a:v1")
    assert (out.returncode, out.stderr) == (2, "accelctl: error: --prefetch-from: rel.txt:3: './app/main.py' is a "
                                               "relative path; record paths from the image's root (/app/main.py)\n")
    (tmp_path / "empty.txt").write_text("# nothing recorded\n\n")
    out = accelctl(tmp_path, "nydus", nydus, "--prefetch-from", "empty.txt", f"{registry.host}/a:v1")
    assert out.returncode == 2 and "empty.txt lists no path" in out.stderr
    (tmp_path / "ok.txt").write_text("/usr/bin\n")
    out = accelctl(tmp_path, "soci", {}, "--prefetch-from", "ok.txt", f"{registry.host}/a:v1")
    assert (out.returncode, out.stderr) == (2, "accelctl: error: --prefetch-from: driver soci takes no prefetch "
                                               "list (it has no prioritized_files option); estargz and nydus do\n")


def test_help_names_the_flag():
    out = subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", "convert", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--prefetch-from FILE" in out.stdout


def test_a_recorded_path_with_a_comma_does_not_share_a_cache_entry_with_two_paths(tmp_path, registry, client):
    """The layer cache keys an eStargz layer by its prioritized files: the recorded path '/app/x,/app/y' (a file
    in the directory 'app/x,') and the list ['/app/x', '/app/y'] are different layers, not one cache entry."""
    files = {"app/x": b"x" * 100, "app/y": b"y" * 100, "app/x,/app/y": b"comma", "app/z": b"z"}
    push_image(client, f"{registry.host}/prefetch/comma:v1", [simple_tar(files)])
    src = f"{registry.host}/prefetch/comma:v1"
    (tmp_path / "app.prefetch").write_text("/app/x,/app/y\n")
    opts = {"compression": "estargz", "compression_level": 1}

    def first_names(out) -> list[str]:
        assert out.returncode == 0, out.stderr
        target = out.stdout.strip()
        (layer,) = json.loads(client.get_manifest(parse(target)).raw)["layers"]
        with open(pulled(client, target, layer, tmp_path / "layer"), "rb") as fh:
            return [e["name"] for e in read_toc(fh, oci.Descriptor.from_dict(layer))["entries"]
                    if e["type"] not in ("chunk", "dir")][:3]

    recorded = accelctl(tmp_path, "estargz", opts, "--prefetch-from", "app.prefetch", src)
    assert first_names(recorded)[:2] == ["app/x,/app/y", ".prefetch.landmark"]
    listed = accelctl(tmp_path, "estargz", dict(opts, prioritized_files=["/app/x", "/app/y"]), src)  # same work dir
    assert first_names(listed) == ["app/x", "app/y", ".prefetch.landmark"]
