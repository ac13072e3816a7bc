"""``merge_manifest: true``: one reference for both kinds of runtime -- per source platform, the source image
(with an empty layer first) and the nydus image side by side in one OCI index.

acceld (goharbor/acceleration-service ``pkg/driver/nydus/nydus.go`` at cea8fdb, ``makeManifestIndex`` and
``PrependEmptyLayer``) is the specification:

* the source manifest gets an empty tar.gz layer prepended (annotation ``containerd.io/snapshot/nydus-empty-layer``),
  its config the empty tar's diff_id first in ``rootfs.diff_ids`` and a history entry first; so every layer's
  chain ID changes and a runtime never shares unpacked layers between the stock image and this one;
* the nydus manifest's config media type becomes ``application/vnd.nydus.image.config.v1+json``, one containerd
  does not understand, so a runtime without nydus takes the OCI manifest (nydus-snapshotter ``convert_unix.go``,
  ``MergeManifest``);
* the nydus manifest carries acceld's manifest annotations (its ``PostConvertHook`` on every converted manifest,
  nydus.go 304-330): the source manifest's digest, the source reference and the fs version (``6``, RAFS v6);
  acceld's ``nydus-builder-version`` (``nydus-image --version``) is left out: no nydus-image builds these;
* the nydus manifest's index descriptor carries ``artifactType: application/vnd.nydus.image.manifest.v1+json``
  and the source's platform; nydus-snapshotter's index detection (``pkg/index/detector.go``) finds it by that
  mark (or the older ``platform.os.features: ["nydus.remoteimage.v1"]``) next to the OCI manifest it pulled.

Unlike acceld, a single-manifest source's entries get the platform from its config: the detector matches the
nydus entry against the OCI entry's platform and needs one on both.
"""
from __future__ import annotations

import copy
import json

from acceleration_sdk.driver import SourceManifest
from acceleration_sdk.errors import DriverError
from acceleration_sdk.oci import DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, Descriptor, is_docker

from .media import FS_VERSION_ANNOTATION

# nydus-snapshotter pkg/converter/constant.go
ARTIFACT_TYPE = "application/vnd.nydus.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.nydus.image.config.v1+json"
OS_FEATURE = "nydus.remoteimage.v1"  # the older mark (nydus-snapshotter's converter wrote it up to v0.15.1)
# acceld nydus.go
EMPTY_LAYER_ANNOTATION = "containerd.io/snapshot/nydus-empty-layer"
SOURCE_DIGEST_ANNOTATION = "containerd.io/snapshot/nydus-source-digest"
SOURCE_REFERENCE_ANNOTATION = "containerd.io/snapshot/nydus-source-reference"
FS_VERSION = "6"  # RAFS v6, the only version this driver writes (acceld's fs_version default)
EMPTY_LAYER_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Empty Layer"}
# Go's gzip.NewWriter around an empty tar.Writer (acceld's generateDockerEmptyLayer), byte for byte: the same
# digest as acceld's layer (and Docker's well-known empty layer), so registries and runtimes share one blob.
EMPTY_LAYER = bytes.fromhex("1f8b08000000000000ff621805a360148c5800080000ffff2eafb5ef00040000")
EMPTY_LAYER_DIGEST = "sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1"
# sha256 of the 1024 zero bytes inside (acceld's emptyTarGzipUnpackedDigest)
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


def merged_entries(content, source: SourceManifest, converted: Descriptor) -> list[Descriptor]:
    """The index entries of one platform: the source image with the empty layer first, then the nydus one."""
    return [with_empty_layer(content, source), nydus_entry(content, source, converted)]


def with_empty_layer(content, source: SourceManifest) -> Descriptor:
    """acceld's PrependEmptyLayer: the source manifest and config with the empty layer first, in the store."""
    desc = source.descriptor
    docker = is_docker(desc.media_type)
    with content.blob_writer() as out:  # in the store, and on its way to the target repository
        out.write(EMPTY_LAYER)
        digest = out.commit()
    if digest != EMPTY_LAYER_DIGEST:  # a constant that does not hash to its name is a bug: say so
        raise DriverError(f"the empty layer was stored as {digest}, not {EMPTY_LAYER_DIGEST}")
    empty = Descriptor(media_type=DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP, digest=digest,
                       size=len(EMPTY_LAYER), annotations={EMPTY_LAYER_ANNOTATION: "true"})

    config = copy.deepcopy(dict(source.config))
    rootfs = config.setdefault("rootfs", {"type": "layers"})
    rootfs["diff_ids"] = [EMPTY_LAYER_DIFF_ID] + list(rootfs.get("diff_ids") or [])
    # no timestamp: two conversions of the same image give the same config (acceld's comment)
    config["history"] = [dict(EMPTY_LAYER_HISTORY)] + list(config.get("history") or [])
    config_desc = content.put_json(config)

    manifest = copy.deepcopy(dict(source.manifest))
    manifest["config"] = {**manifest["config"], "digest": config_desc.digest, "size": config_desc.size}
    manifest["layers"] = [empty.to_dict()] + list(manifest.get("layers") or [])
    manifest["annotations"] = {**(manifest.get("annotations") or {}), SOURCE_DIGEST_ANNOTATION: desc.digest}
    written = content.put_json(manifest)
    return desc.replace(digest=written.digest, size=written.size,
                        annotations={**desc.annotations, SOURCE_DIGEST_ANNOTATION: desc.digest})


def nydus_entry(content, source: SourceManifest, converted: Descriptor) -> Descriptor:
    """The nydus manifest with the config media type containerd skips, acceld's annotations, and marked with the
    artifactType."""
    manifest = json.loads(content.store.read_bytes(converted.digest))  # the walk wrote it there
    manifest["config"] = {**manifest["config"], "mediaType": CONFIG_MEDIA_TYPE}
    manifest["annotations"] = {**(manifest.get("annotations") or {}),
                               SOURCE_DIGEST_ANNOTATION: source.descriptor.digest,
                               SOURCE_REFERENCE_ANNOTATION: str(content.source), FS_VERSION_ANNOTATION: FS_VERSION}
    written = content.put_json(manifest)
    return converted.replace(digest=written.digest, size=written.size, artifact_type=ARTIFACT_TYPE)
