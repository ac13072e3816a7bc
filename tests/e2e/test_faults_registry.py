"""Registry faults during a conversion, against the real docker-registry (behind tests/support/faultproxy.py
where a fault must be injected): 5xx/429 answers, connections closed mid-body, the registry killed mid-push.

Each fault is either retried with backoff until the conversion succeeds, or the conversion raises an
AccelError whose one-line message names the registry's error; in every failure ``<tag>-esgz`` is never
written (the tag list and the registry's own request log say so).
"""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import RegistryError, UnreachableError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support.faultproxy import FaultProxy, call, cut_request, cut_response, drop, garbage, status
from tests.support.images import push_image, simple_tar

RETRIES = 2
BACKOFF = 0.01  # seconds: keep the suite fast; the policy, not the pause, is under test


# a hang in a pool thread cannot be interrupted by a signal: on timeout, dump every stack and stop the run
pytestmark = pytest.mark.timeout(120, method="thread")


def make_cfg(tmp_path):
    return config_mod.from_dict({
        "provider": {"work_dir": str(tmp_path / "work")},
        "converter": {"driver": {"type": "estargz", "config": {"compression_level": 1}},
                      "rules": [{"tag_suffix": "-esgz"}]},
    })


def fast_client(**kw) -> RegistryClient:
    kw.setdefault("retries", RETRIES)
    kw.setdefault("backoff", BACKOFF)
    return RegistryClient(timeout=10, **kw)


@pytest.fixture
def proxy(registry):
    p = FaultProxy(registry.host).start()
    yield p
    p.stop()


def seed(registry, name: str, *, big: int = 0) -> str:
    """Push a two-layer image straight to the registry (no faults); returns the repository name."""
    layers = [simple_tar({"etc/hostname": b"acceld\n", "bin/tool": os.urandom(3000)}),
              simple_tar({"data/blob": os.urandom(big or 200_000)})]
    with RegistryClient() as client:
        push_image(client, f"{registry.host}/{name}:v1", layers)
    return name


def tags(registry, name: str) -> list[str]:
    with RegistryClient() as client:
        return sorted(client.list_tags(parse(f"{registry.host}/{name}:x")))


def assert_not_tagged(registry, name: str) -> None:
    assert tags(registry, name) == ["v1"]
    # the registry's own log is the witness: no PUT of the target tag ever reached it
    assert f"PUT /v2/{name}/manifests/v1-esgz" not in registry.log()


def assert_converted(registry, name: str, result) -> None:
    assert tags(registry, name) == ["v1", "v1-esgz"]
    with RegistryClient() as client:
        fetched = client.get_manifest(parse(f"{registry.host}/{name}:v1-esgz"))
        manifest = json.loads(fetched.raw)
        assert fetched.digest == result.digest
        for layer in manifest["layers"]:  # every blob the tag points at is really there
            assert client.blob_exists(parse(f"{registry.host}/{name}:x"), layer["digest"])
        assert client.blob_exists(parse(f"{registry.host}/{name}:x"), manifest["config"]["digest"])


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text and text
    return text


# ------------------------------------------------------------------------------ transient: retried, succeeds

TRANSIENT = {
    "manifest-get-503": ("GET", r"/manifests/v1$", status(503)),
    "config-get-500": ("GET", r"/blobs/sha256:", status(500, registry_code="UNKNOWN")),
    "blob-head-503": ("HEAD", r"/blobs/sha256:", status(503)),
    "upload-post-503": ("POST", r"/blobs/uploads/$", status(503)),
    "upload-put-500": ("PUT", r"/blobs/uploads/", status(500, registry_code="UNKNOWN")),
    "manifest-put-503": ("PUT", r"/manifests/", status(503)),
    "tag-put-429": ("PUT", r"/manifests/v1-esgz$", status(429, headers={"Retry-After": "0"},
                                                           registry_code="TOOMANYREQUESTS")),
    "blob-get-429": ("GET", r"/blobs/sha256:", status(429, headers={"Retry-After": "0"},
                                                      registry_code="TOOMANYREQUESTS")),
}


@pytest.mark.parametrize("case", sorted(TRANSIENT))
def test_transient_error_answers_are_retried_and_the_conversion_succeeds(tmp_path, registry, proxy, case):
    name = seed(registry, f"transient/{case}")
    method, pattern, fault = TRANSIENT[case]
    rule = proxy.add(method, pattern, fault, times=RETRIES)  # one fewer than the attempts we make
    result = convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client())
    assert rule.applied == RETRIES  # the faults really happened ...
    relayed = [h for h in proxy.requests(method, pattern) if isinstance(h[2], int)]
    assert relayed  # ... and a retry of the same request then reached the registry
    assert_converted(registry, name, result)


def test_an_upload_answered_201_for_another_digest_is_pushed_again(tmp_path, registry, proxy):
    """A converted blob streams to the target while it is written; the push phase then trusts a 201 instead of
    asking again (no HEAD). A 201 naming another digest (a confused proxy) must not count as our blob: it is
    uploaded again from the store, and every blob the tag points at is really there."""
    name = seed(registry, "wrong-201")
    other = "sha256:" + "0" * 64
    rule = proxy.add("PUT", r"/blobs/uploads/", status(201, headers={"Docker-Content-Digest": other}), times=1)
    result = convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client())
    assert rule.applied == 1
    assert_converted(registry, name, result)


def test_retry_after_is_honoured(tmp_path, registry, proxy):
    name = seed(registry, "retry-after")
    proxy.add("GET", r"/manifests/v1$", status(429, headers={"Retry-After": "1"}, registry_code="TOOMANYREQUESTS"),
              times=1)
    started = time.monotonic()
    result = convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client())
    assert time.monotonic() - started >= 1.0  # waited as asked, not BACKOFF
    assert_converted(registry, name, result)


def test_whole_operation_retries_back_off_exponentially(tmp_path, registry, proxy):
    """A manifest PUT refused twice is sent again after backoff, then 2 x backoff (no Retry-After given)."""
    name = seed(registry, "backoff")
    rule = proxy.add("PUT", r"/manifests/sha256:", status(503), times=2)
    started = time.monotonic()
    result = convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client(backoff=0.3))
    assert rule.applied == 2
    assert time.monotonic() - started >= 0.3 + 0.6
    assert_converted(registry, name, result)


def test_chunked_upload_survives_503_and_a_broken_patch(tmp_path, registry, proxy):
    """Uploads in 64 KiB PATCHes: a 503 on one PATCH and a connection cut inside another are retried whole.

    The first two PATCHes (the uploads the engine streams while converting, one per layer) fail too, so
    the layers are pushed again from the store, in pieces."""
    name = seed(registry, "chunked", big=300_000)
    streamed = proxy.add("PATCH", r"/blobs/uploads/", status(503), times=2)
    first = proxy.add("PATCH", r"/blobs/uploads/", status(503), times=1)
    second = proxy.add("PATCH", r"/blobs/uploads/", cut_request(10_000), times=1)
    client = fast_client(chunk_size=64 << 10, monolithic_max=64 << 10)
    result = convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=client)
    assert streamed.applied == 2 and first.applied == 1 and second.applied == 1
    assert len(proxy.requests("PATCH", r"/blobs/uploads/")) > 8  # 300 kB in 64 KiB pieces, plus the retries
    assert_converted(registry, name, result)


def test_blob_body_cut_mid_way_is_resumed_with_range(tmp_path, registry, proxy):
    name = seed(registry, "resume", big=500_000)
    with RegistryClient() as client:
        manifest = json.loads(client.get_manifest(parse(f"{registry.host}/{name}:v1")).raw)
    big = manifest["layers"][1]["digest"]
    rule = proxy.add("GET", rf"/blobs/{big}$", cut_response(100_000), times=2)
    result = convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client())
    assert rule.applied == 2
    ranges = [h[3].get("Range") for h in proxy.requests("GET", rf"/blobs/{big}$")]
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]  # resumed where each cut happened
    assert_converted(registry, name, result)


def test_manifest_body_cut_mid_way_is_read_again(tmp_path, registry, proxy):
    name = seed(registry, "manifest-cut")
    rule = proxy.add("GET", r"/manifests/v1$", cut_response(50), times=1)
    result = convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client())
    assert rule.applied == 1 and len(proxy.requests("GET", r"/manifests/v1$")) == 2
    assert_converted(registry, name, result)


def test_monolithic_upload_cut_mid_body_is_retried(tmp_path, registry, proxy):
    name = seed(registry, "upload-cut")
    rule = proxy.add("PUT", r"/blobs/uploads/", cut_request(1000), times=1)
    result = convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client())
    assert rule.applied == 1
    assert_converted(registry, name, result)


# ------------------------------------------------------------------------------ persistent: fails, no tag

PERSISTENT = {
    # (method, pattern, fault, what the message must say, exception class)
    "manifest-get-503": ("GET", r"/manifests/v1$", status(503, message="registry in maintenance"),
                         "registry in maintenance (UNAVAILABLE, HTTP 503)", RegistryError),
    "blob-get-500": ("GET", r"/blobs/sha256:", status(500, registry_code="UNKNOWN", message="disk on fire"),
                     "disk on fire (UNKNOWN, HTTP 500)", RegistryError),
    "upload-post-503": ("POST", r"/blobs/uploads/$", status(503, message="read-only mode"),
                        "read-only mode (UNAVAILABLE, HTTP 503)", RegistryError),
    "manifest-put-500": ("PUT", r"/manifests/sha256:", status(500, registry_code="UNKNOWN", message="db down"),
                         "db down (UNKNOWN, HTTP 500)", RegistryError),
    "tag-put-429": ("PUT", r"/manifests/v1-esgz$", status(429, registry_code="TOOMANYREQUESTS",
                                                          headers={"Retry-After": "0"}, message="slow down"),
                    "slow down (TOOMANYREQUESTS, HTTP 429)", RegistryError),
    "blob-body-always-cut": ("GET", r"/blobs/sha256:", cut_response(100),
                             "connection closed before the whole body arrived", UnreachableError),
    "upload-always-cut": ("PUT", r"/blobs/uploads/", cut_request(100), "connection", UnreachableError),
    "tag-put-dropped": ("PUT", r"/manifests/v1-esgz$", drop(), "connection", UnreachableError),
    "manifest-get-garbage": ("GET", r"/manifests/v1$", garbage(), "the answer was not HTTP", UnreachableError),
}


@pytest.mark.parametrize("case", sorted(PERSISTENT))
def test_persistent_fault_fails_naming_the_error_and_tags_nothing(tmp_path, registry, proxy, case):
    name = seed(registry, f"persistent/{case}")
    method, pattern, fault, says, cls = PERSISTENT[case]
    rule = proxy.add(method, pattern, fault)
    started = time.monotonic()
    with pytest.raises(cls) as info:
        convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client())
    assert time.monotonic() - started < 20  # bounded retries, small backoff
    message = one_line(info.value)
    assert says in message and proxy.host in message
    # retried, but a bounded number of times: each failing request was tried at most 1 + RETRIES times
    assert RETRIES + 1 <= rule.applied <= 4 * (RETRIES + 1) * (RETRIES + 1)
    assert_not_tagged(registry, name)


def test_tag_never_written_when_a_child_manifest_push_fails(tmp_path, registry, proxy):
    """Children before parents: the manifest PUT by digest fails, so the tag PUT is never even tried."""
    name = seed(registry, "order")
    proxy.add("PUT", r"/manifests/sha256:", status(503))
    with pytest.raises(RegistryError):
        convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client())
    assert proxy.requests("PUT", r"/manifests/v1-esgz$") == []
    assert_not_tagged(registry, name)


# ------------------------------------------------------------------------------ the registry dies

class _Killer:
    """A progress sink that SIGKILLs the registry at the first push event: layers may already be uploaded
    (the engine streams them while converting), the config, manifest and tag are not."""

    def __init__(self, registry, restart_after: float | None = None):
        self.registry, self.restart_after = registry, restart_after
        self.killed = threading.Event()
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def __call__(self, event) -> None:
        if event.phase != "push":
            return
        with self._lock:
            if self.killed.is_set():
                return
            self.registry.proc.kill()
            self.registry.proc.wait()
            self.killed.set()
            if self.restart_after is not None:
                def later():
                    time.sleep(self.restart_after)
                    self.registry.start()
                self.thread = threading.Thread(target=later, daemon=True)
                self.thread.start()


def test_registry_killed_mid_push_fails_clearly_and_tags_nothing(tmp_path, registry):
    name = seed(registry, "killed", big=2_000_000)
    killer = _Killer(registry)
    with pytest.raises(UnreachableError) as info:
        convert(make_cfg(tmp_path), f"{registry.host}/{name}:v1", client=fast_client(), progress=killer)
    assert killer.killed.is_set()
    message = one_line(info.value)
    assert "connection refused" in message and registry.host in message
    registry.start()  # same data, same port: what did it keep?
    assert_not_tagged(registry, name)


def test_registry_killed_mid_push_and_back_within_the_retries_succeeds(tmp_path, registry):
    name = seed(registry, "phoenix", big=2_000_000)
    killer = _Killer(registry, restart_after=0.5)
    client = fast_client(retries=6, backoff=0.1)  # ~6 s of patience in all
    result = convert(make_cfg(tmp_path), f"{registry.host}/{name}:v1", client=client, progress=killer)
    killer.thread.join()
    assert killer.killed.is_set()
    assert_converted(registry, name, result)


def test_registry_behind_a_gateway_dies_mid_push(tmp_path, registry, proxy):
    """A load balancer in front of a dead registry answers 502: retried, then a RegistryError naming it."""
    name = seed(registry, "gateway")
    rule = proxy.add("POST", r"/blobs/uploads/$", call(registry.stop), times=1)
    with pytest.raises(RegistryError) as info:
        convert(make_cfg(tmp_path), f"{proxy.host}/{name}:v1", client=fast_client())
    assert rule.applied == 1
    assert "HTTP 502" in one_line(info.value)
    registry.start()
    assert_not_tagged(registry, name)
