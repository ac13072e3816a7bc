"""Pushing a converted image: blobs, then configs, then manifests, then the index, each by digest; the tag last.

A converted layer usually reaches the registry while the driver writes it (:class:`UploadingIngest`); the
push phase then finds it present. Blobs that only the store has are uploaded from there; unchanged source
blobs we never pulled are mounted from the source repository (on another host: copied through the store).

What is pushed is a :class:`PushPlan`: by default the tree under the driver's result, tagged at the target.
A driver whose output is attached to the source instead of tagged (SOCI index v1: a referrer of each image
manifest) returns a plan from ``convert`` with no tag and its referrers; the referrers tags (on a registry
without the referrers API) are moved last, like a tag, after everything is pushed by digest and verified.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
from typing import Callable, Mapping

from . import referrers as referrers_mod
from .driver import ProgressEvent
from .errors import ConversionError, DriverError
from .oci import INDEX_TYPES, OCI_INDEX, Descriptor, Index, Manifest
from .session import ConversionSession

log = logging.getLogger("acceleration_sdk.engine")

PUSH_CONCURRENCY = 4  # blobs uploaded at once


@dataclasses.dataclass(frozen=True, slots=True)
class PushPlan:
    """What a conversion publishes. ``Driver.convert`` returns a plain Descriptor for the usual case (the
    image it made, tagged at the target: :meth:`tagged`) and a plan when its output is not one tagged image.

    - ``manifests``: pushed by digest in this order, each with everything it points at;
    - ``tag``: the manifest written at the target tag, last; ``None``: no tag is written; one of ``manifests``;
    - ``referrers``: manifests among ``manifests`` that carry a ``subject`` (in the target repository); on a
      registry without the referrers API each subject's referrers tag lists them afterwards
      (:mod:`acceleration_sdk.referrers`); ``replaces``: annotations that mark an older output of the same
      producer in that list, which the new entry replaces (empty: nothing is replaced, only added);
    - ``attached_to``: the image the output belongs to when there is no tag (the source image): the result
      records it, pinned by digest, as the conversion's target.
    """

    manifests: tuple[Descriptor, ...]
    tag: Descriptor | None = None
    referrers: tuple[Descriptor, ...] = ()
    replaces: Mapping[str, str] = dataclasses.field(default_factory=dict)
    attached_to: Descriptor | None = None

    @classmethod
    def tagged(cls, root: Descriptor) -> "PushPlan":
        return cls(manifests=(root,), tag=root)

    @property
    def root(self) -> Descriptor:
        """What the result records: the tagged manifest, else the image the output is attached to."""
        found = self.tag or self.attached_to or (self.manifests[0] if self.manifests else None)
        if found is None:
            raise ConversionError("the driver's push plan names nothing to push")
        return found


def push_image(session: ConversionSession, root: Descriptor, before_tag: Callable[[], None] | None = None,
               referenced: Callable[[Manifest], list[Descriptor]] | None = None) -> None:
    """Push everything ``root`` points at, children before parents, then the tag.

    ``referenced(manifest)`` names blobs a manifest needs in the target repository without listing them
    (``Driver.referenced_blobs``: nydus OCI-ref images read the source gzip layers by digest); they go with
    the manifest's own blobs -- found there, mounted from the source repository, or copied across hosts.

    ``before_tag`` runs once everything is pushed by digest (the engine's ``converter.verify`` check); if it
    raises, the tag is never written.
    """
    push_plan(session, PushPlan.tagged(root), before_tag, referenced)


def push_plan(session: ConversionSession, plan: PushPlan, before_tag: Callable[[], None] | None = None,
              referenced: Callable[[Manifest], list[Descriptor]] | None = None) -> None:
    """Push ``plan``: every manifest by digest (children before parents), ``before_tag``, then the tags.

    Referrers need their subject in the target repository (checked before anything is pushed). After
    ``before_tag``, the new referrers indexes are pushed by digest; only then are the tags moved -- the
    referrers tags, then the target tag -- so a failure before the end moves no tag.
    """
    client, store, target = session.client, session.store, session.target
    # only what ``manifests`` lists is pushed with its children: a tag or referrer outside it would be tagged
    # without its children pushed first (or refused by the registry after the referrers tags moved)
    listed = {d.digest for d in plan.manifests}
    unlisted = [d.digest for d in (*([plan.tag] if plan.tag else ()), *plan.referrers) if d.digest not in listed]
    if unlisted:
        raise DriverError(f"the driver's push plan names {unlisted[0]} as its tag or a referrer, but it is not "
                          "among its manifests (PushPlan.manifests: what is pushed); nothing was pushed")
    referrers = [referrers_mod.describe(store.read_bytes(d.digest), d) for d in plan.referrers]
    for subject in dict.fromkeys(r.subject for r in referrers):
        if client.head_manifest(target.with_digest(subject)) is None:
            raise ConversionError(f"the subject {subject} of the output is not in {target.name}: a referrer is "
                                  "attached to an image in its own repository", reference=str(session.source))
    pushed: set[str] = set()

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

    for desc in plan.manifests:
        push_manifest(desc)
    if before_tag is not None:
        before_tag()
    updates = []
    for subject in dict.fromkeys(r.subject for r in referrers):
        if client.referrers(target, subject) is not None:
            continue  # the registry has the referrers API: it indexed them when they were pushed
        mine = [r.entry for r in referrers if r.subject == subject]
        update = referrers_mod.prepare_tag_update(client, target, subject, mine, plan.replaces)
        if update is not None:
            updates.append(update)
    for update in updates:  # the tags, last
        client.put_manifest(update.tag, update.raw, OCI_INDEX)
        log.info("referrers tag %s -> %s", update.tag, update.digest)
    if plan.tag is not None:
        client.put_manifest(target, store.read_bytes(plan.tag.digest), plan.tag.media_type)


def push_blobs(session: ConversionSession, blobs: list[Descriptor]) -> None:
    client, store = session.client, session.store

    def one(desc: Descriptor) -> None:
        done = [0]

        def on_bytes(n: int) -> None:
            done[0] += n
            session.progress(ProgressEvent("push", desc.digest, done[0], desc.size))

        # a blob of another image the driver linked (nydus: a chunk dict's blob) comes from that image's repository
        origin = session.linked_blobs.get(desc.digest, session.source)
        if desc.digest in session.uploaded:  # streamed there as it was written, the registry said 201
            how = "exists"
        elif store.has(desc.digest):  # a linked blob the store has too: still a mount first, when one can be
            mount = origin if desc.digest in session.linked_blobs and origin.api_host == session.target.api_host \
                else None
            how = client.push_blob(session.target, desc.digest, desc.size, store.path(desc.digest),
                                   mount_from=mount, progress=on_bytes)
        elif client.blob_exists(session.target, desc.digest):
            how = "exists"
        elif origin.api_host != session.target.api_host:
            # another registry (a route's target host): no mount across hosts, so copy through the store
            session.fetch(desc, origin)
            how = client.push_blob(session.target, desc.digest, desc.size, store.path(desc.digest),
                                   mount_from=None, progress=on_bytes)
        else:  # a blob we never pulled (the source's, or a linked one): mount it from its repository
            with contextlib.closing(_FetchedOnRead(session, desc, origin)) as src:
                how = client.push_blob(session.target, desc.digest, desc.size, src,
                                       mount_from=origin, progress=on_bytes)
        session.progress(ProgressEvent("push", desc.digest, desc.size, desc.size, how))

    with concurrent.futures.ThreadPoolExecutor(PUSH_CONCURRENCY, thread_name_prefix="push") as pool:
        list(pool.map(one, blobs))


class _FetchedOnRead:
    """An unchanged source blob (or a linked one) offered to the registry as a cross-repository mount. A registry
    may decline a mount (202 and an upload session instead of 201): only then is it read, and reading fetches it
    from its repository into the content store (verified against its digest) and uploads it from there."""

    def __init__(self, session: ConversionSession, desc: Descriptor, origin=None):
        self._session, self._desc, self._fh = session, desc, None
        self._origin = origin or session.source

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if self._fh is None:
            self._session.fetch(self._desc, self._origin)
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
    uploads it from there (its HEAD finds it missing). When it succeeds, ``on_uploaded(digest)`` tells the
    push phase (``session.uploaded``), which then skips its HEAD.
    """

    def __init__(self, ingest, upload, before_commit: Callable[[], None] | None = None,
                 on_uploaded: Callable[[str], None] | None = None):
        self._ingest, self._upload, self._before_commit = ingest, upload, before_commit
        self._on_uploaded = on_uploaded
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
            if self._upload.finish(digest) and self._on_uploaded is not None:
                self._on_uploaded(digest)
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
