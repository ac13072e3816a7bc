"""The ContentProvider a driver sees while the engine converts an image (see ``driver.ContentProvider``).

The engine hands each ``LayerDriver.convert_layer`` call a provider of its own (one per layer), and a plain
``Driver.convert`` one provider for the whole image. What a driver may rely on, and what it cannot forget:

* ``open_blob(desc)`` / ``open_uncompressed(desc)`` stream a source blob (from the content store, or from
  the registry through a pipe while it downloads); nothing is held in memory or spooled to disk. Either way
  the blob's sha256 and size are checked at its end (``source_stream``).
* **A source is read to its end and verified before anything is committed.** When the driver commits a
  blob writer, and when it leaves an ``open_*`` block, the provider reads what is left of every source
  stream the driver opened through it. Trailing bytes that are all zero (tar end-of-archive padding, zero
  padding after compressed data) are fine; then the blob's digest is checked. Non-zero unread data means
  the driver stopped early: :class:`LayerError` naming the layer and how far the driver read. A digest
  mismatch is a :class:`DigestMismatchError`. Either way the writer is aborted, so the converted blob
  reaches neither the content store nor the registry, and the refusal stands: a later commit, or leaving
  the ``open_*`` block, raises it again. Drivers therefore never drain a source themselves.
* ``blob_writer()`` streams the converted blob to the store and, as it goes, to the target repository;
  the registry only gets the blob when ``commit()`` succeeds (an unfinished upload is cancelled).
"""
from __future__ import annotations

import contextlib
import threading
from typing import BinaryIO, Callable, Iterator

from .compression import open_decompressed
from .driver import ProgressEvent
from .errors import ContentError, ConversionError, LayerError
from .oci import Descriptor
from .push import UploadingIngest
from .referenced import ReferencedImage
from .referenced import resolve as resolve_referenced
from .session import ConversionSession
from .source_stream import PIPE_SIZE, download_stream, store_stream


class SourceStream:
    """A source stream as a driver reads it: counted, stoppable, and drained + verified by :meth:`finish`."""

    def __init__(self, src, desc: Descriptor, what: str, cancelled: threading.Event,
                 on_bytes: Callable[[int], None] | None = None):
        self._src, self.desc, self.what = src, desc, what
        self._cancelled, self._on_bytes = cancelled, on_bytes
        self.pos = 0  # bytes the driver read
        self.open = True
        self.verified = False
        self._refused: str | None = None  # why finish() refused: a retry must not pass on what is left

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._cancelled.is_set():
            raise ConversionError("the conversion stopped: another layer failed")
        data = self._src.read(n)
        if data:
            self.pos += len(data)
            if self._on_bytes is not None:
                self._on_bytes(len(data))
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def finish(self) -> None:
        """Read the rest (only zeros may be left), to the end where the digest is checked."""
        if self.verified:
            return
        if self._refused is None:
            at = self.pos
            while data := self.read(PIPE_SIZE):
                if data.strip(b"\0"):
                    nonzero = self.pos - len(data.lstrip(b"\0"))
                    self._refused = (f"layer {self.desc.digest}: the driver stopped reading the {self.what} at "
                                     f"byte {at}, but non-zero layer data was left unread (from byte {nonzero}); "
                                     "a source not read to its end cannot be verified, so nothing was committed")
                    break
            else:
                self.verified = True
                return
        raise LayerError(self._refused, digest=self.desc.digest)


class EngineProvider:
    """What a driver gets: ``source``, ``store``, verified source streams, blob writers, progress."""

    def __init__(self, session: ConversionSession, platform: dict | None = None):
        self._session = session
        self.platform = platform or {}  # os/architecture/variant of the manifest being converted ({}: unknown)
        self.source = session.source  # reference.Reference of the image being converted
        self.root = session.root  # the source's manifest or index (its bytes are in the store)
        self.store = session.store
        self._lock = threading.Lock()
        self._streams: list[SourceStream] = []  # every source stream opened here, in order
        self._writers: list[UploadingIngest] = []

    def progress(self, event: ProgressEvent) -> None:
        self._session.progress(event)

    def read_blob(self, desc: Descriptor, limit: int = 16 << 20) -> bytes:
        """A small blob (config, manifest) of the source, verified."""
        return self._session.read_blob(desc, limit)

    def wants_platform(self, desc: Descriptor) -> bool:
        """Whether ``converter.platforms`` selects this child of the source index (no filter: all)."""
        wanted = self._session.cfg.converter.platforms
        return not wanted or any(p.matches(*desc.platform_tuple) for p in wanted)

    def cached_conversion(self, cache_key: str, source: Descriptor) -> tuple[Descriptor, str] | None:
        """A blob made from ``source`` before under ``cache_key`` (layer caches, local then remote) and its note."""
        return self._session.cached_conversion(cache_key, source)

    def remember_conversion(self, platform: dict, cache_key: str, source: Descriptor, desc: Descriptor,
                            note: str = "") -> None:
        """Record ``desc`` (committed through :meth:`blob_writer`) as made from ``source`` under ``cache_key``."""
        self._session.remember_conversion(platform, cache_key, source, desc, note)

    def harbor_annotations(self, driver) -> dict[str, str]:
        """Harbor's acceleration annotations for the converted root (``converter.harbor_annotation``; else {})."""
        root = self._session.root
        return self._session.harbor_annotations(driver, root) if root is not None else {}

    def referenced_image(self, ref: str, what: str = "image") -> ReferencedImage:
        """Another image (an option names it, ``what``): on a host in ``provider.source`` only, resolved once per
        conversion; its blobs can be read and linked into the converted image (:mod:`.referenced`)."""
        return resolve_referenced(self._session, ref, what)

    def read_manifest(self, desc: Descriptor) -> bytes:
        """A child manifest of the source index, by digest (for drivers that convert whole images)."""
        return self._session.read_manifest(desc)

    @contextlib.contextmanager
    def _tracked(self, stream: SourceStream) -> Iterator[SourceStream]:
        with self._lock:
            self._streams.append(stream)
        try:
            yield stream
            stream.finish()
        finally:
            stream.open = False

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[BinaryIO]:
        """A stream of a source blob; read to its end and verified when the block is left (see module doc)."""
        done = [0]

        def on_bytes(n: int) -> None:
            done[0] += n
            self.progress(ProgressEvent("pull", desc.digest, done[0], desc.size))

        session = self._session
        if session.store.has(desc.digest):
            opened = store_stream(session.store, desc)
        elif session.client is None:
            raise ContentError(f"blob {desc.digest} is not in the content store, and there is no registry "
                               "to fetch it from", digest=desc.digest)
        else:
            opened = download_stream(session.client, session.source, desc)
        with opened as raw, self._tracked(SourceStream(raw, desc, "blob", session.cancelled, on_bytes)) as s:
            yield s

    @contextlib.contextmanager
    def open_uncompressed(self, desc: Descriptor) -> Iterator[BinaryIO]:
        """The layer's tar stream (gzip, zstd or plain, sniffed); the same rule as :meth:`open_blob`."""
        with self.open_blob(desc) as raw:
            with self._tracked(SourceStream(open_decompressed(raw), desc, "uncompressed layer",
                                            self._session.cancelled)) as tar:
                yield tar

    def blob_writer(self) -> UploadingIngest:
        """Where a driver writes a converted blob: ``write``, ``commit() -> digest``, ``size``; a context manager.

        ``commit`` first verifies every source opened through this provider (see the module doc).
        """
        session = self._session
        upload = session.client.start_upload(session.target) if session.stream_uploads else None
        writer = UploadingIngest(session.store.writer(), upload, before_commit=self.verify_sources,
                                 on_uploaded=session.uploaded.add)
        with self._lock:
            self._writers.append(writer)
        return writer

    def converted_path(self, desc: Descriptor) -> str:
        """A local path of a blob of the *converted* image (e.g. a layer ``convert_layer`` returned).

        For ``finalize_manifest``, which may need the converted layers' bytes: after a layer-cache hit the
        blob may only be in the target repository, and is then fetched from there into the store (verified).
        """
        self._session.fetch(desc, self._session.target)
        return self._session.store.path(desc.digest)

    def put_json(self, obj) -> Descriptor:
        """A config or manifest the driver builds (``LayerDriver.index_entries``): canonical JSON into the store,
        leased for this conversion. Not uploaded now: the push phase sends it when the root references it, as
        a blob (config) or by digest under /manifests/ (manifest), children before parents."""
        digest, size = self._session.put_json(obj)
        media_type = obj.get("mediaType", "") if isinstance(obj, dict) else ""
        return Descriptor(media_type=media_type, digest=digest, size=size)

    # ------------------------------------------------------------------ the engine's side
    def verify_sources(self) -> None:
        """Every source opened here read to its end and verified; raises if one cannot be."""
        with self._lock:
            streams = list(self._streams)
        for stream in reversed(streams):  # an uncompressed stream before the blob under it
            if stream.open:
                stream.finish()
            elif not stream.verified:
                raise LayerError(f"layer {stream.desc.digest}: the driver left the {stream.what} after a failure "
                                 f"at byte {stream.pos}; it was not verified, so nothing may be committed",
                                 digest=stream.desc.digest)

    def close(self) -> None:
        """Abort the writers the driver never committed (their uploads, their temp files)."""
        with self._lock:
            writers, self._writers = self._writers, []
        for writer in writers:
            if writer.digest is None:
                writer.abort()
