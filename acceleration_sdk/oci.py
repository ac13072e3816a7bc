"""OCI and Docker media types and the value objects for descriptors, manifests, indexes and configs.

One loader per external format: ``Descriptor.from_dict``, ``Manifest.from_json``, ``Index.from_json``.
Docker v2s2 is mapped to OCI with :func:`docker_to_oci`. Schema1 is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from typing import Any, Mapping

from .errors import UnsupportedMediaTypeError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

LAYER_TYPES = {
    OCI_LAYER: "", OCI_LAYER_GZIP: "gzip", OCI_LAYER_ZSTD: "zstd",
    DOCKER_LAYER: "", DOCKER_LAYER_GZIP: "gzip",
}
FOREIGN_LAYER_TYPES = (DOCKER_FOREIGN_GZIP, OCI_LAYER_NONDIST, OCI_LAYER_NONDIST_GZIP,
                       "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")

_DOCKER_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST, DOCKER_LIST: OCI_INDEX, DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP, DOCKER_LAYER: OCI_LAYER, DOCKER_FOREIGN_GZIP: OCI_LAYER_NONDIST_GZIP,
}

# docker buildx writes provenance/SBOM manifests with this platform and annotation.
ATTESTATION_PLATFORM = ("unknown", "unknown")
ANNOTATION_REFERENCE_TYPE = "vnd.docker.reference.type"
ANNOTATION_REFERENCE_DIGEST = "vnd.docker.reference.digest"


def docker_to_oci(media_type: str) -> str:
    return _DOCKER_TO_OCI.get(media_type, media_type)


def is_docker(media_type: str) -> bool:
    return media_type.startswith("application/vnd.docker.")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Compact, key-ordered-as-given JSON: what we push, byte for byte, and hash."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclasses.dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    platform: Mapping[str, Any] | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Descriptor":
        if not isinstance(d, Mapping) or not isinstance(d.get("digest"), str) or not isinstance(d.get("size"), int):
            raise UnsupportedMediaTypeError(f"malformed descriptor: {str(d)[:200]}")
        return cls(media_type=str(d.get("mediaType", "")), digest=d["digest"], size=d["size"],
                   annotations=types.MappingProxyType(dict(d.get("annotations") or {})),
                   platform=types.MappingProxyType(dict(d["platform"])) if d.get("platform") else None,
                   urls=tuple(d.get("urls") or ()), artifact_type=str(d.get("artifactType", "")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def replace(self, **changes) -> "Descriptor":
        if "annotations" in changes:
            changes["annotations"] = types.MappingProxyType(dict(changes["annotations"] or {}))
        return dataclasses.replace(self, **changes)

    @property
    def platform_tuple(self) -> tuple[str, str, str]:
        p = self.platform or {}
        return (p.get("os", ""), p.get("architecture", ""), p.get("variant", ""))

    @property
    def is_attestation(self) -> bool:
        return self.platform_tuple[:2] == ATTESTATION_PLATFORM or \
            self.annotations.get(ANNOTATION_REFERENCE_TYPE) == "attestation-manifest"


def _load_json(raw: bytes, what: str) -> dict:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnsupportedMediaTypeError(f"{what} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise UnsupportedMediaTypeError(f"{what} is not a JSON object")
    return data


def check_media_type(media_type: str, reference: str = "") -> None:
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise UnsupportedMediaTypeError(
            f"{reference or 'image'} uses Docker schema 1, which is deprecated and cannot be converted; "
            "push it again with a current client to get schema 2", reference=reference)
    if media_type not in MANIFEST_TYPES + INDEX_TYPES:
        raise UnsupportedMediaTypeError(f"{reference or 'image'} has unsupported media type {media_type!r}",
                                        reference=reference)


@dataclasses.dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: Mapping[str, Any]  # everything else (annotations, subject, artifactType) as it came

    @classmethod
    def from_json(cls, raw: bytes, media_type: str = "", reference: str = "") -> "Manifest":
        data = _load_json(raw, f"manifest of {reference or 'image'}")
        media_type = data.get("mediaType") or media_type
        if data.get("schemaVersion") == 1:
            media_type = DOCKER_SCHEMA1
        check_media_type(media_type, reference)
        if media_type not in MANIFEST_TYPES:
            raise UnsupportedMediaTypeError(f"{reference} is an index, not a manifest", reference=reference)
        try:
            return cls(media_type=media_type, config=Descriptor.from_dict(data["config"]),
                       layers=tuple(Descriptor.from_dict(x) for x in data.get("layers") or ()),
                       raw=types.MappingProxyType(data))
        except KeyError as exc:
            raise UnsupportedMediaTypeError(f"manifest of {reference} lacks {exc.args[0]!r}",
                                            reference=reference) from None


@dataclasses.dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, raw: bytes, media_type: str = "", reference: str = "") -> "Index":
        data = _load_json(raw, f"index of {reference or 'image'}")
        media_type = data.get("mediaType") or media_type
        check_media_type(media_type, reference)
        if media_type not in INDEX_TYPES:
            raise UnsupportedMediaTypeError(f"{reference} is a manifest, not an index", reference=reference)
        return cls(media_type=media_type,
                   manifests=tuple(Descriptor.from_dict(x) for x in data.get("manifests") or ()),
                   raw=types.MappingProxyType(data))


def sniff_media_type(raw: bytes, header_type: str = "") -> str:
    """The manifest's own mediaType field wins over the Content-Type header; schema1 is recognised."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return header_type
    if isinstance(data, dict):
        if data.get("schemaVersion") == 1:
            return DOCKER_SCHEMA1
        if data.get("mediaType"):
            return data["mediaType"]
        if "manifests" in data:
            return OCI_INDEX
        if "config" in data:
            return OCI_MANIFEST
    return header_type
