import errno
import gzip
import hashlib
import io
import os
import subprocess
import sys

import pytest
import zstandard

from acceleration_sdk.compression import open_decompressed
from acceleration_sdk.content import ContentStore
from acceleration_sdk.errors import ContentError, DigestMismatchError, LayerError, StorageFullError


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_ingest_verifies_and_renames(tmp_path):
    store = ContentStore(tmp_path)
    d = store.write_bytes(b"hello", expected=digest(b"hello"))
    assert store.has(d) and store.read_bytes(d) == b"hello"
    assert os.listdir(store.ingest_dir) == []


def test_wrong_digest_leaves_nothing(tmp_path):
    store = ContentStore(tmp_path)
    with pytest.raises(DigestMismatchError) as info:
        store.write_bytes(b"hello", expected=digest(b"other"))
    assert info.value.digest == digest(b"other") and info.value.actual == digest(b"hello")
    assert not store.has(digest(b"hello")) and os.listdir(store.ingest_dir) == []


def test_already_exists_is_success(tmp_path):
    store = ContentStore(tmp_path)
    assert store.write_bytes(b"x") == store.write_bytes(b"x")
    assert len(os.listdir(store.blobs_dir)) == 1


def test_invalid_digest_is_refused(tmp_path):
    with pytest.raises(ContentError):
        ContentStore(tmp_path).path("sha256:../../etc/passwd")


def test_gc_evicts_least_used_then_least_recent_and_skips_leased(tmp_path):
    store = ContentStore(tmp_path)
    a, b, c = (store.write_bytes(bytes([i]) * 1000) for i in range(3))
    store.open(a).close()  # a used twice
    with store.lease() as lease:
        lease.add([b])
        evicted = store.gc(threshold=2000)
    assert evicted == [c]  # b is least used but leased; c next
    assert store.has(a) and store.has(b) and not store.has(c)
    assert store.gc(threshold=500) == [b, a]  # lease gone: least used first


def test_gc_ignores_leases_of_dead_processes(tmp_path):
    store = ContentStore(tmp_path)
    a = store.write_bytes(b"a" * 100)
    with store._db() as db:  # a conversion that crashed: its pid no longer runs
        pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True).stdout.strip()
        db.execute("INSERT INTO leases(id, digest, pid) VALUES ('x', ?, ?)", (a, int(pid)))
    assert store.gc(threshold=0) == [a]


def test_enospc_becomes_storage_full(tmp_path, monkeypatch):
    store = ContentStore(tmp_path)
    w = store.writer()

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    w._fh = Full()
    with pytest.raises(StorageFullError, match="no space left"):
        w.write(b"x")
    assert os.listdir(store.ingest_dir) == []


def test_layer_cache_roundtrip(tmp_path):
    store = ContentStore(tmp_path)
    store.cache_put("k", {"digest": "sha256:" + "1" * 64, "size": 1, "mediaType": "x"}, "sha256:" + "2" * 64)
    assert store.cache_get("k")[1] == "sha256:" + "2" * 64
    assert store.cache_get("missing") is None


PAYLOAD = os.urandom(300_000) + b"\0" * 3_000_000


@pytest.mark.parametrize("compress", [
    lambda d: d,
    lambda d: gzip.compress(d),
    lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:]),  # many members (eStargz-like)
    lambda d: zstandard.ZstdCompressor().compress(d[:5000]) + zstandard.ZstdCompressor().compress(d[5000:]),
])
def test_open_decompressed_reads_across_members_and_frames(compress):
    out = open_decompressed(io.BytesIO(compress(PAYLOAD))).read()
    assert out == PAYLOAD


@pytest.mark.parametrize("blob", [gzip.compress(PAYLOAD)[:-100], b"\x1f\x8b\x08\x00garbage" * 10])
def test_broken_gzip_is_a_layer_error(blob):
    with pytest.raises(LayerError):
        open_decompressed(io.BytesIO(blob)).read()


def test_thousands_of_small_gzip_members():
    parts = [os.urandom(50) for _ in range(5000)]
    blob = b"".join(gzip.compress(p) for p in parts)
    assert open_decompressed(io.BytesIO(blob)).read() == b"".join(parts)


def test_zero_padding_after_the_last_member_in_a_later_read():
    from acceleration_sdk.compression import READ_SIZE
    payload = os.urandom(READ_SIZE)  # incompressible: the member ends just under one read
    blob = gzip.compress(payload)
    padded = blob + b"\0" * (3 * READ_SIZE)
    assert open_decompressed(io.BytesIO(padded)).read() == payload


def test_gc_removes_stale_ingest_files_only(tmp_path):
    import time as _time
    store = ContentStore(tmp_path)
    old, fresh = store.writer(), store.writer()
    old.write(b"partial layer of a killed worker")
    os.utime(old.path, (_time.time() - 7200, _time.time() - 7200))
    store.gc(threshold=10**9, stale_after=3600)
    assert not os.path.exists(old.path) and os.path.exists(fresh.path)
