"""Another image a driver reads while it converts one (nydus's ``chunk_dict_ref``), through the engine only.

    image = content.referenced_image("registry.example.com/base/dict:v1", what="chunk_dict_ref")
    raw = image.read_manifest()                   # the root (manifest or index) as resolved for this conversion
    with image.open_blob(desc) as fh: ...         # a blob of it, fetched into the content store, verified
    image.link_blob(desc)                         # the converted image uses this blob: pushed with it

Rules, because the reference comes from configuration, not from the registry's webhook:

* only a host in ``provider.source`` is read (the engine's registry client and its credentials): acceld
  never fetches from a registry it is not configured for (``ConversionError`` naming the option);
* the reference is resolved once per conversion (every layer and manifest sees the same digest, even if its
  tag moves meanwhile), so a driver can put that digest into its layer-cache key;
* a linked blob is pushed to the target by a cross-repository mount from the image's repository (same
  registry), else copied through the content store (``push.push_blobs``).
"""
from __future__ import annotations

import contextlib
from typing import BinaryIO, Iterator

from . import reference
from .errors import ContentError, ConversionError, ReferenceError_, RegistryError
from .oci import Descriptor
from .reference import Reference


class ReferencedImage:
    """One resolved image: ``reference`` (with the resolved ``digest``) and ``root``, its manifest or index."""

    def __init__(self, session, ref: Reference, root: Descriptor):
        self._session = session
        self.reference = ref.with_digest(root.digest)
        self.root = root

    def __repr__(self) -> str:
        return f"ReferencedImage({self.reference})"

    def read_manifest(self, desc: Descriptor | None = None) -> bytes:
        """The root's bytes, or a child manifest of the root index by digest (verified, kept in the store)."""
        s = self._session
        desc = desc or self.root
        s.lease.add([desc.digest])
        if not s.store.has(desc.digest):
            fetched = s.client.get_manifest(self.reference.with_digest(desc.digest))
            s.store.write_bytes(fetched.raw, expected=desc.digest)
        return s.store.read_bytes(desc.digest)

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[BinaryIO]:
        """A blob of this image from the content store (downloaded from its repository and verified first)."""
        s = self._session
        s.fetch(desc, self.reference)
        with open(s.store.path(desc.digest), "rb") as fh:
            yield fh

    def link_blob(self, desc: Descriptor) -> None:
        """``desc`` (a blob of this image) is part of the converted image: push it from this repository."""
        with self._session.referenced_lock:
            self._session.linked_blobs[desc.digest] = self.reference


def resolve(session, text: str, what: str) -> ReferencedImage:
    """``text`` resolved once per conversion; refused unless its host is in ``provider.source``."""
    with session.referenced_lock:
        found = session.referenced.get(text)
    if found is not None:
        return found
    try:
        ref = reference.parse(text)
    except ReferenceError_ as exc:
        raise ConversionError(f"{what} {text!r} is not an image reference: {exc}") from None
    if session.cfg.provider.source_for(ref.host) is None:
        raise ConversionError(f"{what} {ref} is on {ref.host}, which is not a configured registry "
                              "(provider.source): acceld reads images only from the registries it is configured "
                              "for", reference=str(ref))
    if session.client is None:
        raise ContentError(f"{what} {ref}: there is no registry to read it from")
    try:
        fetched = session.client.get_manifest(ref)
    except RegistryError as exc:   # which option named the image is what the reader needs first
        raise ConversionError(f"{what} {ref}: {exc}", reference=str(ref)) from exc
    session.store.write_bytes(fetched.raw, expected=fetched.digest)
    session.lease.add([fetched.digest])
    image = ReferencedImage(session, ref, fetched.descriptor)
    with session.referenced_lock:
        return session.referenced.setdefault(text, image)  # a racing resolution: the first one stands
