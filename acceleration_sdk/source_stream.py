"""Source blobs streamed registry -> OS pipe -> reader, so pulling overlaps converting.

A download thread writes a blob into an OS pipe while the converter reads the other end: no source layer is
ever written to disk or held in memory. The registry client checks the digest when the blob ends; its error
(a digest mismatch, a broken connection) is handed to the reader and raised at the reader's end of stream.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from typing import BinaryIO, Iterator

from .errors import AccelError, LayerError
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
