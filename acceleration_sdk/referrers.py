"""OCI 1.1 referrers: find an image's referrers, and keep the referrers tag where the registry has no API.

A manifest with a ``subject`` is a *referrer* of that subject (a signature, an SBOM, a SOCI index v1). A
registry with the referrers API (``GET /v2/<name>/referrers/<digest>``) indexes it when it is pushed. One
without (that GET answers 404: Debian's distribution 2.8, Harbor < 2.8) leaves it to the client: the
distribution spec 1.1's *referrers tag schema* -- an OCI image index tagged ``<alg>-<hex>`` of the subject's
digest lists the subject's referrers, each as a descriptor with the referrer's ``artifactType`` (else its
config's media type) and its annotations. The pusher fetches that index, adds its descriptor and pushes the
index at the tag again; this is how oras-go (``indexReferrersForPush``) and so ``soci push`` publish, and
how the snapshotter's oras client finds them again.

Unlike oras-go we do not delete the index the tag pointed at before (distribution deletes by digest and often
has deletes turned off); the registry's garbage collection takes the untagged one. The read-modify-write of
the tag is not atomic (distribution 2.8 has no conditional PUT): a pusher racing us on the same subject can
lose its entry, as with oras-go.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Iterable, Mapping

from . import oci
from .errors import NotFoundError, UnsupportedMediaTypeError
from .oci import Descriptor
from .reference import Reference
from .registry import RegistryClient

log = logging.getLogger("acceleration_sdk.referrers")

_TAG = re.compile(r"[a-z0-9]{1,32}-[0-9a-f]{1,64}")


def referrers_tag(subject: str) -> str:
    """The referrers tag of ``subject``: ``<alg>-<hex>`` (the spec truncates alg to 32, hex to 64 characters)."""
    alg, _, hexpart = subject.partition(":")
    return f"{alg[:32]}-{hexpart[:64]}"


def is_referrers_tag(tag: str) -> bool:
    """Whether ``tag`` has the referrers tag's shape (``sha256-<64 hex>``): an index of referrers, not an image."""
    return bool(tag) and bool(_TAG.fullmatch(tag)) and len(tag.partition("-")[2]) >= 64


@dataclasses.dataclass(frozen=True, slots=True)
class Referrer:
    """A referrer manifest as its subject's list names it: its descriptor entry and the subject's digest."""

    subject: str
    entry: dict  # mediaType, digest, size, annotations (sorted), artifactType: what the index lists


def describe(raw: bytes, desc: Descriptor) -> Referrer:
    """``desc``'s manifest (``raw``) as a referrer; ``UnsupportedMediaTypeError`` when it has no subject."""
    manifest = json.loads(raw)
    subject = (manifest.get("subject") or {}).get("digest")
    if not isinstance(subject, str) or not subject:
        raise UnsupportedMediaTypeError(f"manifest {desc.digest} has no subject: it refers to nothing")
    artifact_type = manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType", "")
    annotations = manifest.get("annotations") or {}
    entry: dict = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if annotations:
        entry["annotations"] = {k: annotations[k] for k in sorted(annotations)}
    if artifact_type:
        entry["artifactType"] = artifact_type
    return Referrer(subject, entry)


def list_referrers(client: RegistryClient, repo: Reference, subject: str) -> list[Descriptor]:
    """``subject``'s referrers in ``repo``: from the referrers API, else from the referrers tag (none: [])."""
    listed = client.referrers(repo, subject)
    if listed is not None:
        return listed
    try:
        fetched = client.get_manifest(repo.with_tag(referrers_tag(subject)))
    except NotFoundError:
        return []
    if fetched.media_type not in oci.INDEX_TYPES:
        raise UnsupportedMediaTypeError(f"{repo.with_tag(referrers_tag(subject))} is a {fetched.media_type}, "
                                        "not the image index of the referrers tag schema")
    return list(oci.Index.from_json(fetched.raw, fetched.media_type, str(repo)).manifests)


@dataclasses.dataclass(frozen=True, slots=True)
class TagUpdate:
    """A new referrers index for one subject, to be tagged last (``raw`` is already pushed by digest)."""

    tag: Reference
    raw: bytes = dataclasses.field(repr=False)
    digest: str


def prepare_tag_update(client: RegistryClient, repo: Reference, subject: str, new: Iterable[dict],
                       replaces: Mapping[str, str]) -> TagUpdate | None:
    """The referrers index of ``subject`` with the ``new`` entries, pushed by digest (the tag not yet moved).

    Entries already listed stay, in their order, except: the same digest (listed once), an entry of the same
    ``artifactType`` whose annotations hold every pair of ``replaces`` (a stale output of the same producer:
    the new entry takes its place, so a client that picks the first one -- the SOCI snapshotter -- gets the
    new one), and an entry whose manifest is gone (the registry would refuse an index naming it). ``None``
    when nothing changes.
    """
    tag = repo.with_tag(referrers_tag(subject))
    top: dict = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []}
    try:
        fetched = client.get_manifest(tag)
        if fetched.media_type != oci.OCI_INDEX:
            raise UnsupportedMediaTypeError(f"{tag} is a {fetched.media_type}, not the OCI image index of the "
                                            "referrers tag schema: not touching it")
        top = json.loads(fetched.raw)
    except NotFoundError:
        fetched = None
    old = [d for d in top.get("manifests") or () if isinstance(d, dict)]
    new = list(new)
    mine = {d["digest"] for d in new}
    kept: list[dict] = []
    placed = False
    for entry in old:
        stale = replaces and entry.get("artifactType") in {d.get("artifactType") for d in new} and \
            all((entry.get("annotations") or {}).get(k) == v for k, v in replaces.items())
        if entry.get("digest") in mine or stale:
            if not placed:
                kept.extend(new)
                placed = True
            continue
        if client.head_manifest(repo.with_digest(entry["digest"])) is None:
            log.info("referrers of %s: dropping %s, its manifest is gone", subject, entry.get("digest"))
            continue
        kept.append(entry)
    if not placed:
        kept.extend(new)
    if fetched is not None and kept == old:
        return None
    out = dict(top, schemaVersion=2, mediaType=oci.OCI_INDEX, manifests=kept)
    raw = oci.canonical_json(out)
    digest = client.put_manifest(repo.with_digest(oci.sha256_digest(raw)), raw, oci.OCI_INDEX)
    return TagUpdate(tag, raw, digest)
