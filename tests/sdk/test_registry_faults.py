"""Failures the real docker-registry cannot be made to produce, played by an in-process FAKE registry:
corrupt bytes, wrong manifest content for a digest, schema1, 429/503 then success, Retry-After,
truncated bodies, dropped connections, tag pages, redirects to another host.

``FakeRegistry`` answers only what each test scripts; it is a fake, not a model of distribution.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from acceleration_sdk import oci
from acceleration_sdk.config import from_dict
from acceleration_sdk.errors import (ContentError, DigestMismatchError, RegistryError, UnreachableError,
                                     UnsupportedMediaTypeError)
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from acceleration_sdk.registry.transport import MAX_RETRY_AFTER, _CappedRetry


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ the fake

class FakeRegistry:
    """An in-process FAKE registry on loopback. ``on(method, path, *responders)`` scripts the answers to a
    path (query ignored): each request takes the next responder, the last one repeats. ``hits`` records
    ``(method, path_with_query, headers, body_length)``."""

    def __init__(self):
        self.script: dict[tuple[str, str], list] = {}
        self.hits: list[tuple[str, str, dict, int]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except (ConnectionError, OSError):
                    self.close_connection = True

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.hits.append((self.command, self.path, dict(self.headers), len(body)))
                responders = fake.script.get((self.command, urlsplit(self.path).path))
                if not responders:
                    return reply(404, {"errors": [{"code": "NAME_UNKNOWN", "message": "not scripted"}]})(self)
                responder = responders.pop(0) if len(responders) > 1 else responders[0]
                responder(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def on(self, method: str, path: str, *responders) -> None:
        self.script[(method, path)] = list(responders)

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _, _ in self.hits if m == method and urlsplit(p).path == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def reply(status: int, body=b"", headers: dict | None = None):
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body

    def respond(h):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
    return respond


def truncated(body: bytes, cut: int, headers: dict | None = None):
    """200 announcing the whole body, then the connection closes after ``cut`` bytes."""
    def respond(h):
        h.send_response(200)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[:cut])
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)
        h.close_connection = True
    return respond


def ranged(body: bytes):
    """Serves ``Range: bytes=N-`` with 206, else 200."""
    def respond(h):
        rng = h.headers.get("Range", "")
        if rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            return reply(206, body[start:], {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})(h)
        return reply(200, body)(h)
    return respond


def drop(h):
    """Close the connection without an answer."""
    h.connection.shutdown(socket.SHUT_RDWR)
    h.close_connection = True


@pytest.fixture
def fake():
    server = FakeRegistry()
    yield server
    server.close()


def client(**kw) -> RegistryClient:
    kw.setdefault("retries", 3)
    kw.setdefault("backoff", 0.01)
    return RegistryClient(**kw)


# ------------------------------------------------------------------------------------------------ content

def test_corrupt_blob_bytes_are_a_digest_mismatch(fake):
    good, bad = b"the real layer", b"the fake layer"
    fake.on("GET", f"/v2/r/blobs/{sha(good)}", reply(200, bad))
    with pytest.raises(DigestMismatchError) as info:
        client().download_blob(parse(f"{fake.host}/r:v1"), sha(good), io.BytesIO(), size=len(good))
    assert info.value.digest == sha(good) and info.value.actual == sha(bad)
    assert sha(good) in str(info.value) and sha(bad) in str(info.value)


def test_manifest_content_that_differs_from_its_digest(fake):
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []})
    other = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [], "x": 1})
    fake.on("GET", f"/v2/r/manifests/{sha(manifest)}", reply(200, other, {"Content-Type": oci.OCI_INDEX}))
    with pytest.raises(DigestMismatchError) as info:
        client().get_manifest(parse(f"{fake.host}/r@{sha(manifest)}"))
    assert info.value.actual == sha(other) and sha(manifest) in str(info.value)


def test_schema1_is_refused_with_a_clear_message(fake):
    schema1 = json.dumps({"schemaVersion": 1, "name": "r", "tag": "old", "fsLayers": [], "history": []}).encode()
    fake.on("GET", "/v2/r/manifests/old", reply(200, schema1, {"Content-Type": oci.DOCKER_SCHEMA1_SIGNED}))
    with pytest.raises(UnsupportedMediaTypeError, match="schema 1.*deprecated"):
        client().get_manifest(parse(f"{fake.host}/r:old"))


def test_body_media_type_wins_over_the_header(fake):
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.DOCKER_LIST, "manifests": []})
    fake.on("GET", "/v2/r/manifests/v1", reply(200, manifest, {"Content-Type": "text/plain"}))
    assert client().get_manifest(parse(f"{fake.host}/r:v1")).media_type == oci.DOCKER_LIST


def test_oversized_manifest_is_refused(fake):
    fake.on("GET", "/v2/r/manifests/big", reply(200, b"{" + b" " * (4 << 20) + b"}"))
    with pytest.raises(RegistryError, match="more than the 4194304 allowed"):
        client().get_manifest(parse(f"{fake.host}/r:big"))


# ------------------------------------------------------------------------------------------------ retries

def test_429_with_retry_after_then_success(fake):
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []})
    fake.on("GET", "/v2/r/manifests/v1",
            reply(429, {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}, {"Retry-After": "1"}),
            reply(200, manifest))
    started = time.monotonic()
    assert client().get_manifest(parse(f"{fake.host}/r:v1")).raw == manifest
    assert time.monotonic() - started >= 0.9
    assert fake.count("GET", "/v2/r/manifests/v1") == 2


def test_503_then_success_and_503_for_good(fake):
    data = b"blob"
    fake.on("GET", f"/v2/r/blobs/{sha(data)}", reply(503), reply(503), reply(200, data))
    out = io.BytesIO()
    client().download_blob(parse(f"{fake.host}/r:v1"), sha(data), out)
    assert out.getvalue() == data and fake.count("GET", f"/v2/r/blobs/{sha(data)}") == 3

    fake.on("HEAD", "/v2/r/manifests/down", reply(503))
    with pytest.raises(RegistryError) as info:
        client(retries=2).head_manifest(parse(f"{fake.host}/r:down"))
    assert info.value.status == 503 and fake.count("HEAD", "/v2/r/manifests/down") == 3


def test_retry_after_is_capped():
    assert _CappedRetry().parse_retry_after("3600") == MAX_RETRY_AFTER


def test_manifest_put_is_retried_whole_after_429(fake):
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []})
    fake.on("PUT", "/v2/r/manifests/v1", reply(429, b"", {"Retry-After": "1"}),
            reply(201, b"", {"Docker-Content-Digest": sha(manifest)}))
    started = time.monotonic()
    assert client().put_manifest(parse(f"{fake.host}/r:v1"), manifest, oci.OCI_INDEX) == sha(manifest)
    assert time.monotonic() - started >= 0.9 and fake.count("PUT", "/v2/r/manifests/v1") == 2


def test_dropped_connection_on_a_read_is_retried(fake):
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []})
    fake.on("GET", "/v2/r/manifests/v1", drop, reply(200, manifest))
    assert client().get_manifest(parse(f"{fake.host}/r:v1")).raw == manifest


def test_truncated_manifest_is_read_again(fake):
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []})
    fake.on("GET", "/v2/r/manifests/v1", truncated(manifest, 10), reply(200, manifest))
    assert client().get_manifest(parse(f"{fake.host}/r:v1")).raw == manifest
    fake.on("GET", "/v2/r/manifests/v2", truncated(manifest, 10))
    with pytest.raises(UnreachableError, match="connection closed before the whole body arrived"):
        client(retries=1).get_manifest(parse(f"{fake.host}/r:v2"))


# ------------------------------------------------------------------------------------------------ downloads

def test_truncated_blob_resumes_with_range(fake):
    data = bytes(range(256)) * 400
    fake.on("GET", f"/v2/r/blobs/{sha(data)}", truncated(data, 30000), ranged(data))
    out = io.BytesIO()
    got = []
    assert client().download_blob(parse(f"{fake.host}/r:v1"), sha(data), out, size=len(data),
                                  progress=got.append) == len(data)
    assert out.getvalue() == data and sum(got) == len(data)
    assert fake.hits[-1][2].get("Range") == "bytes=30000-"


def test_truncated_blob_restarts_when_range_is_ignored(fake):
    data = bytes(range(256)) * 400
    fake.on("GET", f"/v2/r/blobs/{sha(data)}", truncated(data, 30000), reply(200, data))
    out = io.BytesIO(b"keep:")
    out.seek(5)
    client().download_blob(parse(f"{fake.host}/r:v1"), sha(data), out)
    assert out.getvalue() == b"keep:" + data

    class Pipe:  # cannot seek: a restart is impossible
        def __init__(self):
            self.n = 0

        def write(self, b):
            self.n += len(b)

    fake.on("GET", f"/v2/r/blobs/{sha(data)}", truncated(data, 30000), reply(200, data))
    with pytest.raises(UnreachableError, match="cannot resume"):
        client().download_blob(parse(f"{fake.host}/r:v1"), sha(data), Pipe())


def test_redirected_blob_download_sends_no_credentials_to_the_other_host(fake):
    storage = FakeRegistry()
    try:
        data = b"stored elsewhere"
        storage.on("GET", "/bucket/blob", reply(200, data))
        fake.on("GET", f"/v2/r/blobs/{sha(data)}",
                reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "login"}]},
                      {"WWW-Authenticate": 'Basic realm="fake"'}),
                reply(307, b"", {"Location": f"http://{storage.host}/bucket/blob"}))
        cfg = from_dict({"provider": {"source": {fake.host: {"auth": "dXNlcjpwYXNzd29yZA=="}}}})  # user:password
        out = io.BytesIO()
        client(config=cfg).download_blob(parse(f"{fake.host}/r:v1"), sha(data), out)
        assert out.getvalue() == data
        assert fake.hits[-1][2].get("Authorization", "").startswith("Basic ")
        assert "Authorization" not in storage.hits[-1][2]
    finally:
        storage.close()


# ------------------------------------------------------------------------------------------------ uploads

def script_upload(fake, data: bytes, *puts, patches=()):
    fake.on("HEAD", f"/v2/r/blobs/{sha(data)}", reply(404))
    fake.on("POST", "/v2/r/blobs/uploads/", reply(202, b"", {"Location": "/v2/r/blobs/uploads/u1?_state=s"}))
    if patches:
        fake.on("PATCH", "/v2/r/blobs/uploads/u1", *patches)
    fake.on("PUT", "/v2/r/blobs/uploads/u1", *puts)


def test_upload_is_retried_whole_and_a_path_is_reopened(fake, tmp_path):
    data = b"x" * 5000
    path = tmp_path / "blob"
    path.write_bytes(data)
    script_upload(fake, data, reply(500, {"errors": [{"code": "UNKNOWN", "message": "disk hiccup"}]}),
                  reply(201, b"", {"Docker-Content-Digest": sha(data)}))
    assert client().push_blob(parse(f"{fake.host}/r:v1"), sha(data), len(data), path) == "uploaded"
    puts = [h for h in fake.hits if h[0] == "PUT"]
    assert fake.count("POST", "/v2/r/blobs/uploads/") == 2 and [p[3] for p in puts] == [5000, 5000]
    assert "digest=sha256%3A" in puts[-1][1] and "_state=s" in puts[-1][1]


def test_chunked_upload_restarts_after_a_dropped_patch(fake):
    data = bytes(range(256)) * 40  # 10240 bytes, 4 KiB chunks
    script_upload(fake, data, reply(201, b"", {"Docker-Content-Digest": sha(data)}),
                  patches=[drop] + [reply(202, b"", {"Location": "/v2/r/blobs/uploads/u1?_state=s",
                                                     "Range": f"0-{end}"}) for end in (4095, 8191, 10239)])
    c = client(chunk_size=4096, monolithic_max=1024)
    assert c.push_blob(parse(f"{fake.host}/r:v1"), sha(data), len(data), io.BytesIO(data)) == "uploaded"
    patches = [h for h in fake.hits if h[0] == "PATCH"]
    assert fake.count("POST", "/v2/r/blobs/uploads/") == 2
    assert [p[2]["Content-Range"] for p in patches[-3:]] == ["0-4095", "4096-8191", "8192-10239"]


def test_non_seekable_source_gets_one_attempt(fake):
    data = b"y" * 100
    script_upload(fake, data, reply(500, {"errors": [{"code": "UNKNOWN", "message": "boom"}]}),
                  reply(201, b"", {"Docker-Content-Digest": sha(data)}))

    class Stream(io.RawIOBase):
        def __init__(self):
            self.inner = io.BytesIO(data)

        def readable(self):
            return True

        def seekable(self):
            return False

        def readinto(self, b):
            return self.inner.readinto(b)

    with pytest.raises(RegistryError, match="boom") as info:
        client().push_blob(parse(f"{fake.host}/r:v1"), sha(data), len(data), Stream())
    assert info.value.status == 500 and fake.count("POST", "/v2/r/blobs/uploads/") == 1


def test_short_source_is_a_content_error(fake):
    data = b"z" * 100
    script_upload(fake, data, reply(201))
    with pytest.raises(ContentError, match="ended at 50 bytes, expected 100"):
        client().push_blob(parse(f"{fake.host}/r:v1"), sha(data), 100, io.BytesIO(data[:50]))


# ------------------------------------------------------------------------------------------------ tags

def test_tag_list_follows_link_pages(fake):
    fake.on("GET", "/v2/r/tags/list",
            reply(200, {"name": "r", "tags": ["a", "b"]}, {"Link": '</v2/r/tags/list?last=b&n=2>; rel="next"'}),
            reply(200, {"name": "r", "tags": ["c"]}))
    assert client().list_tags(parse(f"{fake.host}/r")) == ["a", "b", "c"]
    assert fake.hits[-1][1] == "/v2/r/tags/list?last=b&n=2"


def test_error_message_is_one_line(fake):
    fake.on("DELETE", f"/v2/r/manifests/{sha(b'm')}",
            reply(405, {"errors": [{"code": "UNSUPPORTED", "message": "deletes\nare\n  disabled"}]}))
    with pytest.raises(RegistryError) as info:
        client().delete_manifest(parse(f"{fake.host}/r:v1"), sha(b"m"))
    assert str(info.value) == (f"delete manifest {fake.host}/r@{sha(b'm')}: {fake.host} answered "
                               "deletes are disabled (UNSUPPORTED, HTTP 405)")
    assert info.value.registry_code == "UNSUPPORTED"


@pytest.mark.parametrize("status", [400, 404, 403])
def test_a_lone_surrogate_in_a_registry_error_becomes_loggable_text(fake, status):
    """JSON's "\\ud800" decodes to a string UTF-8 cannot encode: the error's text must be storable and loggable."""
    doc = b'{"errors": [{"code": "MANIFEST_\\ud800", "message": "bad \\ud800 thing"}]}'
    fake.on("GET", "/v2/r/manifests/v1", reply(status, doc, {"Content-Type": "application/json"}))
    with pytest.raises(RegistryError) as info:
        client(retries=0).get_manifest(parse(f"{fake.host}/r:v1"))
    text = str(info.value)
    assert "bad ? thing" in text and text.encode("utf-8")
    assert info.value.registry_code == "MANIFEST_?"
