"""Transport policy against real registries: plain HTTP only for loopback and for ``insecure`` hosts that
refuse TLS (remembered per host, never for every host), ``insecure`` TLS without verification, and
unreachable hosts.

Non-loopback host names are needed to see the policy; a FAKE resolver (``fake_dns``) maps a few
``*.test`` names to 127.0.0.1 so the real registries on loopback answer for them.
"""
from __future__ import annotations

import hashlib
import io
import socket
import threading
import time

import pytest

from acceleration_sdk.config import from_dict
from acceleration_sdk.errors import UnreachableError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from acceleration_sdk.registry.transport import is_loopback
from tests.support.registry import RegistryServer, free_port

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


@pytest.fixture
def fake_dns(monkeypatch):
    """A fake resolver: ``*.test`` names resolve to 127.0.0.1, ``nowhere.test`` does not resolve."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "nowhere.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if isinstance(host, str) and host.endswith(".test"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def tls_registry(tmp_path):
    with RegistryServer(tmp_path / "tls", tls=True) as server:
        yield server


def test_loopback_hosts_use_plain_http():
    assert all(is_loopback(h) for h in ("localhost:5000", "127.0.0.1", "127.1.2.3:80", "[::1]:5000", "[::1]"))
    assert not any(is_loopback(h) for h in ("registry.example.com", "10.0.0.1:5000", "localhost.example.com",
                                            "[fe80::1]:5000"))


def test_localhost_name_reaches_a_plain_registry(registry):
    client = RegistryClient()
    ref = parse(f"localhost:{registry.port}/lo/app:v1")
    assert client.push_blob(ref, "sha256:" + hashlib.sha256(b"lo").hexdigest(), 2,
                            io.BytesIO(b"lo")) == "uploaded"
    assert '"POST /v2/lo/app/blobs/uploads/' in registry.log()


def test_plain_http_fallback_is_per_host(registry, fake_dns):
    insecure_host = f"plain-insecure.test:{registry.port}"
    secure_host = f"plain-secure.test:{registry.port}"
    client = RegistryClient(from_dict({"provider": {"source": {insecure_host: {"insecure": True}}}}),
                            retries=1, backoff=0)
    # insecure: true and the host refuses TLS -> plain HTTP for that host.
    assert client.head_manifest(parse(f"{insecure_host}/x/app:v1")) is None
    assert '"HEAD /v2/x/app/manifests/v1 HTTP/1.1" 404' in registry.log()
    assert client._transport.scheme(insecure_host) == "http"
    # The same registry under a name that is not insecure: still TLS only, so it fails.
    with pytest.raises(UnreachableError) as info:
        client.head_manifest(parse(f"{secure_host}/y/app:v1"))
    assert secure_host in str(info.value) and "TLS" in str(info.value)
    assert client._transport.scheme(secure_host) == "https"
    assert "/v2/y/app/" not in registry.log()


def test_insecure_tls_host_skips_verification_without_falling_back(tls_registry, fake_dns):
    host = f"tls-insecure.test:{tls_registry.port}"
    client = RegistryClient(from_dict({"provider": {"source": {host: {"insecure": True}}}}))
    ref = parse(f"{host}/t/app:v1")
    digest = "sha256:" + hashlib.sha256(b"tls").hexdigest()
    assert client.push_blob(ref, digest, 3, io.BytesIO(b"tls")) == "uploaded"
    assert client._transport.scheme(host) == "https"  # TLS worked: no fallback
    out = io.BytesIO()
    client.download_blob(ref, digest, out)
    assert out.getvalue() == b"tls"


def test_untrusted_certificate_on_a_secure_host_is_unreachable(tls_registry, fake_dns):
    host = f"tls-secure.test:{tls_registry.port}"
    with pytest.raises(UnreachableError) as info:
        RegistryClient(retries=0).get_manifest(parse(f"{host}/t/app:v1"))
    assert host in str(info.value) and "TLS certificate not trusted" in str(info.value)
    assert "/v2/t/app/" not in tls_registry.log()


def test_refused_connection_is_unreachable_naming_the_host():
    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(UnreachableError) as info:
        RegistryClient(retries=2, backoff=0).get_manifest(parse(f"{host}/a/b:v1"))
    assert str(info.value) == f"pull manifest {host}/a/b:v1: cannot reach {host}: connection refused"
    assert info.value.__cause__ is not None  # translated with `from`


def test_unresolvable_host_is_unreachable(fake_dns):
    with pytest.raises(UnreachableError, match="cannot reach nowhere.test: host name does not resolve"):
        RegistryClient(retries=0).blob_exists(parse("nowhere.test/a/b:v1"), "sha256:" + "0" * 64)


def test_silent_server_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (backlog), never answers
    host = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        started = time.monotonic()
        with pytest.raises(UnreachableError, match=f"cannot reach {host}: timed out"):
            RegistryClient(timeout=0.3, retries=1, backoff=0).get_manifest(parse(f"{host}/a/b:v1"))
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_one_session_serves_concurrent_calls(registry):
    client = RegistryClient()
    errors = []

    def work(i):
        try:
            data = f"concurrent {i}".encode() * 100
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            ref = parse(f"{registry.host}/c/app{i % 3}:v1")
            client.push_blob(ref, digest, len(data), io.BytesIO(data))
            out = io.BytesIO()
            client.download_blob(ref, digest, out)
            assert out.getvalue() == data
        except Exception as exc:  # noqa: BLE001 (collected and asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_one_backoff_rule_for_every_retry():
    from acceleration_sdk.registry.transport import MAX_RETRY_AFTER, Transport

    t = RegistryClient(backoff=0.5)._transport
    assert isinstance(t, Transport)
    assert [t.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert t.delay(20) == MAX_RETRY_AFTER  # doubling stops at the cap
    assert (t.delay(1, retry_after=7.0), t.delay(3, retry_after=0.0), t.delay(1, retry_after=1e6)) == (
        7.0, 0.0, MAX_RETRY_AFTER)  # the registry's Retry-After wins, within the cap
