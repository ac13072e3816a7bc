"""Blob transfer: streamed, hashed downloads with resume, and monolithic/chunked uploads with mount.

Nothing here holds a blob in memory: downloads are copied 1 MiB at a time into the caller's file while
hashing; uploads read the source through :class:`BoundedReader`, which requests/urllib3 stream from.
"""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import time
from typing import BinaryIO, Callable
from urllib.parse import urlencode

from ..errors import ContentError, DigestMismatchError, RegistryError, StorageFullError, UnreachableError
from ..reference import Reference
from .auth import repository_scope
from .transport import WIRE_ERRORS, Transport, wire_reason

log = logging.getLogger("acceleration_sdk.registry")

COPY_SIZE = 1 << 20  # 1 MiB per read/write while downloading: big enough to be fast, small enough to not matter
OCTET_STREAM = "application/octet-stream"
Progress = Callable[[int], None]


def hasher(digest: str):
    """A hashlib object for ``digest``'s algorithm (sha256, sha384, sha512)."""
    algo, sep, hexpart = digest.partition(":")
    if not sep or algo not in ("sha256", "sha384", "sha512") or not hexpart:
        raise ContentError(f"unsupported digest {digest!r}", digest=digest)
    return hashlib.new(algo)


def _digest_of(h) -> str:
    return f"{h.name}:{h.hexdigest()}"


# ---------------------------------------------------------------------------------------------- download

def download(t: Transport, ref: Reference, digest: str, dst: BinaryIO, size: int | None,
             progress: Progress | None) -> int:
    """GET the blob into ``dst``, resuming with ``Range`` after a broken connection; verify size and digest."""
    blob = ref.with_digest(digest)
    what = f"pull blob {blob}"
    scopes = (repository_scope(ref.repository, "pull"),)
    path = f"/v2/{ref.repository}/blobs/{digest}"
    h = hasher(digest)
    try:
        start = dst.tell() if dst.seekable() else None
    except (OSError, AttributeError, ValueError):
        start = None
    written = 0
    failures = 0
    while True:
        headers = {"Accept-Encoding": "identity"}  # the digest is over the stored bytes: no transfer decoding
        if written:
            headers["Range"] = f"bytes={written}-"
        # Connection failures before the answer are retried by urllib3; this loop handles broken bodies.
        resp = t.request("GET", ref, path, scopes=scopes, what=what, headers=headers)
        try:
            if resp.status_code not in (200, 206):
                raise t.error(resp, blob, what, unknown="blob unknown")
            if written and resp.status_code == 200:
                # The server ignored Range: start over, if the destination lets us.
                if start is None:
                    raise UnreachableError(f"{what}: the connection broke after {written} bytes and "
                                           f"{ref.api_host} cannot resume", reference=str(blob))
                dst.seek(start)
                dst.truncate()
                h, written = hasher(digest), 0
            elif resp.status_code == 206 and not resp.headers.get("Content-Range", "").startswith(
                    f"bytes {written}-"):
                raise RegistryError(f"{what}: {ref.api_host} resumed at the wrong offset", reference=str(blob))
            for chunk in _body(resp):
                h.update(chunk)
                _write_all(dst, chunk, digest)
                written += len(chunk)
                if progress is not None:
                    progress(len(chunk))
                if size is not None and written > size:
                    raise DigestMismatchError(f"blob {digest} of {ref.name}: the registry sent more than the "
                                              f"expected {size} bytes", digest=digest, actual="")
            break
        except _BrokenBody as broken:
            failures += 1
            exc = broken.__cause__
            if failures > t.retries:
                raise UnreachableError(f"{what}: {ref.api_host}: {wire_reason(exc)} after {written} bytes",
                                       reference=str(blob)) from exc
            log.debug("%s: %s after %d bytes; resuming", what, wire_reason(exc), written)
            time.sleep(t.delay(failures))
        finally:
            resp.close()
    actual = _digest_of(h)
    if size is not None and written != size:
        raise DigestMismatchError(f"blob {digest} of {ref.name}: got {written} bytes, expected {size} "
                                  f"(content hashes to {actual})", digest=digest, actual=actual)
    if actual != digest:
        raise DigestMismatchError(f"blob {digest} of {ref.name}: content hashes to {actual}",
                                  digest=digest, actual=actual)
    return written


class _BrokenBody(Exception):
    """A response body that broke off on the wire (the cause is the wire error)."""


def _body(resp):
    """The raw body in ``COPY_SIZE`` pieces; wire errors while reading become :class:`_BrokenBody`."""
    pieces = resp.raw.stream(COPY_SIZE, decode_content=False)
    while True:
        try:
            piece = next(pieces)
        except StopIteration:
            return
        except WIRE_ERRORS as exc:
            raise _BrokenBody() from exc
        yield piece


def _write_all(dst: BinaryIO, data: bytes, digest: str) -> None:
    """``dst.write`` until all is written (raw files may write less); ENOSPC is :class:`StorageFullError`."""
    try:
        n = dst.write(data)
        while n is not None and n < len(data):
            data = data[n:]
            n = dst.write(data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageFullError(f"no space left writing blob {digest}", digest=digest) from exc
        raise


# ---------------------------------------------------------------------------------------------- upload

class BoundedReader(io.RawIOBase):
    """Bytes ``[offset, offset + length)`` of the blob in ``state.fh``, hashed as they are read.

    requests sizes the body with ``len()``; urllib3 rewinds it with ``seek`` before a retry. The source is
    only seeked when the read position is not where the file already is, so a non-seekable source works
    as long as nothing has to be sent twice.
    """

    def __init__(self, state: "_UploadState", offset: int, length: int):
        super().__init__()
        self._state, self._offset, self._length, self._pos = state, offset, length, 0

    def __len__(self) -> int:
        return self._length - self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        new = {os.SEEK_SET: pos, os.SEEK_CUR: self._pos + pos, os.SEEK_END: self._length + pos}[whence]
        self._pos = max(0, min(new, self._length))
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = self._length - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n == 0:
            return b""
        data = self._state.read_at(self._offset + self._pos, n)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _UploadState:
    """One upload attempt: the open source, where it is, the running hash and the progress callback."""

    def __init__(self, fh: BinaryIO, base: int | None, digest: str, size: int, progress: Progress | None):
        self.fh, self.base = fh, base  # blob byte p is at file offset base + p; None: not seekable
        self.digest, self.size, self.progress = digest, size, progress
        self.cursor = 0  # the blob position the file is at
        self.hash = hasher(digest)
        self.hashed = 0  # bytes hashed so far, in order from 0
        self.hash_ok = True

    def read_at(self, at: int, n: int) -> bytes:
        if at != self.cursor:
            if self.base is None:
                raise ContentError(f"the source of blob {self.digest} cannot be rewound to send it again",
                                   digest=self.digest)
            self.fh.seek(self.base + at)
            self.cursor = at
        data = self.fh.read(n)
        if not data:
            raise ContentError(f"the source of blob {self.digest} ended at {at} bytes, expected {self.size}",
                               digest=self.digest)
        self.cursor += len(data)
        if self.hash_ok and at == self.hashed:
            self.hash.update(data)
            self.hashed += len(data)
        else:
            self.hash_ok = False  # bytes sent again after a rewind: the registry verifies instead of us
        if self.progress is not None:
            self.progress(len(data))
        return data

    def check(self, ref: Reference) -> None:
        """Refuse to commit bytes that do not hash to the digest we announce; names the real digest."""
        if self.hash_ok and self.hashed == self.size:
            actual = _digest_of(self.hash)
            if actual != self.digest:
                raise DigestMismatchError(f"blob {self.digest} for {ref.name}: the source hashes to {actual}",
                                          digest=self.digest, actual=actual)


def _open_source(src, attempt: int, start: int | None, size: int, digest: str):
    """``(file, owned, base)``: the source open at the blob's start; ``base`` None when it cannot seek."""
    if isinstance(src, (str, os.PathLike)):
        fh = open(src, "rb")
        have = os.fstat(fh.fileno()).st_size
        if have != size:
            fh.close()
            raise ContentError(f"{os.fspath(src)} is {have} bytes, blob {digest} is {size}", digest=digest)
        return fh, True, 0
    if start is None:  # not seekable: push() gives it a single attempt
        return src, False, None
    src.seek(start)
    return src, False, start


def _with_query(location: str, **params: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode(params)


def push(t: Transport, ref: Reference, digest: str, size: int, src, mount_from: Reference | None,
         progress: Progress | None, chunk_size: int, monolithic_max: int, exists: Callable[[], bool]) -> str:
    """Push one blob: "exists", "mounted" or "uploaded" (see RegistryClient.push_blob)."""
    hasher(digest)  # refuse unknown algorithms before any request
    if size < 0:
        raise ContentError(f"blob {digest}: negative size {size}", digest=digest)
    if isinstance(src, (str, os.PathLike)):
        have = os.path.getsize(src)  # a wrong file is refused before any request
        if have != size:
            raise ContentError(f"{os.fspath(src)} is {have} bytes, blob {digest} is {size}", digest=digest)
    if exists():
        return "exists"
    blob = ref.with_digest(digest)
    what = f"push blob {blob}"
    scopes = (repository_scope(ref.repository, "pull,push"),)
    mount_repo = ""
    if mount_from is not None and mount_from.api_host == ref.api_host and mount_from.repository != ref.repository:
        mount_repo = mount_from.repository
        scopes += (repository_scope(mount_repo, "pull"),)
    start = None
    if not isinstance(src, (str, os.PathLike)):
        try:
            start = src.tell() if src.seekable() else None
        except (OSError, AttributeError, ValueError):
            start = None

    def attempt(n: int) -> str:
        path = f"/v2/{ref.repository}/blobs/uploads/"
        if mount_repo and n == 0:
            path += "?" + urlencode({"mount": digest, "from": mount_repo})
        resp = t.request("POST", ref, path, scopes=scopes, what=what, headers={"Content-Length": "0"})
        if resp.status_code == 201 and mount_repo and n == 0:
            resp.close()
            log.debug("mounted %s into %s from %s", digest, ref.repository, mount_repo)
            return "mounted"
        if resp.status_code != 202 or not resp.headers.get("Location"):
            raise t.error(resp, blob, what, unknown="blob upload unknown")
        location = resp.headers["Location"]
        resp.close()
        fh, owned, base = _open_source(src, n, start, size, digest)
        state = _UploadState(fh, base, digest, size, progress)
        try:
            if size == 0:
                state.check(ref)
                final_body, final_len = b"", 0
            elif size <= monolithic_max:
                final_body, final_len = (lambda: BoundedReader(state, 0, size)), size
            else:
                location = _patch_chunks(t, ref, blob, what, scopes, location, state, chunk_size)
                state.check(ref)
                final_body, final_len = None, 0
            headers = {"Content-Type": OCTET_STREAM, "Content-Length": str(final_len)}
            resp = t.request("PUT", ref, _with_query(location, digest=digest), scopes=scopes, what=what,
                             headers=headers, body=final_body)
            if callable(final_body) and resp.status_code != 201:
                state.check(ref)  # name the source's real digest if that is what the registry refused
        finally:
            if owned:
                fh.close()
        if resp.status_code != 201:
            err = t.error(resp, blob, what, unknown="blob upload unknown")
            if err.registry_code == "DIGEST_INVALID":
                raise DigestMismatchError(f"blob {digest} for {ref.name}: {ref.api_host} says the uploaded "
                                          f"content does not match the digest", digest=digest) from err
            raise err
        echoed = resp.headers.get("Docker-Content-Digest")
        resp.close()
        if echoed and echoed != digest:
            raise DigestMismatchError(f"blob {digest} for {ref.name}: {ref.api_host} stored it as {echoed}",
                                      digest=digest, actual=echoed)
        return "uploaded"

    if start is None and not isinstance(src, (str, os.PathLike)):
        return attempt(0)  # a source that cannot be rewound gets one attempt, and its error as it was
    return t.retrying(attempt, what)


def _patch_chunks(t: Transport, ref, blob, what, scopes, location, state: _UploadState, chunk_size: int) -> str:
    """PATCH ``chunk_size`` pieces in order; returns the Location for the final PUT."""
    offset, size = 0, state.size
    while offset < size:
        length = min(chunk_size, size - offset)
        headers = {"Content-Type": OCTET_STREAM, "Content-Length": str(length),
                   "Content-Range": f"{offset}-{offset + length - 1}"}
        resp = t.request("PATCH", ref, location, scopes=scopes, what=what, headers=headers,
                         body=lambda at=offset, n=length: BoundedReader(state, at, n))
        if resp.status_code != 202 or not resp.headers.get("Location"):
            raise t.error(resp, blob, what, unknown="blob upload unknown")
        end = resp.headers.get("Range", "")
        location = resp.headers["Location"]
        resp.close()
        offset += length
        if end and end != f"0-{offset - 1}":
            raise RegistryError(f"{what}: {ref.api_host} has {end} after a chunk ending at {offset - 1}",
                                reference=str(blob), status=416, registry_code="BLOB_UPLOAD_INVALID")
    return location
