"""Source blobs as a driver reads them: verified at their end, wherever they come from.

* :func:`download_stream`: registry -> OS pipe -> reader, so pulling overlaps converting. A download thread
  writes a blob into an OS pipe while the converter reads the other end: no source layer is ever written to
  disk or held in memory. The registry client checks the digest when the blob ends; its error (a digest
  mismatch, a broken connection) is handed to the reader and raised at the reader's end of stream.
* :func:`store_stream`: a blob already in the content store, hashed as it is read and checked at its end.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from typing import BinaryIO, Iterator

from .errors import AccelError, DigestMismatchError, LayerError
from .oci import Descriptor
from .reference import Reference

PIPE_SIZE = 1 << 20  # 1 MiB pipe buffer between the download thread and the converter


class _PipeReader:
    """Reads the pipe; at EOF waits for the download thread and re-raises its error (e.g. digest mismatch)."""

    def __init__(self, fd: int, thread: threading.Thread, errors: list):
        self._fh = os.fdopen(fd, "rb", buffering=0)
        self._thread, self._errors = thread, errors

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n if n and n > 0 else PIPE_SIZE)
        if not data:
            self._thread.join()
            if self._errors:
                raise self._errors[0]
        return data

    def close(self) -> None:
        self._fh.close()
        self._thread.join()


class _PipeWriter:
    def __init__(self, fd: int):
        self._fh = os.fdopen(fd, "wb", buffering=0)

    broken = False  # the reader stopped: keep downloading (and hashing) to learn whether the blob was bad
    cancelled = False  # the conversion failed for another reason: stop the download at once

    def write(self, data) -> int:
        if self.cancelled:
            raise BrokenPipeError("the conversion stopped reading this layer")
        view = memoryview(data)
        while view and not self.broken:
            try:
                n = self._fh.write(view)
            except BrokenPipeError:
                self.broken = True
                break
            view = view[n:]
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


@contextlib.contextmanager
def download_stream(client, ref: Reference, desc: Descriptor) -> Iterator[BinaryIO]:
    """A stream of blob ``desc`` of ``ref``, downloaded by a thread of its own; verified at its end.

    The thread and both pipe ends are gone when this exits, on every path.
    """
    rfd, wfd = os.pipe()
    with contextlib.suppress(OSError):  # a bigger pipe means fewer context switches
        fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    errors: list[BaseException] = []
    writer = _PipeWriter(wfd)

    def download() -> None:
        try:
            client.download_blob(ref, desc.digest, writer, size=desc.size)
        except BaseException as exc:  # handed to the reader, raised there
            errors.append(exc)
        finally:
            writer.close()

    thread = threading.Thread(target=download, name=f"pull-{desc.digest[7:19]}", daemon=True)
    reader = _PipeReader(rfd, thread, errors)
    thread.start()
    try:
        yield reader
    except BaseException as exc:
        # A broken layer may be a bad download: let it run on to the end so a bad blob is named as the
        # cause. Anything else (disk full, Ctrl-C, a driver failure) stops the download at once.
        if not isinstance(exc, LayerError):
            writer.cancelled = True
        reader.close()
        if isinstance(exc, Exception) and errors and isinstance(errors[0], AccelError) and errors[0] is not exc:
            raise errors[0] from exc
        raise
    reader.close()
    if errors:
        raise errors[0]


class _VerifiedFile:
    """A store blob hashed while it is read; at its end (and on every read after) a mismatch is raised.

    The store checked the blob when it was written, yet it is a long-lived cache on disk shared by every
    conversion: a damaged or replaced file would otherwise become a converted image whose own digest is valid,
    and nothing downstream could tell. One sha256 pass is cheap next to decompressing and recompressing.
    """

    def __init__(self, fh, desc: Descriptor):
        self._fh, self._desc = fh, desc
        self._h = hashlib.sha256()
        self._size = 0
        self._error: str | None = None

    def read(self, n: int = -1) -> bytes:
        if self._error is None:
            data = self._fh.read(n)
            self._h.update(data)
            self._size += len(data)
            if data or n == 0:
                return data
            actual = "sha256:" + self._h.hexdigest()
            if actual == self._desc.digest and self._size == self._desc.size:
                return data
            self._error = actual
        raise DigestMismatchError(f"source blob {self._desc.digest} ({self._desc.size} bytes) in the content store "
                                  f"reads as {self._error} ({self._size} bytes): the stored file is damaged",
                                  digest=self._desc.digest, actual=self._error)

    def close(self) -> None:
        self._fh.close()


@contextlib.contextmanager
def store_stream(store, desc: Descriptor) -> Iterator[BinaryIO]:
    """A stream of blob ``desc`` from the content store; its sha256 and size are checked at its end."""
    verified = _VerifiedFile(store.open(desc.digest), desc)
    try:
        yield verified  # type: ignore[misc]
    finally:
        verified.close()
