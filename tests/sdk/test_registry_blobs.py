"""RegistryClient blob transfer against the real docker-registry: push (monolithic, chunked, exists,
mount), streamed download, digest checks, and memory that does not grow with the blob."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from acceleration_sdk.errors import ContentError, DigestMismatchError, NotFoundError, StorageFullError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_of(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    block = hashlib.sha512(str(seed).encode()).digest()
    while len(out) < size:
        out += block
        block = hashlib.sha512(block).digest()
    return bytes(out[:size])


def uploads(registry, repo: str) -> list[str]:
    """The registry's access-log lines for upload requests (POST/PATCH/PUT) into ``repo``."""
    return re.findall(rf'"(?:POST|PATCH|PUT) /v2/{re.escape(repo)}/blobs/uploads/[^"]*"', registry.log())


def test_small_blob_is_pushed_monolithically_and_pulled_back(registry):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/small:v1")
    data = blob_of(1000)
    assert client.push_blob(ref, sha(data), len(data), io.BytesIO(data)) == "uploaded"
    lines = uploads(registry, "app/small")
    assert len(lines) == 2 and lines[0].startswith('"POST') and lines[1].startswith('"PUT')  # POST + PUT
    out = io.BytesIO()
    assert client.download_blob(ref, sha(data), out, size=len(data)) == len(data)
    assert out.getvalue() == data


def test_big_blob_is_pushed_in_chunks_from_a_path(registry, tmp_path):
    client = RegistryClient(chunk_size=64 << 10, monolithic_max=100 << 10)
    ref = parse(f"{registry.host}/app/big:v1")
    data = blob_of(300_000, seed=1)
    path = tmp_path / "blob"
    path.write_bytes(data)
    sent = []
    assert client.push_blob(ref, sha(data), len(data), path, progress=sent.append) == "uploaded"
    assert sum(sent) == len(data)
    patches = [line for line in uploads(registry, "app/big") if line.startswith('"PATCH')]
    assert len(patches) == 5  # 300000 bytes in 64 KiB chunks
    out = io.BytesIO()
    got = []
    client.download_blob(ref, sha(data), out, progress=got.append)
    assert out.getvalue() == data and sum(got) == len(data)


def test_existing_blob_is_not_uploaded_again(registry):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/exists:v1")
    data = blob_of(500, seed=2)
    assert client.push_blob(ref, sha(data), len(data), io.BytesIO(data)) == "uploaded"
    before = len(uploads(registry, "app/exists"))
    assert client.blob_exists(ref, sha(data)) is True
    assert client.push_blob(ref, sha(data), len(data), io.BytesIO(data)) == "exists"
    assert len(uploads(registry, "app/exists")) == before
    assert client.blob_exists(ref, sha(b"other")) is False


def test_cross_repository_mount_uploads_nothing(registry):
    client = RegistryClient()
    src = parse(f"{registry.host}/library/source:v1")
    dst = parse(f"{registry.host}/library/target:v1")
    data = blob_of(200_000, seed=3)
    client.push_blob(src, sha(data), len(data), io.BytesIO(data))

    class Unreadable(io.RawIOBase):
        def read(self, n=-1):
            raise AssertionError("a mount must not read the source")

    assert client.push_blob(dst, sha(data), len(data), Unreadable(), mount_from=src) == "mounted"
    lines = uploads(registry, "library/target")
    assert len(lines) == 1 and "mount=" in lines[0] and "from=library%2Fsource" in lines[0]
    assert client.blob_exists(dst, sha(data))
    out = io.BytesIO()
    client.download_blob(dst, sha(data), out)
    assert out.getvalue() == data


def test_mount_of_a_blob_the_source_lacks_falls_back_to_upload(registry):
    client = RegistryClient()
    src = parse(f"{registry.host}/library/empty:v1")
    dst = parse(f"{registry.host}/library/dest:v1")
    data = blob_of(3000, seed=4)
    assert client.push_blob(dst, sha(data), len(data), io.BytesIO(data), mount_from=src) == "uploaded"
    assert client.blob_exists(dst, sha(data))


def test_empty_blob_roundtrip(registry):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/empty:v1")
    assert client.push_blob(ref, sha(b""), 0, io.BytesIO(b"")) == "uploaded"
    out = io.BytesIO()
    assert client.download_blob(ref, sha(b""), out, size=0) == 0


def test_pushing_content_under_the_wrong_digest_is_refused(registry):
    client = RegistryClient(chunk_size=1024, monolithic_max=2048)
    ref = parse(f"{registry.host}/app/wrong:v1")
    claimed = sha(b"what we claim")
    for data in (blob_of(100, seed=5), blob_of(5000, seed=6)):  # monolithic (registry checks), chunked (we check)
        with pytest.raises(DigestMismatchError) as info:
            client.push_blob(ref, claimed, len(data), io.BytesIO(data))
        assert info.value.digest == claimed and info.value.actual == sha(data)
        assert claimed in str(info.value) and sha(data) in str(info.value)
    assert client.blob_exists(ref, claimed) is False


def test_a_path_of_the_wrong_size_is_refused_before_upload(registry, tmp_path):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/size:v1")
    path = tmp_path / "b"
    path.write_bytes(b"12345")
    with pytest.raises(ContentError, match="is 5 bytes"):
        client.push_blob(ref, sha(b"123456"), 6, path)
    assert uploads(registry, "app/size") == []


def test_download_checks_the_expected_size(registry):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/sz:v1")
    data = blob_of(4000, seed=7)
    client.push_blob(ref, sha(data), len(data), io.BytesIO(data))
    with pytest.raises(DigestMismatchError, match="more than the expected 100 bytes"):
        client.download_blob(ref, sha(data), io.BytesIO(), size=100)
    with pytest.raises(DigestMismatchError, match="got 4000 bytes, expected 5000"):
        client.download_blob(ref, sha(data), io.BytesIO(), size=5000)


def test_download_writes_everything_to_a_raw_writer_and_reports_a_full_disk(registry):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/raw:v1")
    data = blob_of(50_000, seed=8)
    client.push_blob(ref, sha(data), len(data), io.BytesIO(data))

    class Trickle:  # a raw writer that takes at most 999 bytes a call
        def __init__(self):
            self.buf = bytearray()

        def write(self, b):
            self.buf += b[:999]
            return min(len(b), 999)

    sink = Trickle()
    assert client.download_blob(ref, sha(data), sink) == len(data) and bytes(sink.buf) == data

    class Full:
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageFullError, match=sha(data)):
        client.download_blob(ref, sha(data), Full())


def test_missing_blob_is_not_found(registry):
    client = RegistryClient()
    ref = parse(f"{registry.host}/app/none:v1")
    with pytest.raises(NotFoundError) as info:
        client.download_blob(ref, sha(b"nothing"), io.BytesIO())
    assert str(info.value) == f"blob unknown to registry: {registry.host}/app/none@{sha(b'nothing')}"


MEMORY_SCRIPT = textwrap.dedent("""
    import io, json, resource, sys
    from acceleration_sdk.reference import parse
    from acceleration_sdk.registry import RegistryClient

    host, path, digest, size, out = sys.argv[1:6]
    size = int(size)
    client = RegistryClient()
    ref = parse(host + "/mem/big:v1")
    warm = b"warm-up"
    import hashlib
    client.push_blob(ref, "sha256:" + hashlib.sha256(warm).hexdigest(), len(warm), io.BytesIO(warm))
    client.download_blob(ref, "sha256:" + hashlib.sha256(warm).hexdigest(), io.BytesIO())
    kib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base = kib()
    how = client.push_blob(ref, digest, size, path)
    after_push = kib()
    with open(out, "wb") as fh:
        n = client.download_blob(ref, digest, fh, size=size)
    after_pull = kib()
    print(json.dumps({"how": how, "n": n, "base": base, "push": after_push, "pull": after_pull}))
""")


@pytest.mark.slow
def test_200_mb_blob_streams_with_flat_memory(registry, tmp_path):
    size = 200 << 20
    path = tmp_path / "big"
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        for i in range(200):
            piece = os.urandom(1 << 20)
            h.update(piece)
            fh.write(piece)
    digest = "sha256:" + h.hexdigest()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, registry.host, str(path), digest, str(size), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("peak RSS KiB:", result)
    assert result["how"] == "uploaded" and result["n"] == size
    assert os.path.getsize(out) == size
    # Peak RSS may grow by buffers (a 1 MiB copy buffer, socket buffers), never by the blob: < 40 MiB of 200.
    assert result["push"] - result["base"] < 40 << 10, result
    assert result["pull"] - result["base"] < 40 << 10, result
    with open(out, "rb") as fh:
        assert "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest() == digest
