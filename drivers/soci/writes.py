"""The driver's small outputs, written at once instead of one after another.

After the layer pass a conversion writes a handful of small objects: each ztoc and the ``{}`` config (blobs:
the content store and, as they are written, the target repository), then the SOCI index, the re-serialised
image manifest(s) and the OCI index (manifests: the content store only -- the push phase PUTs them under
/manifests/, so uploading them as blobs too was three wasted requests each). Every write is an fsync and a
content-store record, the blobs three HTTP requests too; done in turn they cost more wall time than the
ztoc's last steps. All digests are known before anything is written (sha256 of bytes we hold), so each
object's descriptor can be built, and the objects that point at it written, without waiting.

The rule kept: a layer-cache entry never names a blob that was not committed. :meth:`Writes.remember`
only queues an entry; :meth:`Writes.finish` waits for every write and records the entries only when all
of them committed. If one failed, it raises that failure and records nothing (a writer that failed has
aborted its ingest and upload: no half blob in the store or the registry).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
from typing import Any

from acceleration_sdk import oci
from acceleration_sdk.driver import ContentProvider
from acceleration_sdk.oci import Descriptor

WRITERS = 4  # writes at once: each is mostly fsync and network waits, outside the GIL


class Writes:
    def __init__(self, content: ContentProvider):
        self._content = content
        self._pool = concurrent.futures.ThreadPoolExecutor(WRITERS, thread_name_prefix="soci-write")
        self._pending: list[concurrent.futures.Future] = []
        self._entries: list[tuple[dict, str, Descriptor, Descriptor]] = []
        self._known: dict[tuple[str, str], Descriptor] = {}  # (cache key, source digest) -> this conversion's

    def blob(self, data: bytes) -> str:
        """Start writing ``data`` as a blob (store + target repository); its digest, at once."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._pending.append(self._pool.submit(self._write_blob, data, digest))
        return digest

    def manifest(self, obj: dict[str, Any]) -> Descriptor:
        """Start writing ``obj`` (a manifest or index) as canonical JSON into the store; its descriptor, at once."""
        data = oci.canonical_json(obj)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._pending.append(self._pool.submit(self._put_json, obj, digest))
        return Descriptor(media_type=obj.get("mediaType", ""), digest=digest, size=len(data))

    def remember(self, platform: dict, key: str, source: Descriptor, desc: Descriptor) -> None:
        """A layer-cache entry, recorded by :meth:`finish` once every write has committed."""
        self._entries.append((platform, key, source, desc))
        self._known[(key, source.digest)] = desc

    def known(self, key: str, source: Descriptor) -> Descriptor | None:
        """A ztoc this conversion has already made (or taken from a cache) for ``source``: a layer shared by two
        platforms is indexed once, although its cache entry is recorded only at :meth:`finish`."""
        return self._known.get((key, source.digest))

    def settle(self) -> None:
        """Wait for the writes started so far; the first failure is raised. Called before layers are read
        again: a blob write's commit verifies (and drains) the source streams the conversion has open, which
        must never happen while a builder thread is reading one of them."""
        concurrent.futures.wait(self._pending)
        failed = next((f.exception() for f in self._pending if f.exception() is not None), None)
        if failed is not None:
            raise failed

    def finish(self) -> None:
        """Wait for every write; then record the cache entries. The first failure is raised, nothing recorded."""
        try:
            concurrent.futures.wait(self._pending)
        finally:
            self._pool.shutdown(wait=True)
        failed = next((f.exception() for f in self._pending if f.exception() is not None), None)
        if failed is not None:
            raise failed
        for platform, key, source, desc in self._entries:
            self._content.remember_conversion(platform, key, source, desc)

    def close(self) -> None:
        """Leave without recording (an error elsewhere): writes already started finish or abort on their own."""
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ on the pool
    def _write_blob(self, data: bytes, digest: str) -> None:
        with self._content.blob_writer() as w:
            w.write(data)
            w.commit(digest)  # checked against the digest its descriptor already carries

    def _put_json(self, obj: dict[str, Any], digest: str) -> None:
        written = self._content.put_json(obj)
        if written.digest != digest:  # the same canonical JSON: cannot differ, but a wrong descriptor must not ship
            raise RuntimeError(f"the store wrote {written.digest} for a manifest described as {digest}")
