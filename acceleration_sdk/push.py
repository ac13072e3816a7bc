"""Pushing a converted image: blobs, then configs, then manifests, then the index, each by digest; the tag last.

A converted layer usually reaches the registry while the driver writes it (:class:`UploadingIngest`); the
push phase then finds it present. Blobs that only the store has are uploaded from there; unchanged source
blobs we never pulled are mounted from the source repository (on another host: copied through the store).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
from typing import Callable

from .driver import ProgressEvent
from .oci import INDEX_TYPES, Descriptor, Index, Manifest
from .session import ConversionSession

PUSH_CONCURRENCY = 4  # blobs uploaded at once


def push_image(session: ConversionSession, root: Descriptor, before_tag: Callable[[], None] | None = None,
               referenced: Callable[[Manifest], list[Descriptor]] | None = None) -> None:
    """Push everything ``root`` points at, children before parents, then the tag.

    ``referenced(manifest)`` names blobs a manifest needs in the target repository without listing them
    (``Driver.referenced_blobs``: nydus OCI-ref images read the source gzip layers by digest); they go with
    the manifest's own blobs -- found there, mounted from the source repository, or copied across hosts.

    ``before_tag`` runs once everything is pushed by digest (the engine's ``converter.verify`` check); if it
    raises, the tag is never written.
    """
    pushed: set[str] = set()
    client, store, target = session.client, session.store, session.target

    def push_manifest(desc: Descriptor) -> None:
        if not store.has(desc.digest):
            # a child kept as it was (an attestation): it is already in the repository we push to
            if client.head_manifest(target.with_digest(desc.digest)) is not None:
                return
            session.read_manifest(desc)
        raw = store.read_bytes(desc.digest)
        if desc.media_type in INDEX_TYPES:
            for child in Index.from_json(raw, desc.media_type).manifests:
                push_manifest(child)
        else:
            m = Manifest.from_json(raw, desc.media_type)
            blobs = list(m.layers) + [m.config] + list(referenced(m) if referenced is not None else ())
            push_blobs(session, [b for b in blobs if b.digest not in pushed])
            pushed.update(b.digest for b in blobs)
        if desc.digest not in pushed:
            client.put_manifest(target.with_digest(desc.digest), raw, desc.media_type)
            pushed.add(desc.digest)

    push_manifest(root)
    if before_tag is not None:
        before_tag()
    client.put_manifest(target, store.read_bytes(root.digest), root.media_type)  # the tag, last


def push_blobs(session: ConversionSession, blobs: list[Descriptor]) -> None:
    client, store = session.client, session.store

    def one(desc: Descriptor) -> None:
        done = [0]

        def on_bytes(n: int) -> None:
            done[0] += n
            session.progress(ProgressEvent("push", desc.digest, done[0], desc.size))

        if store.has(desc.digest):
            how = client.push_blob(session.target, desc.digest, desc.size, store.path(desc.digest),
                                   mount_from=None, progress=on_bytes)
        elif client.blob_exists(session.target, desc.digest):
            how = "exists"
        elif session.source.api_host != session.target.api_host:
            # another registry (a route's target host): no mount across hosts, so copy through the store
            session.fetch(desc, session.source)
            how = client.push_blob(session.target, desc.digest, desc.size, store.path(desc.digest),
                                   mount_from=None, progress=on_bytes)
        else:  # unchanged source blob we never pulled: mount it from the source repository
            with contextlib.closing(_FetchedOnRead(session, desc)) as src:
                how = client.push_blob(session.target, desc.digest, desc.size, src,
                                       mount_from=session.source, progress=on_bytes)
        session.progress(ProgressEvent("push", desc.digest, desc.size, desc.size, how))

    with concurrent.futures.ThreadPoolExecutor(PUSH_CONCURRENCY, thread_name_prefix="push") as pool:
        list(pool.map(one, blobs))


class _FetchedOnRead:
    """An unchanged source blob offered to the registry as a cross-repository mount. A registry may decline
    a mount (202 and an upload session instead of 201): only then is it read, and reading fetches it from
    the source repository into the content store (verified against its digest) and uploads it from there."""

    def __init__(self, session: ConversionSession, desc: Descriptor):
        self._session, self._desc, self._fh = session, desc, None

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if self._fh is None:
            self._session.fetch(self._desc, self._session.source)
            self._fh = open(self._session.store.path(self._desc.digest), "rb")
        return self._fh.read(n)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class UploadingIngest:
    """A content-store ingest that also streams the same bytes to the target repository.

    ``before_commit`` runs first in :meth:`commit` (the provider verifies the driver's sources there); if it
    raises, the ingest and the upload are aborted, so the blob reaches neither the store nor the registry.
    The upload is best effort: when it fails, the blob is still committed to the store and the push phase
    uploads it from there (its HEAD finds it missing). When it succeeds, the push phase finds it present.
    """

    def __init__(self, ingest, upload, before_commit: Callable[[], None] | None = None):
        self._ingest, self._upload, self._before_commit = ingest, upload, before_commit
        self.digest: str | None = None

    @property
    def size(self) -> int:
        return self._ingest.size

    def write(self, data) -> int:
        n = self._ingest.write(data)
        if self._upload is not None:
            self._upload.write(data)
        return n

    def commit(self, expected: str | None = None) -> str:
        try:
            if self._before_commit is not None:
                self._before_commit()
            digest = self._ingest.commit(expected)
        except BaseException:
            self.abort()
            raise
        if self._upload is not None:
            self._upload.finish(digest)
            self._upload = None
        self.digest = digest
        return digest

    def abort(self) -> None:
        if self.digest is None:
            self._ingest.abort()
        if self._upload is not None:
            self._upload.abort()
            self._upload = None

    def __enter__(self) -> "UploadingIngest":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None or self.digest is None:
            self.abort()
