"""A malformed index at a referrers tag fails the conversion naming the tag; nothing of it is dropped, nothing
is pushed or tagged. Another producer's valid entries are always kept.

The registry here is a FAKE (``FakeReferrersRegistry``): Debian's distribution 2.8 validates an index's
descriptors when it is pushed, so such a tag cannot be planted in the real one; registries that store manifests
as they come (and other producers' bugs) can leave one behind. tests/sdk/test_referrers.py covers the merge
against the real registry.
"""
from __future__ import annotations

import json

import pytest

from acceleration_sdk import oci
from acceleration_sdk.errors import ConversionError, NotFoundError
from acceleration_sdk.reference import parse
from acceleration_sdk.referrers import prepare_tag_update, referrers_tag
from acceleration_sdk.registry.client import FetchedManifest
from tests.support.images import sha

REPO = parse("registry.invalid/app/img")
SUBJECT = "sha256:" + "5" * 64
TAG = REPO.with_tag(referrers_tag(SUBJECT))
THEIRS = {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 500,
          "artifactType": "application/vnd.example.sig", "annotations": {"who": "someone"}}
THEIRS_512 = {"mediaType": oci.OCI_MANIFEST, "digest": "sha512:" + "b" * 128, "size": 600}
OURS = {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "c" * 64, "size": 700,
        "artifactType": "application/vnd.amazon.soci.index.v1+json", "annotations": {"by": "acceld"}}


class FakeReferrersRegistry:
    """A FAKE registry client: the few calls prepare_tag_update makes, over a dict of manifests; it stores
    whatever it is given (unlike distribution 2.8), and records every PUT."""

    def __init__(self, tagged: bytes | None, known: set[str] = frozenset()):
        self.manifests: dict[str, bytes] = {TAG.tag: tagged} if tagged is not None else {}
        self.known = set(known)
        self.puts: list[str] = []

    def get_manifest(self, ref):
        raw = self.manifests.get(ref.object)
        if raw is None:
            raise NotFoundError(f"{ref} not found")
        return FetchedManifest(raw=raw, media_type=oci.OCI_INDEX, digest=sha(raw))

    def head_manifest(self, ref):
        return oci.Descriptor(oci.OCI_MANIFEST, ref.digest, 1) if ref.digest in self.known else None

    def put_manifest(self, ref, raw: bytes, media_type: str) -> str:
        self.puts.append(ref.object)
        self.manifests[ref.object] = raw
        return sha(raw)


def index(manifests) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": manifests}).encode()


def test_valid_entries_of_other_producers_are_kept_sha512_included():
    fake = FakeReferrersRegistry(index([THEIRS, THEIRS_512]), known={THEIRS["digest"], THEIRS_512["digest"]})
    update = prepare_tag_update(fake, REPO, SUBJECT, [OURS], {"by": "acceld"})
    assert json.loads(update.raw)["manifests"] == [THEIRS, THEIRS_512, OURS]
    assert fake.puts == [update.digest]                       # by digest only: the tag is the caller's, last
    # null annotations / artifactType read as absent (as Go's encoding/json does)
    fake = FakeReferrersRegistry(index([dict(THEIRS, annotations=None, artifactType=None)]), known={THEIRS["digest"]})
    assert len(json.loads(prepare_tag_update(fake, REPO, SUBJECT, [OURS], {}).raw)["manifests"]) == 2


@pytest.mark.parametrize("tagged, why", [
    (index([THEIRS, {k: v for k, v in THEIRS.items() if k != "digest"}]),
     r"manifests\[1\]\.digest is missing or null, not sha256:<64 hex>"),
    (index([dict(THEIRS, digest="sha256:1234")]), r"manifests\[0\]\.digest is 'sha256:1234', not sha256:<64 hex>"),
    (index([dict(THEIRS, digest="md5:" + "a" * 32)]), r"manifests\[0\]\.digest is 'md5:a+', not"),
    (index([dict(THEIRS, digest=7)]), r"manifests\[0\]\.digest is a number, not"),
    (index([dict(THEIRS, annotations=["who", "someone"])]), r"manifests\[0\]\.annotations is an array, not a map"),
    (index([dict(THEIRS, annotations={"n": 1})]), r"manifests\[0\]\.annotations holds a value that is not a string"),
    (index([dict(THEIRS, artifactType={"x": 1})]), r"manifests\[0\]\.artifactType is an object, not a string"),
    (index([dict(THEIRS, size="500")]), r"manifests\[0\]\.size is a string, not a byte count"),
    (index([dict(THEIRS, size=-1)]), r"manifests\[0\]\.size is -1, not a byte count"),
    (index(["sha256:" + "a" * 64]), r"manifests\[0\] is a string, not a descriptor"),
    (index({"0": THEIRS}), r"manifests is an object, not a list"),
    (json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX}).encode(), r"manifests is missing or null, not a list"),
    (json.dumps([THEIRS]).encode(), r"an array, not an object"),
    (b"{not json", r"not JSON"),
])
def test_a_malformed_index_fails_naming_the_tag_and_pushes_nothing(tagged, why):
    fake = FakeReferrersRegistry(tagged, known={THEIRS["digest"]})
    with pytest.raises(ConversionError, match=rf"^the referrers tag {TAG} holds a malformed index \({why}.*\): not "
                                              r"touching it; fix or delete that tag and convert again$") as info:
        prepare_tag_update(fake, REPO, SUBJECT, [OURS], {"by": "acceld"})
    assert info.value.reference == str(TAG)
    assert fake.puts == [] and fake.manifests[TAG.tag] == tagged           # nothing pushed, the tag as it was
