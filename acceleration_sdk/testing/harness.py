"""The suite's harness: a ContentProvider over a local ContentStore, as strict about sources as the engine.

:class:`StoreProvider` gives a driver the same surface the engine does (``source``, ``store``,
``open_blob``, ``open_uncompressed``, ``read_blob``, ``blob_writer()``, ``progress``) without a registry.
Like the engine it does not trust a driver to read its sources to the end: when the driver commits a blob
(and again by :meth:`StoreProvider.finish`, after ``convert_layer`` returns) every source stream the driver
opened is drained (also one it closed early), unread layer data that is not zero padding fails, and each
source blob's digest is verified. A driver therefore behaves the same in the suite and in the engine.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator

from ..compression import open_decompressed
from ..content import ContentStore
from ..driver import ProgressEvent
from ..errors import ContentError, DigestMismatchError, LayerError
from ..oci import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor
from .layers import compress

READ_SIZE = 1 << 20
_MEDIA_TYPES = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}


class VerifiedBlob:
    """A source blob read through its digest: the sha256 and size are checked when the end is reached."""

    def __init__(self, fh, desc: Descriptor):
        self._fh, self.desc = fh, desc
        self._h = hashlib.sha256()
        self.size = 0
        self.verified = False

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._h.update(data)
        self.size += len(data)
        if not data and n != 0 and not self.verified:
            self._verify()
        return data

    def _verify(self) -> None:
        digest = "sha256:" + self._h.hexdigest()
        if digest != self.desc.digest or self.size != self.desc.size:
            raise DigestMismatchError(f"source blob {self.desc.digest} ({self.desc.size} bytes) read as {digest} "
                                      f"({self.size} bytes)", digest=self.desc.digest, actual=digest)
        self.verified = True

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass


class _Opened:
    """One source the driver opened: the blob and, for open_uncompressed, the tar stream over it."""

    def __init__(self, blob: VerifiedBlob, tar=None):
        self.blob, self.tar = blob, tar
        self.drained = False
        self.unread = 0  # non-zero layer bytes the driver never read

    def drain(self) -> None:
        """Read what the driver left (verifying the digest at the end); count unread non-zero layer data."""
        if self.drained:
            return
        if self.tar is not None:
            while piece := self.tar.read(READ_SIZE):
                if piece.count(0) != len(piece):  # zero blocks after the end-of-archive are padding
                    self.unread += len(piece)
        self.blob.drain()
        self.drained = True

    def check(self) -> None:
        self.drain()
        if self.unread:
            raise LayerError(f"the driver committed before reading all of layer {self.blob.desc.digest}: "
                             f"non-zero layer data was left unread", digest=self.blob.desc.digest)


class _CheckingWriter:
    """The store's ingest; ``commit`` first finishes (drains and verifies) every source opened so far."""

    def __init__(self, provider: "StoreProvider"):
        self._provider = provider
        self._ingest = provider.store.writer()

    def write(self, data) -> int:
        return self._ingest.write(data)

    @property
    def size(self) -> int:
        return self._ingest.size

    def commit(self, expected: str | None = None) -> str:
        try:
            self._provider.finish()
        except Exception:
            self._ingest.abort()
            raise
        return self._ingest.commit(expected)

    def abort(self) -> None:
        self._ingest.abort()

    def __enter__(self) -> "_CheckingWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._ingest.__exit__(exc_type, *exc)


class StoreProvider:
    """The suite's ContentProvider: source blobs served from a ContentStore, checked like the engine checks."""

    def __init__(self, store: ContentStore):
        self.store = store
        self.source = None
        self.events: list[ProgressEvent] = []
        self._opened: list[_Opened] = []

    @contextlib.contextmanager
    def _open(self, desc: Descriptor, uncompressed: bool) -> Iterator[Any]:
        with self.store.open(desc.digest) as fh:
            blob = VerifiedBlob(fh, desc)
            opened = _Opened(blob, open_decompressed(blob) if uncompressed else None)
            self._opened.append(opened)
            try:
                yield opened.tar if uncompressed else opened.blob
            except BaseException:
                if opened in self._opened:  # a failed conversion commits nothing: no check owed
                    self._opened.remove(opened)
                raise
            opened.drain()  # closed early: verified now, judged when the driver commits

    def open_blob(self, desc: Descriptor):
        """The source blob as a stream; its digest and size are verified when its end is read."""
        return self._open(desc, uncompressed=False)

    def open_uncompressed(self, desc: Descriptor):
        """The source layer's tar stream (gzip, zstd or plain, sniffed), over a verified blob stream."""
        return self._open(desc, uncompressed=True)

    def read_blob(self, desc: Descriptor) -> bytes:
        with self.open_blob(desc) as blob:
            data = blob.read(16 << 20)
            if blob.read(1):
                raise ContentError(f"blob {desc.digest} is larger than 16 MiB", digest=desc.digest)
        return data

    def blob_writer(self) -> _CheckingWriter:
        return _CheckingWriter(self)

    def progress(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def finish(self) -> None:
        """Drain and verify every source opened since the last check (the engine does so when a driver commits).

        Raises :class:`DigestMismatchError` for a source that does not match its digest and :class:`LayerError`
        when non-zero layer data was left unread.
        """
        opened, self._opened = self._opened, []
        for source in opened:
            source.check()

    def add_layer(self, tar: bytes, compression: str = "gzip") -> Descriptor:
        """Store ``tar`` compressed with ``compression`` (gzip, zstd or none) as a source layer."""
        blob = compress(tar, compression)
        digest = self.store.write_bytes(blob)
        return Descriptor(media_type=_MEDIA_TYPES[compression], digest=digest, size=len(blob))
