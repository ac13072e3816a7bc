"""acceleration_sdk.referrers against the real registry (Debian's distribution 2.8: no referrers API, so the
OCI 1.1 referrers tag schema): listing, and merging a referrers tag's index -- others kept in order, a stale
output of the same producer replaced in place, an entry whose manifest is gone dropped, a tag that is not an
OCI index left alone."""
from __future__ import annotations

import io
import json

import pytest

from acceleration_sdk import oci
from acceleration_sdk.errors import UnsupportedMediaTypeError
from acceleration_sdk.oci import Descriptor
from acceleration_sdk.reference import parse
from acceleration_sdk.referrers import describe, is_referrers_tag, list_referrers, prepare_tag_update, referrers_tag
from acceleration_sdk.registry import RegistryClient
from tests.support.images import push_image, sha, simple_tar

EMPTY = b"{}"


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


def referrer(client, repo, subject, artifact_type: str, annotations: dict) -> Descriptor:
    """Push an artifact manifest referring to ``subject``; its descriptor."""
    client.push_blob(repo, sha(EMPTY), 2, io.BytesIO(EMPTY))
    m = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
         "config": {"mediaType": artifact_type, "digest": sha(EMPTY), "size": 2}, "layers": [],
         "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
         "annotations": annotations}
    raw = json.dumps(m).encode()
    client.put_manifest(repo.with_digest(sha(raw)), raw, oci.OCI_MANIFEST)
    return Descriptor(oci.OCI_MANIFEST, sha(raw), len(raw))


def test_the_tag_lists_referrers_and_is_merged(registry, client):
    repo = parse(f"{registry.host}/refs/app")
    img = push_image(client, repo.with_tag("1"), [simple_tar({"a": b"b"})])
    subject = Descriptor(img.media_type, img.digest, img.size)
    assert client.referrers(repo, img.digest) is None  # distribution 2.8: no API
    assert list_referrers(client, repo, img.digest) == []

    sig = referrer(client, repo, subject, "application/vnd.example.sig", {"who": "someone"})
    ours_old = referrer(client, repo, subject, "application/x.ours", {"by": "us", "v": "1"})
    gone = referrer(client, repo, subject, "application/vnd.example.sbom", {})
    entries = [describe(client.get_manifest(repo.with_digest(d.digest)).raw, d).entry for d in (sig, ours_old, gone)]
    assert entries[0] == {"mediaType": oci.OCI_MANIFEST, "digest": sig.digest, "size": sig.size,
                          "annotations": {"who": "someone"}, "artifactType": "application/vnd.example.sig"}
    update = prepare_tag_update(client, repo, img.digest, entries, {})
    assert client.head_manifest(update.tag) is None  # pushed by digest only: the tag is the caller's, last
    client.put_manifest(update.tag, update.raw, oci.OCI_INDEX)
    assert [d.digest for d in list_referrers(client, repo, img.digest)] == [sig.digest, ours_old.digest, gone.digest]

    client.delete_manifest(repo, gone.digest)  # an index naming it would now be refused by the registry
    ours_new = referrer(client, repo, subject, "application/x.ours", {"by": "us", "v": "2"})
    new_entry = describe(client.get_manifest(repo.with_digest(ours_new.digest)).raw, ours_new).entry
    update = prepare_tag_update(client, repo, img.digest, [new_entry], {"by": "us"})
    client.put_manifest(update.tag, update.raw, oci.OCI_INDEX)
    # the stale one of ours replaced where it stood, the other kept first, the gone one dropped
    assert [d.digest for d in list_referrers(client, repo, img.digest)] == [sig.digest, ours_new.digest]
    assert prepare_tag_update(client, repo, img.digest, [new_entry], {"by": "us"}) is None  # nothing changes


def test_a_tag_that_is_not_an_oci_index_is_left_alone(registry, client):
    repo = parse(f"{registry.host}/refs/odd")
    img = push_image(client, repo.with_tag("1"), [simple_tar({"a": b"b"})])
    client.put_manifest(repo.with_tag(referrers_tag(img.digest)), json.dumps(img.manifest).encode(), oci.OCI_MANIFEST)
    with pytest.raises(UnsupportedMediaTypeError) as info:
        prepare_tag_update(client, repo, img.digest, [], {})
    assert "not the OCI image index of the referrers tag schema" in str(info.value)


def test_a_manifest_without_subject_is_no_referrer():
    raw = json.dumps({"schemaVersion": 2, "config": {"mediaType": "x", "digest": sha(EMPTY), "size": 2}}).encode()
    with pytest.raises(UnsupportedMediaTypeError):
        describe(raw, Descriptor(oci.OCI_MANIFEST, sha(raw), len(raw)))
    assert is_referrers_tag("sha512-" + "0" * 64) and not is_referrers_tag("latest")
