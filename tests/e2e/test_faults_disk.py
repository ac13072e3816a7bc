"""A full disk under work_dir (a real 8 MiB tmpfs) and GC against running conversions (leases).

- A converted layer that does not fit: StorageFullError with a message naming work_dir, nothing left in
  ``ingest/`` or ``tmp/``, nothing tagged; GC then frees the space and the conversion succeeds.
- GC never deletes a blob a running conversion uses: a conversion paused after converting its layer keeps
  its blobs while another conversion's GC (threshold 0) runs; a lease held by another live process too.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk.content import ContentStore
from acceleration_sdk.engine import convert, store_for
from acceleration_sdk.errors import StorageFullError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support.images import push_image, simple_tar

TMPFS_SIZE = 8 << 20


# a hang in a pool thread cannot be interrupted by a signal: on timeout, dump every stack and stop the run
pytestmark = pytest.mark.timeout(120, method="thread")


def make_cfg(work_dir, *, threshold: str = "1000MB", compression: str = "estargz"):
    return config_mod.from_dict({
        "provider": {"work_dir": str(work_dir), "gcpolicy": {"threshold": threshold}},
        "converter": {"driver": {"type": "estargz",
                                 "config": {"compression_level": 1, "compression": compression}},
                      "rules": [{"tag_suffix": "-esgz"}]},
    })


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs mounted for the test (we are root in CI), unmounted afterwards."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def client(registry):
    with RegistryClient(retries=1, backoff=0.01) as c:
        yield c


def free_bytes(path) -> int:
    return shutil.disk_usage(path).free


def tags(client, repo):
    return sorted(client.list_tags(parse(f"{repo}:x")))


def assert_no_leftovers(store: ContentStore) -> None:
    assert os.listdir(store.ingest_dir) == []
    assert os.listdir(store.tmp_dir) == []


@pytest.mark.parametrize("compression", ["estargz", "zstdchunked"])
def test_layer_larger_than_the_disk(small_disk, registry, client, compression):
    repo = f"{registry.host}/full/{compression}"
    push_image(client, f"{repo}:v1", [simple_tar({"random": os.urandom(10 << 20)})])  # does not compress
    cfg = make_cfg(small_disk, compression=compression)
    with pytest.raises(StorageFullError) as info:
        convert(cfg, f"{repo}:v1", client=client)
    message = str(info.value)
    assert "\n" not in message and "no space left" in message and "work_dir" in message, message
    assert_no_leftovers(store_for(cfg))
    assert free_bytes(small_disk) > TMPFS_SIZE - (1 << 20)  # the partial blob is gone
    assert tags(client, repo) == ["v1"]


def test_gc_frees_space_and_the_conversion_then_fits(small_disk, registry, client):
    first, second = f"{registry.host}/gc/first", f"{registry.host}/gc/second"
    push_image(client, f"{first}:v1", [simple_tar({"random": os.urandom(5 << 20)})])
    push_image(client, f"{second}:v1", [simple_tar({"random": os.urandom(4 << 20)})])
    cfg = make_cfg(small_disk)  # the threshold is far away: the engine's own GC keeps everything
    store = store_for(cfg)

    convert(cfg, f"{first}:v1", client=client)
    assert store.usage() > 5 << 20  # the first conversion's blobs stay in the store
    with pytest.raises(StorageFullError):
        convert(cfg, f"{second}:v1", client=client)  # ~4 MB more does not fit next to them
    assert_no_leftovers(store)
    assert tags(client, second) == ["v1"]

    evicted = store.gc(0)
    assert evicted and store.usage() == 0
    assert free_bytes(small_disk) > TMPFS_SIZE - (1 << 20)
    result = convert(cfg, f"{second}:v1", client=client)
    assert tags(client, second) == ["v1", "v1-esgz"] and result.digest
    smaller = f"{registry.host}/gc/smaller"
    push_image(client, f"{smaller}:v1", [simple_tar({"small": os.urandom(1 << 20)})])
    convert(cfg, f"{smaller}:v1", client=client)  # and a smaller one fits next to it
    assert tags(client, smaller) == ["v1", "v1-esgz"]
    assert_no_leftovers(store)


# ------------------------------------------------------------------------------ leases

def test_gc_of_another_conversion_never_deletes_blobs_a_running_conversion_uses(tmp_path, registry, client):
    work = tmp_path / "work"
    slow, fast = f"{registry.host}/lease/slow", f"{registry.host}/lease/fast"
    push_image(client, f"{slow}:v1", [simple_tar({"a": os.urandom(300_000)}), simple_tar({"b": os.urandom(1000)})])
    push_image(client, f"{fast}:v1", [simple_tar({"c": os.urandom(1000)})])
    store = store_for(make_cfg(work))
    converted = threading.Event()
    resume = threading.Event()
    made: list[str] = []

    def pause_after_converting(event):
        if event.phase == "convert" and event.message == "converted":
            made.append(event.layer)
            if len(made) == 2:
                converted.set()
                assert resume.wait(60)

    outcome: dict = {}

    def run_slow():
        try:
            outcome["result"] = convert(make_cfg(work), f"{slow}:v1", client=RegistryClient(),
                                        progress=pause_after_converting)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=run_slow)
    worker.start()
    try:
        assert converted.wait(60)
        with store._db() as db:
            leased = {d for (d,) in db.execute("SELECT digest FROM leases")}
            in_use = {json.loads(d)["digest"] for (d,) in db.execute("SELECT descriptor FROM layer_cache")}
        assert in_use and in_use <= leased  # the converted layers are leased while the conversion runs
        # another conversion finishes with the most eager GC there is
        convert(make_cfg(work, threshold="0"), f"{fast}:v1", client=RegistryClient())
        assert all(store.has(d) for d in in_use)  # still there
        assert store.usage() > 0
    finally:
        resume.set()
        worker.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert tags(client, slow) == ["v1", "v1-esgz"]
    manifest = json.loads(client.get_manifest(parse(f"{slow}:v1-esgz")).raw)
    assert {layer["digest"] for layer in manifest["layers"]} == in_use
    # once no conversion runs, the same GC takes everything: the leases were what kept the blobs
    assert store.gc(0) and store.usage() == 0


LEASE_HOLDER = """
import sys
from acceleration_sdk.content import ContentStore
store = ContentStore(sys.argv[1])
with store.lease() as lease:
    lease.add([sys.argv[2]])
    print("leased", flush=True)
    sys.stdin.readline()
"""


def test_lease_held_by_another_live_process_survives_gc_and_a_dead_ones_does_not(tmp_path):
    store = ContentStore(tmp_path / "content")
    kept = store.write_bytes(b"used by a conversion in another process")
    other = store.write_bytes(b"used by nobody")
    holder = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, store.root, kept], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "leased"
        assert store.gc(0) == [other]
        assert store.has(kept) and not store.has(other)
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert store.gc(0) == [kept]  # the lease ended with the conversion
    # a process that died holding a lease (no cleanup ran) does not pin blobs forever
    again = store.write_bytes(b"pinned by a crashed conversion")
    crashed = subprocess.run([sys.executable, "-c",
                              "import os, sys\nfrom acceleration_sdk.content import ContentStore\n"
                              "s = ContentStore(sys.argv[1])\n"
                              "l = s.lease().__enter__(); l.add([sys.argv[2]]); os._exit(9)",
                              store.root, again], cwd=os.getcwd())
    assert crashed.returncode == 9
    assert store.gc(0) == [again]


GC_LOOP = """
import sys, time
from acceleration_sdk.content import ContentStore
store = ContentStore(sys.argv[1])
print("running", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    store.gc(0)
    time.sleep(0.002)  # as eager as a GC gets, while leaving the conversion a turn at the index
"""


@pytest.mark.slow
def test_conversion_succeeds_while_another_process_collects_garbage_nonstop(tmp_path, registry, client):
    """Another worker's GC (threshold 0, in a loop) runs all through a conversion: nothing the conversion
    wrote or reused may disappear between being written (or found) and being leased."""
    repo = f"{registry.host}/lease/race"
    push_image(client, f"{repo}:v1", [simple_tar({f"f{i}": os.urandom(2000)}) for i in range(8)])
    cfg = make_cfg(tmp_path / "work")
    store = store_for(cfg)
    gc = subprocess.Popen([sys.executable, "-c", GC_LOOP, store.root], stdout=subprocess.PIPE, text=True,
                          cwd=os.getcwd())
    try:
        assert gc.stdout.readline().strip() == "running"
        for attempt in range(2):  # the first run converts every layer; the second finds them converted
            result = convert(cfg, f"{repo}:v1", client=client)
            assert result.digest
    finally:
        gc.kill()
        gc.wait()
    assert tags(client, repo) == ["v1", "v1-esgz"]
