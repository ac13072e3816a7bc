"""The SOCI index layouts as upstream writes them (facts: /work/shared/SOCI.md §1): v2 (``soci convert``) and
the legacy v1 (``soci create`` + ``soci push``: the same index with a ``subject``, found as a referrer).

Go's ``encoding/json`` writes struct fields in declaration order and map keys sorted; these builders do the
same, so our manifests read like upstream's (soci-snapshotter soci/soci_convert.go:243-351,
soci/soci_index.go:241-250, :599-626, :840-848).
"""
from __future__ import annotations

from typing import Any, Mapping

from acceleration_sdk import oci

SOCI_INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
SOCI_INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"  # soci_index.go:52: config type, found as referrer
SOCI_LAYER = "application/octet-stream"
EMPTY_CONFIG = b"{}"
ANN_INDEX_DIGEST = "com.amazon.soci.index-digest"
ANN_MANIFEST_DIGEST = "com.amazon.soci.image-manifest-digest"
ANN_BUILD_TOOL = "com.amazon.soci.build-tool-identifier"
ANN_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
ANN_LAYER_MEDIA_TYPE = "com.amazon.soci.image-layer-mediaType"
ANN_SPAN_SIZE = "com.amazon.soci.span-size"
ANN_DISABLE_XATTRS = "com.amazon.soci.disable-xattrs"
PLATFORM_KEYS = ("architecture", "os", "os.version", "os.features", "variant")  # ocispec.Platform's order


def _sorted(m: Mapping[str, str] | None) -> dict[str, str]:
    return {k: m[k] for k in sorted(m)} if m else {}


def descriptor(d: Mapping[str, Any]) -> dict[str, Any]:
    """An ocispec.Descriptor as Go marshals it: known fields in order, annotations sorted, empties left out."""
    out: dict[str, Any] = {"mediaType": d.get("mediaType", ""), "digest": d["digest"], "size": d["size"]}
    if not out["mediaType"]:
        del out["mediaType"]
    for key in ("urls", "annotations", "data", "platform", "artifactType"):
        value = d.get(key)
        if not value:
            continue
        if key == "annotations":
            value = _sorted(value)
        elif key == "platform":
            value = {k: value[k] for k in PLATFORM_KEYS if value.get(k)}
        out[key] = value
    return out


def ztoc_descriptor(digest: str, size: int, layer: Mapping[str, Any], span_size: int,
                    disable_xattrs: bool) -> dict[str, Any]:
    ann = {ANN_LAYER_MEDIA_TYPE: layer["mediaType"], ANN_LAYER_DIGEST: layer["digest"],
           ANN_SPAN_SIZE: str(span_size)}
    if disable_xattrs:
        ann[ANN_DISABLE_XATTRS] = "true"
    return descriptor({"mediaType": SOCI_LAYER, "digest": digest, "size": size, "annotations": ann})


def soci_index(ztocs: list[dict[str, Any]], build_tool: str, version: str = SOCI_INDEX_V2,
               subject: Mapping[str, Any] | None = None,
               extra_annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The SOCI index: an OCI image manifest, config = the ``{}`` blob typed as the index version; v2 has no
    subject, v1's ``subject`` is the image manifest (mediaType, digest, size only: soci_index.go:619-626)
    and it has no top-level artifactType either (MarshalIndex, :241-250; ocispec.Manifest field order)."""
    out: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": version, "digest": oci.sha256_digest(EMPTY_CONFIG),
                                      "size": len(EMPTY_CONFIG)},
                           "layers": ztocs}
    if subject is not None:
        out["subject"] = {"mediaType": subject["mediaType"], "digest": subject["digest"], "size": subject["size"]}
    out["annotations"] = _sorted({**(extra_annotations or {}), ANN_BUILD_TOOL: build_tool})
    return out


def image_manifest(source: Mapping[str, Any], index_digest: str | None) -> dict[str, Any]:
    """The image manifest re-serialised as OCI (ocispec.Manifest's fields; unknown ones are dropped as Go does)."""
    config = dict(source["config"], mediaType=oci.OCI_CONFIG)
    annotations = dict(source.get("annotations") or {})
    if index_digest:
        annotations[ANN_INDEX_DIGEST] = index_digest
    out: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST}
    if source.get("artifactType"):
        out["artifactType"] = source["artifactType"]
    out["config"] = descriptor(config)
    out["layers"] = [descriptor(x) for x in source.get("layers") or ()]
    if source.get("subject"):
        out["subject"] = descriptor(source["subject"])
    if annotations:
        out["annotations"] = _sorted(annotations)
    return out


def oci_index(source: Mapping[str, Any] | None, manifests: list[dict[str, Any]],
              extra_annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The target tag's OCI index (ocispec.Index's fields); a single-manifest source gets a new one."""
    out: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX}
    if source and source.get("artifactType"):
        out["artifactType"] = source["artifactType"]
    out["manifests"] = manifests
    if source and source.get("subject"):
        out["subject"] = descriptor(source["subject"])
    annotations = {**((source or {}).get("annotations") or {}), **(extra_annotations or {})}
    if annotations:
        out["annotations"] = _sorted(annotations)
    return out
