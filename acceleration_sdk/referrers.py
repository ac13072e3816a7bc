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
from .errors import ConversionError, NotFoundError, UnsupportedMediaTypeError
from .oci import Descriptor
from .reference import Reference, is_digest
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


def _listed_index(tag: Reference, raw: bytes) -> dict:
    """The index at the referrers tag, every entry a descriptor we can keep as it is (digest, size, media type,
    annotations and artifactType of the right kinds). Anything else fails the conversion (ConversionError,
    nothing tagged yet): the entries are other producers' (signatures, SBOMs), so a careful tool neither drops
    what it cannot read nor guesses; the tag's owner fixes or deletes it."""
    def malformed(why: str) -> ConversionError:
        return ConversionError(f"the referrers tag {tag} holds a malformed index ({why}): not touching it; fix or "
                               "delete that tag and convert again", reference=str(tag))

    try:
        top = json.loads(raw)
    except ValueError as exc:   # JSONDecodeError, UnicodeDecodeError
        raise malformed(f"not JSON: {exc}") from None
    if not isinstance(top, dict):
        raise malformed(f"{_kind(top)}, not an object")
    if not isinstance(top.get("manifests"), list):
        raise malformed(f"manifests is {_kind(top.get('manifests'))}, not a list")
    for i, entry in enumerate(top["manifests"]):
        where = f"manifests[{i}]"
        if not isinstance(entry, dict):
            raise malformed(f"{where} is {_kind(entry)}, not a descriptor")
        digest, size = entry.get("digest"), entry.get("size")
        if not is_digest(digest):
            shown = repr(digest[:80]) if isinstance(digest, str) else _kind(digest)
            raise malformed(f"{where}.digest is {shown}, not sha256:<64 hex> (or sha512:<128 hex>)")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise malformed(f"{where}.size is {size if isinstance(size, int) else _kind(size)}, not a byte count")
        for key, kind in (("mediaType", str), ("artifactType", str), ("annotations", dict)):
            if entry.get(key) is not None and not isinstance(entry[key], kind):   # null: absent, as Go reads it
                raise malformed(f"{where}.{key} is {_kind(entry[key])}, not {'a string' if kind is str else 'a map'}")
        if any(not isinstance(v, str) for v in (entry.get("annotations") or {}).values()):
            raise malformed(f"{where}.annotations holds a value that is not a string")
    return top


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean"}


def _kind(value) -> str:
    return "missing or null" if value is None else _JSON_KINDS.get(type(value), type(value).__name__)


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
    when nothing changes. A malformed index at the tag (not an object, ``manifests`` not a list, an entry that is
    no descriptor) is a ``ConversionError`` naming the tag: nothing of it is dropped or rewritten.
    """
    tag = repo.with_tag(referrers_tag(subject))
    top: dict = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []}
    try:
        fetched = client.get_manifest(tag)
        if fetched.media_type != oci.OCI_INDEX:
            raise UnsupportedMediaTypeError(f"{tag} is a {fetched.media_type}, not the OCI image index of the "
                                            "referrers tag schema: not touching it")
        top = _listed_index(tag, fetched.raw)
    except NotFoundError:
        fetched = None
    old = list(top["manifests"])
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
