"""The remote layer cache (acceld's ``cache_tag``): converted layers remembered in the registry itself.

Any acceld host converting an image whose layers were converted before (by anyone, with the same driver,
version and options) reuses the converted blobs instead of converting again. The cache lives next to the
images, at ``<repository>:<cache_tag>``: an OCI index with one manifest per platform; each manifest's layers
are converted layers, annotated with the source layer's digest, the driver's cache key and the diff_id,
newest first, at most ``provider.cache_size`` per platform. The index carries a cache-version annotation
(``provider.cache_version``); a cache of another version is ignored and replaced.

Writers race (last one wins, records of the other are lost, never corrupted); a cache that cannot be read
or written only costs time: errors are logged, never fail a conversion.
"""
from __future__ import annotations

import io
import json
import logging
import threading

from . import oci
from .errors import AccelError
from .oci import Descriptor
from .reference import Reference

log = logging.getLogger("acceleration_sdk.engine")

SOURCE_DIGEST = "io.goharbor.acceleration.cache.source-digest"
CACHE_KEY = "io.goharbor.acceleration.cache.key"
DIFF_ID = "io.goharbor.acceleration.cache.diff-id"
CACHE_VERSION = "io.goharbor.acceleration.cache.version"
ARTIFACT_TYPE = "application/vnd.goharbor.acceleration.cache.v1"
EMPTY_CONFIG = b"{}"
DEFAULT_VERSION = "v1"


class RemoteCache:
    def __init__(self, client, repo: Reference, tag: str, size: int, version: str = ""):
        self.client, self.ref, self.size = client, repo.with_tag(tag), size
        self.version = version or DEFAULT_VERSION
        self._lock = threading.Lock()
        # platform -> list of layer descriptor dicts (newest first)
        self._records: dict[str, list[dict]] = {}
        self._platforms: dict[str, dict] = {}
        self._dirty = False

    # ------------------------------------------------------------------ reading
    def load(self) -> "RemoteCache":
        try:
            fetched = self.client.get_manifest(self.ref)
            index = json.loads(fetched.raw)
            if (index.get("annotations") or {}).get(CACHE_VERSION) != self.version:
                log.info("remote cache %s has another version; starting a new one", self.ref)
                return self
            for child in index.get("manifests") or []:
                raw = self.client.get_manifest(self.ref.with_digest(child["digest"])).raw
                key = _platform_key(child.get("platform") or {})
                self._platforms[key] = child.get("platform") or {}
                self._records[key] = list(json.loads(raw).get("layers") or [])[: self.size]
        except AccelError as exc:  # a missing or unreadable cache is an empty cache
            log.debug("remote cache %s not used: %s", self.ref, exc)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("remote cache %s is malformed, ignoring it: %s", self.ref, exc)
        return self

    def get(self, cache_key: str, source_digest: str) -> tuple[Descriptor, str] | None:
        with self._lock:
            for records in self._records.values():
                for rec in records:
                    try:
                        ann = rec.get("annotations") or {}
                        if ann.get(SOURCE_DIGEST) == source_digest and ann.get(CACHE_KEY) == cache_key:
                            plain = {k: v for k, v in ann.items() if k not in (SOURCE_DIGEST, CACHE_KEY, DIFF_ID)}
                            return Descriptor.from_dict({**rec, "annotations": plain}), str(ann[DIFF_ID])
                    except (AttributeError, KeyError, TypeError, AccelError):
                        continue  # a malformed record (anyone who can push the cache tag can write one)
        return None

    # ------------------------------------------------------------------ writing
    def add(self, platform: dict, cache_key: str, source_digest: str, desc: Descriptor, diff_id: str) -> None:
        key = _platform_key(platform)
        record = desc.to_dict()
        record["annotations"] = {**record.get("annotations", {}), SOURCE_DIGEST: source_digest,
                                 CACHE_KEY: cache_key, DIFF_ID: diff_id}
        with self._lock:
            self._platforms.setdefault(key, dict(platform))
            records = [r for r in self._records.get(key, [])
                       if (r.get("annotations") or {}).get(SOURCE_DIGEST) != source_digest
                       or (r.get("annotations") or {}).get(CACHE_KEY) != cache_key]
            self._records[key] = ([record] + records)[: self.size]
            self._dirty = True

    def discard(self, cache_key: str, source_digest: str) -> bool:
        """Drop the records of ``source_digest`` under ``cache_key`` (every platform); True when there were any.
        The next :meth:`save` writes the cache without them."""
        dropped = False
        with self._lock:
            for key, records in self._records.items():
                kept = [r for r in records if not isinstance(r, dict)
                        or (r.get("annotations") or {}).get(SOURCE_DIGEST) != source_digest
                        or (r.get("annotations") or {}).get(CACHE_KEY) != cache_key]
                if len(kept) != len(records):
                    self._records[key], dropped = kept, True
            self._dirty = self._dirty or dropped
        return dropped

    def save(self) -> None:
        """Push the cache (children first, the cache tag last); errors are logged, never raised."""
        if not self._dirty or self.size <= 0:
            return
        try:
            empty = oci.sha256_digest(EMPTY_CONFIG)
            self.client.push_blob(self.ref, empty, len(EMPTY_CONFIG), io.BytesIO(EMPTY_CONFIG))
            children = []
            for key, layers in sorted(self._records.items()):
                manifest = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
                            "config": {"mediaType": oci.OCI_EMPTY, "digest": empty, "size": len(EMPTY_CONFIG)},
                            "layers": layers}
                raw = oci.canonical_json(manifest)
                digest = self.client.put_manifest(self.ref.with_digest(oci.sha256_digest(raw)), raw,
                                                  oci.OCI_MANIFEST)
                child = {"mediaType": oci.OCI_MANIFEST, "digest": digest, "size": len(raw)}
                if self._platforms.get(key):
                    child["platform"] = self._platforms[key]
                children.append(child)
            index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "artifactType": ARTIFACT_TYPE,
                     "manifests": children, "annotations": {CACHE_VERSION: self.version}}
            self.client.put_manifest(self.ref, oci.canonical_json(index), oci.OCI_INDEX)
        except AccelError as exc:
            log.warning("remote cache %s not saved: %s", self.ref, exc)


def _platform_key(platform: dict) -> str:
    return "/".join(platform.get(k, "") for k in ("os", "architecture", "variant")).rstrip("/")

