"""Build small test images and push them to a (real) registry with the SDK's RegistryClient.

``push_image(client, "127.0.0.1:5000/app:v1", [tar_bytes, ...], compression="gzip")`` pushes the layers,
a config whose diff_ids are right, and an OCI (or Docker v2s2) manifest; ``push_index`` makes a multi-arch
index, optionally with a buildx-style attestation manifest.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import tarfile

import zstandard

from acceleration_sdk import oci
from acceleration_sdk.reference import Reference, parse


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def simple_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclasses.dataclass
class PushedImage:
    ref: Reference
    digest: str
    size: int
    media_type: str
    manifest: dict
    config: dict
    platform: dict

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, "platform": self.platform}


def push_image(client, ref: str | Reference, layers: list[bytes], *, compression: str = "gzip",
               docker: bool = False, platform: tuple[str, str] = ("linux", "amd64"), tag: bool = True,
               foreign: list[dict] | None = None) -> PushedImage:
    ref = parse(ref) if isinstance(ref, str) else ref
    layer_type = {("gzip", False): oci.OCI_LAYER_GZIP, ("zstd", False): oci.OCI_LAYER_ZSTD, ("", False): oci.OCI_LAYER,
                  ("gzip", True): oci.DOCKER_LAYER_GZIP, ("", True): oci.DOCKER_LAYER}[(compression, docker)]
    descs, diff_ids = [], []
    for tar in layers:
        blob = compress(tar, compression)
        client.push_blob(ref, sha(blob), len(blob), io.BytesIO(blob))
        descs.append({"mediaType": layer_type, "digest": sha(blob), "size": len(blob)})
        diff_ids.append(sha(tar))
    for f in foreign or ():
        descs.append(f["descriptor"])
        diff_ids.append(f["diff_id"])
    config = {"architecture": platform[1], "os": platform[0], "config": {"Env": ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": f"layer {i}"} for i in range(len(descs))]}
    config_raw = json.dumps(config).encode()
    client.push_blob(ref, sha(config_raw), len(config_raw), io.BytesIO(config_raw))
    media_type = oci.DOCKER_MANIFEST if docker else oci.OCI_MANIFEST
    manifest = {"schemaVersion": 2, "mediaType": media_type,
                "config": {"mediaType": oci.DOCKER_CONFIG if docker else oci.OCI_CONFIG,
                           "digest": sha(config_raw), "size": len(config_raw)},
                "layers": descs}
    raw = json.dumps(manifest).encode()
    client.put_manifest(ref if tag else ref.with_digest(sha(raw)), raw, media_type)
    return PushedImage(ref=ref, digest=sha(raw), size=len(raw), media_type=media_type, manifest=manifest,
                       config=config, platform={"architecture": platform[1], "os": platform[0]})


def push_index(client, ref: str | Reference, images: list[PushedImage], *, attest: PushedImage | None = None,
               docker: bool = False) -> str:
    """An index of ``images``; with ``attest``, a buildx-style attestation manifest describing it."""
    ref = parse(ref) if isinstance(ref, str) else ref
    manifests = [img.descriptor() for img in images]
    if attest is not None:
        att_body = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
        client.push_blob(ref, sha(att_body), len(att_body), io.BytesIO(att_body))
        empty = b"{}"
        client.push_blob(ref, sha(empty), len(empty), io.BytesIO(empty))
        att_manifest = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                        "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(empty), "size": 2},
                        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": sha(att_body),
                                    "size": len(att_body)}]}
        att_raw = json.dumps(att_manifest).encode()
        client.put_manifest(ref.with_digest(sha(att_raw)), att_raw, oci.OCI_MANIFEST)
        manifests.append({"mediaType": oci.OCI_MANIFEST, "digest": sha(att_raw), "size": len(att_raw),
                          "platform": {"architecture": "unknown", "os": "unknown"},
                          "annotations": {oci.ANNOTATION_REFERENCE_DIGEST: attest.digest,
                                          oci.ANNOTATION_REFERENCE_TYPE: "attestation-manifest"}})
    media_type = oci.DOCKER_LIST if docker else oci.OCI_INDEX
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}
    raw = json.dumps(index).encode()
    client.put_manifest(ref, raw, media_type)
    return sha(raw)
