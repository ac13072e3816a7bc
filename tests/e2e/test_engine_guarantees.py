"""What the engine guarantees whatever the driver does, against a real registry on loopback:

* a converted blob is committed and pushed only after every source the driver opened was read to its end
  and verified (a driver that stops half-way fails, and the registry gets no blob, manifest or tag);
* trailing zeros a tar reader leaves (end-of-archive padding) are fine;
* the engine's own client, store, threads and pipes are closed on every path, failures included;
* the Docker v1 image IDs are cleared from a config whose diff_ids changed.
"""
from __future__ import annotations

import gc
import gzip
import io
import json
import os
import tarfile
import threading

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.driver import ConvertedLayer, Driver, LayerDriver
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import ConversionError, DriverError, LayerError, NotFoundError
from acceleration_sdk.oci import Descriptor
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support.images import push_image, sha, simple_tar

PADDING = 64 << 10  # zeros after the tar's end-of-archive marker, as some tar writers leave


def make_cfg(tmp_path):
    return config_mod.from_dict({
        "provider": {"work_dir": str(tmp_path / "work")},
        "converter": {"driver": {"type": "estargz", "config": {"compression_level": 1}},
                      "rules": [{"tag_suffix": "-esgz"}]},
    })


def read_exactly(src, n: int) -> bytes:
    parts, got = [], 0
    while got < n and (data := src.read(min(n - got, 65536))):
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class _TestDriver(LayerDriver):
    """A test driver (not a fake: it runs inside the real engine); subclasses say how it reads."""

    def name(self) -> str:
        return "test-" + type(self).__name__.lower()

    def version(self) -> str:
        return "1"

    def commit_gzip(self, content, tar: bytes) -> ConvertedLayer:
        with content.blob_writer() as out:
            out.write(gzip.compress(tar, mtime=0))
            digest = out.commit()
        return ConvertedLayer(Descriptor(oci.OCI_LAYER_GZIP, digest, out.size), sha(tar))


class StopsHalfWay(_TestDriver):
    """Reads half of the source and commits what it read, with the source still open."""

    def __init__(self, what: str):
        super().__init__({})
        self.what = what

    def convert_layer(self, content, desc):
        opener = content.open_uncompressed if self.what == "uncompressed" else content.open_blob
        with opener(desc) as src, content.blob_writer() as out:
            data = read_exactly(src, desc.size // 2)
            out.write(gzip.compress(data, mtime=0))
            digest = out.commit()
        return ConvertedLayer(Descriptor(oci.OCI_LAYER_GZIP, digest, out.size), sha(data))


class TarfileCopy(_TestDriver):
    """Copies the layer with Python's tarfile, which stops at the end-of-archive marker, padding unread."""

    read: list[int] = []

    def convert_layer(self, content, desc):
        counted = _Counting()
        with content.open_uncompressed(desc) as src:
            counted.src = src
            buf = io.BytesIO()
            with tarfile.open(fileobj=counted, mode="r|") as tin, \
                    tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tout:
                for member in tin:
                    tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
            self.read.append(counted.n)
            return self.commit_gzip(content, buf.getvalue())


class _Counting:
    src = None
    n = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.n += len(data)
        return data


class SwallowsTheFailure(_TestDriver):
    """Leaves a source half-read (the engine refuses at once), swallows that error and commits anyway."""

    def convert_layer(self, content, desc):
        try:
            with content.open_blob(desc) as src:
                src.read(100)
        except LayerError:
            pass
        return self.commit_gzip(content, simple_tar({"made": b"up"}))


class ForgetsToCommit(_TestDriver):
    """Reads the whole layer but returns a descriptor of a blob it never wrote."""

    def convert_layer(self, content, desc):
        with content.open_uncompressed(desc) as src:
            tar = src.read()
        return ConvertedLayer(Descriptor(oci.OCI_LAYER_GZIP, sha(b"never written"), 13), sha(tar))


class Explodes(_TestDriver):
    """Opens the source and a writer (a download thread, a pipe, an upload thread), then raises."""

    def convert_layer(self, content, desc):
        with content.open_uncompressed(desc) as src, content.blob_writer() as out:
            out.write(src.read(1000))
            raise RuntimeError("driver bug")


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def pushed_after(registry, mark: int) -> list[str]:
    """The PUT requests the registry logged after ``mark`` (blob upload ends, manifests, tags)."""
    return [line for line in registry.log()[mark:].splitlines() if '"PUT ' in line]


@pytest.mark.parametrize("what", ["uncompressed", "blob"])
def test_a_driver_that_stops_half_way_fails_and_the_registry_gets_nothing(tmp_path, registry, client, what):
    repo = f"{registry.host}/half/{what}"
    src = push_image(client, f"{repo}:v1", [simple_tar({"f": os.urandom(200_000)})])
    layer = src.manifest["layers"][0]["digest"]
    mark = len(registry.log())
    with pytest.raises(LayerError) as info:
        convert(make_cfg(tmp_path), f"{repo}:v1", driver=StopsHalfWay(what))
    message = str(info.value)
    assert layer in message and "stopped reading" in message and "verified" in message, message
    assert info.value.digest == layer
    assert client.list_tags(parse(f"{repo}:x")) == ["v1"]
    assert pushed_after(registry, mark) == []  # no blob upload finished, no manifest, no tag
    assert not os.listdir(tmp_path / "work" / "content" / "ingest")


@pytest.mark.parametrize("driver, error, words", [
    (SwallowsTheFailure({}), LayerError, "was not verified"),
    (ForgetsToCommit({}), DriverError, "did not commit"),
])
def test_a_driver_cannot_talk_its_way_past_the_checks(tmp_path, registry, client, driver, error, words):
    repo = f"{registry.host}/sly"
    push_image(client, f"{repo}:v1", [simple_tar({"f": os.urandom(100_000)})])
    mark = len(registry.log())
    with pytest.raises(error, match=words):
        convert(make_cfg(tmp_path), f"{repo}:v1", driver=driver)
    assert pushed_after(registry, mark) == []


def test_trailing_zeros_left_unread_are_fine(tmp_path, registry, client):
    repo = f"{registry.host}/padded"
    tar = simple_tar({"etc/motd": b"hello", "big": os.urandom(100_000)})
    push_image(client, f"{repo}:v1", [tar + bytes(PADDING)])
    TarfileCopy.read = []
    result = convert(make_cfg(tmp_path), f"{repo}:v1", driver=TarfileCopy())
    assert TarfileCopy.read and TarfileCopy.read[0] < len(tar) + PADDING  # the padding was left to the engine
    manifest = json.loads(client.get_manifest(parse(result.target)).raw)
    blob = io.BytesIO()
    client.download_blob(parse(repo + ":x"), manifest["layers"][0]["digest"], blob)
    names = tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.getvalue()))).getnames()
    assert names == ["etc/motd", "big"]

    # the built-in driver, which no longer drains the source itself, converts the same image
    assert not convert(make_cfg(tmp_path / "esgz"), f"{repo}:v1").skipped


class Identity(Driver):
    """A plain Driver (whole images): converts to the very same image."""

    def name(self) -> str:
        return "identity"

    def version(self) -> str:
        return "1"

    def convert(self, content, source):
        return content.root


def test_a_plain_driver_converts_whole_images_and_a_layer_driver_is_run_by_the_engine(tmp_path, registry, client):
    repo = f"{registry.host}/plain"
    src = push_image(client, f"{repo}:v1", [simple_tar({"f": b"x"})])
    result = convert(make_cfg(tmp_path), f"{repo}:v1", driver=Identity())
    assert result.digest == src.digest and client.get_manifest(parse(result.target)).digest == src.digest
    with pytest.raises(DriverError, match="acceleration_sdk.convert"):
        TarfileCopy({}).convert(None, f"{repo}:v1")


def _open_fds() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:  # the fd listdir itself used
            pass
    return sorted(out)


@pytest.mark.parametrize("case", ["driver raises", "missing tag", "success"])
def test_convert_leaves_no_thread_and_no_fd_behind(tmp_path, registry, client, case):
    repo = f"{registry.host}/leak"
    push_image(client, f"{repo}:v1", [simple_tar({"f": os.urandom(300_000)}), simple_tar({"g": os.urandom(300_000)})])
    source, driver = {"driver raises": (f"{repo}:v1", Explodes({})), "missing tag": (f"{repo}:nope", None),
                      "success": (f"{repo}:v1", None)}[case]
    expected = {"driver raises": ConversionError, "missing tag": NotFoundError, "success": None}[case]

    def run(work):
        if expected is None:
            convert(make_cfg(work), source, driver=driver)
            return
        with pytest.raises(expected) as info:
            convert(make_cfg(work), source, driver=driver)
        del info  # its traceback holds the engine's frames (and what they opened) alive

    run(tmp_path / "warm")  # one-time imports and lazily made objects
    gc.collect()  # what earlier tests left for the cycle collector must not close during the measured run
    threads, fds = set(threading.enumerate()), _open_fds()
    run(tmp_path / "measured")
    assert set(threading.enumerate()) == threads
    assert _open_fds() == fds


def test_docker_v1_image_ids_are_cleared_when_diff_ids_change(tmp_path, registry, client):
    repo = f"{registry.host}/v1ids"
    src = push_image(client, f"{repo}:v0", [simple_tar({"f": b"x" * 100})], docker=True)
    config = {**src.config, "config": {**src.config["config"], "Image": "sha256:" + "ab" * 32},
              "container_config": {"Image": "sha256:" + "cd" * 32, "Cmd": ["sh"]}}
    raw_config = json.dumps(config).encode()
    client.push_blob(src.ref, sha(raw_config), len(raw_config), io.BytesIO(raw_config))
    manifest = {**src.manifest, "config": {**src.manifest["config"], "digest": sha(raw_config),
                                           "size": len(raw_config)}}
    client.put_manifest(parse(f"{repo}:v1"), json.dumps(manifest).encode(), oci.DOCKER_MANIFEST)

    result = convert(make_cfg(tmp_path), f"{repo}:v1")
    converted = json.loads(client.get_manifest(parse(result.target)).raw)
    blob = io.BytesIO()
    client.download_blob(parse(repo + ":x"), converted["config"]["digest"], blob)
    out = json.loads(blob.getvalue())
    assert "Image" not in out["config"] and "Image" not in out["container_config"]
    assert out["config"]["Env"] == ["PATH=/bin"] and out["container_config"]["Cmd"] == ["sh"]
    assert out["rootfs"]["diff_ids"] != config["rootfs"]["diff_ids"]
