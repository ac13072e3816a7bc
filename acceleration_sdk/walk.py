"""The engine's walk of a source image for a LayerDriver: index -> manifests -> config + layers.

Dispatch is on media type (containerd's ``core/images/converter`` works the same way): an index keeps its
wanted platforms and the attestations that describe them; a manifest gets its layers converted (a layer
converter returning ``None`` means "unchanged": foreign layers, media types the driver leaves alone), its
media types mapped Docker -> OCI when the driver asks for it, its config's ``rootfs.diff_ids`` rewritten and
the Docker v1 image IDs cleared from the config, ``subject`` and the Harbor annotations set, and the sizes
summed. Converted layers are remembered in the local layer cache and, with ``cache_tag``, the remote one.
"""
from __future__ import annotations

import concurrent.futures
import copy
import json
from typing import Any

from . import oci
from .driver import ConvertedLayer, LayerDriver, ProgressEvent, SourceManifest
from .errors import AccelError, ConversionError, DriverError, LayerError
from .oci import Descriptor, Index, Manifest
from .provider import EngineProvider
from .session import ConversionSession
from .session import HARBOR_DRIVER_NAME, HARBOR_DRIVER_VERSION, HARBOR_SOURCE_DIGEST  # noqa: F401 (re-exported)

LAYER_CONCURRENCY = 2  # layers converted at once; each layer's compressor may use threads of its own
_TO_DOCKER_LAYER = {oci.OCI_LAYER_GZIP: oci.DOCKER_LAYER_GZIP, oci.OCI_LAYER: oci.DOCKER_LAYER}


def walk_image(session: ConversionSession, driver: LayerDriver) -> Descriptor:
    """Convert the session's root (a manifest or an index) layer by layer; returns the new root's descriptor."""
    return _Walk(session, driver).root()


def clear_docker_v1_ids(config: dict) -> None:
    """Drop ``config.Image`` and ``container_config.Image``: Docker v1 IDs that named the old layers.

    containerd's converter does the same (``clearDockerV1DummyID``) whenever it rewrites the diff_ids.
    """
    for key in ("config", "container_config"):
        if isinstance(config.get(key), dict):
            config[key].pop("Image", None)


class _Walk:
    def __init__(self, session: ConversionSession, driver: LayerDriver):
        self.s, self.driver = session, driver
        self.docker2oci = driver.docker2oci()

    def root(self) -> Descriptor:
        s = self.s
        raw = s.store.read_bytes(s.root.digest)
        if s.root.media_type in oci.INDEX_TYPES:
            return self.index(Index.from_json(raw, s.root.media_type, str(s.source)))
        entries = self.manifest(s.root, Manifest.from_json(raw, s.root.media_type, str(s.source)),
                                check_platform=True)
        if len(entries) == 1:
            return entries[0].replace(platform=None)  # a manifest root is pushed as the tag: no platform
        # the driver puts manifests beside the converted one (index_entries): one reference needs an index
        out = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [e.to_dict() for e in entries]}
        annotations = self._harbor_annotations(s.root)
        if annotations:
            out["annotations"] = annotations
        digest, size = s.put_json(out)
        return Descriptor(media_type=oci.OCI_INDEX, digest=digest, size=size)

    def _platform_wanted(self, os_: str, arch: str, variant: str) -> bool:
        wanted = self.s.cfg.converter.platforms
        return not wanted or any(p.matches(os_, arch, variant) for p in wanted)

    def _fail(self, message: str) -> ConversionError:
        return ConversionError(f"{self.s.source}{message}", reference=str(self.s.source))

    def _harbor_annotations(self, source: Descriptor) -> dict[str, str]:
        return self.s.harbor_annotations(self.driver, source)

    # ------------------------------------------------------------------ index
    def index(self, index: Index) -> Descriptor:
        s = self.s
        converted: dict[str, list[Descriptor]] = {}  # source manifest digest -> its entries (index_entries)
        attestations: list[Descriptor] = []
        for child in index.manifests:
            if child.is_attestation:
                attestations.append(child)
            elif child.media_type in oci.INDEX_TYPES:
                raise self._fail(": nested indexes are not supported")
            elif self._platform_wanted(*child.platform_tuple):
                manifest = Manifest.from_json(s.read_manifest(child), child.media_type, f"{s.source}@{child.digest}")
                converted[child.digest] = self.manifest(child, manifest, check_platform=False)
        if not converted:
            wanted = ", ".join(str(p) for p in s.cfg.converter.platforms)
            raise self._fail(f": no manifest in the index matches converter.platforms ({wanted})")
        # by rank: every platform's first entry, then every second (acceld's merged index: the OCI manifests,
        # then the nydus ones), so a runtime picking the first match for its platform gets a rank-0 entry
        kept = [c.digest for c in index.manifests if c.digest in converted]
        children = [converted[d][rank] for rank in range(max(len(converted[d]) for d in kept))
                    for d in kept if rank < len(converted[d])]
        for att in attestations:  # keep attestations only while the manifest they describe is kept
            described = att.annotations.get(oci.ANNOTATION_REFERENCE_DIGEST, "")
            if described in converted:
                children.append(att.replace(annotations={
                    **att.annotations, oci.ANNOTATION_REFERENCE_DIGEST: converted[described][0].digest}))
        out = copy.deepcopy(dict(index.raw))
        media_type = oci.docker_to_oci(index.media_type) if self.docker2oci else index.media_type
        if any(c.artifact_type for c in children):  # a Docker manifest list has no artifactType field
            media_type = oci.OCI_INDEX
        if "mediaType" in out or media_type == oci.OCI_INDEX:
            out["mediaType"] = media_type
        out["manifests"] = [c.to_dict() for c in children]
        out["annotations"] = {**out.get("annotations", {}), **self._harbor_annotations(s.root)}
        if not out["annotations"]:
            del out["annotations"]
        digest, size = s.put_json(out)
        return Descriptor(media_type=media_type, digest=digest, size=size)

    # ------------------------------------------------------------------ manifest + config
    def manifest(self, desc: Descriptor, manifest: Manifest, check_platform: bool) -> list[Descriptor]:
        """The converted manifest and what the driver puts beside it (``index_entries``); sizes counted."""
        s = self.s
        raw_config = s.read_blob(manifest.config)
        config = json.loads(raw_config)
        platform = dict(desc.platform or {}) or {k: config[k] for k in ("os", "architecture", "variant")
                                                  if config.get(k)}
        converted = self._convert_manifest(desc, manifest, config, check_platform, platform)
        source = SourceManifest(desc.replace(platform=platform), manifest.raw, json.loads(raw_config))
        content = EngineProvider(s)
        try:
            entries = list(self.driver.index_entries(content, source, converted.replace(platform=platform)))
            content.verify_sources()
        finally:
            content.close()
        if not entries or not all(isinstance(e, Descriptor) for e in entries):
            raise DriverError(f"driver {self.driver.name()} index_entries returned {entries!r} for manifest "
                              f"{desc.digest}: expected a non-empty list of Descriptors")
        for entry in entries:
            if not s.store.has(entry.digest):
                raise DriverError(f"driver {self.driver.name()} index_entries returned manifest {entry.digest}, "
                                  "which is not in the content store (write it with content.put_json)")
            m = Manifest.from_json(s.store.read_bytes(entry.digest), entry.media_type)
            s.target_size += m.config.size + sum(layer.size for layer in m.layers)
        return entries

    def _convert_manifest(self, desc: Descriptor, manifest: Manifest, config: dict, check_platform: bool,
                          platform: dict) -> Descriptor:
        s, driver = self.s, self.driver
        if check_platform and not self._platform_wanted(config.get("os", ""), config.get("architecture", ""),
                                                        config.get("variant", "")):
            got = "/".join(x for x in (config.get("os"), config.get("architecture"), config.get("variant")) if x)
            raise self._fail(f" is for {got}, which is not in converter.platforms")
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(manifest.layers):
            raise self._fail(f": the config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers")
        s.source_size += manifest.config.size + sum(layer.size for layer in manifest.layers)
        keep_docker = oci.is_docker(manifest.media_type) and not self.docker2oci

        layers = []
        for i, (layer, result) in enumerate(zip(manifest.layers, self.layers(manifest.layers, platform))):
            new = layer if result is None else result.descriptor
            if result is not None:
                diff_ids[i] = result.diff_id
            layers.append(new.replace(media_type=self._layer_media_type(new.media_type, keep_docker)))
        if diff_ids != list((config.get("rootfs") or {}).get("diff_ids") or []):
            clear_docker_v1_ids(config)
        config.setdefault("rootfs", {"type": "layers"})["diff_ids"] = diff_ids
        convert_types = self.docker2oci and not keep_docker
        media_type = oci.docker_to_oci(manifest.media_type) if convert_types else manifest.media_type
        config_type = oci.docker_to_oci(manifest.config.media_type) if convert_types else manifest.config.media_type
        out = copy.deepcopy(dict(manifest.raw))
        out["mediaType"] = media_type
        out["layers"] = [layer.to_dict() for layer in layers]
        # the driver sees the converted manifest (its media type, the converted layers) and may add layers
        # that need the whole image (nydus: the merged bootstrap), with their diff_ids and history
        finalizer = EngineProvider(s, platform)
        try:
            out, config = driver.finalize_manifest(finalizer, out, config)
            finalizer.verify_sources()
        finally:
            finalizer.close()
        config_digest, config_size = s.put_json(config)
        out["config"] = manifest.config.replace(media_type=config_type, digest=config_digest,
                                                size=config_size).to_dict()
        annotations = {**out.get("annotations", {}), **self._harbor_annotations(desc)}
        if annotations and media_type == oci.OCI_MANIFEST:
            out["annotations"] = annotations
        if driver.with_referrer() and media_type == oci.OCI_MANIFEST:
            out["subject"] = Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size).to_dict()
        digest, size = s.put_json(out)
        return Descriptor(media_type=media_type, digest=digest, size=size, platform=desc.platform)

    def _layer_media_type(self, media_type: str, keep_docker: bool) -> str:
        if keep_docker:
            media_type = _TO_DOCKER_LAYER.get(media_type, media_type)
            if not oci.is_docker(media_type) and media_type not in self.driver.docker_layer_types:
                raise DriverError(f"{self.driver.name()} output ({media_type}) has no Docker media type; "
                                  "set converter.driver.config.docker2oci: true")
            return media_type
        return oci.docker_to_oci(media_type) if self.docker2oci else media_type

    # ------------------------------------------------------------------ layers
    def layers(self, layers: tuple[Descriptor, ...], platform: dict) -> list[ConvertedLayer | None]:
        """Every layer converted (LAYER_CONCURRENCY at once); the first failure stops the others."""
        def one(layer: Descriptor) -> ConvertedLayer | None:
            if layer.media_type in oci.FOREIGN_LAYER_TYPES or layer.media_type not in oci.LAYER_TYPES:
                return None
            try:
                return self.layer(layer, platform)
            finally:  # this pool thread's index connection: otherwise open until a GC cycle finds it
                self.s.store.close()

        with concurrent.futures.ThreadPoolExecutor(LAYER_CONCURRENCY, thread_name_prefix="layer") as pool:
            futures = [pool.submit(one, layer) for layer in layers]
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception()), None)
            if failed is not None:
                self.s.cancelled.set()  # running layers stop at their next read; queued ones never start
                for future in futures:
                    future.cancel()
                raise failed.exception()
            return [f.result() for f in futures]

    def _cached(self, layer: Descriptor, key: str) -> ConvertedLayer | None:
        """A conversion done before: in the local layer cache, else in the remote cache."""
        hit = self.s.cached_conversion(key, layer)
        return ConvertedLayer(*hit) if hit is not None else None

    def layer(self, layer: Descriptor, platform: dict) -> ConvertedLayer | None:
        s, driver = self.s, self.driver
        content = EngineProvider(s, platform)  # one per layer: its sources are verified before its blobs are committed
        try:
            key = driver.layer_cache_key(content)
        except AccelError as exc:
            content.close()
            _name_layer(exc, layer)
            raise
        cached = self._cached(layer, key)
        if cached is not None:
            content.close()
            s.progress(ProgressEvent("convert", layer.digest, layer.size, layer.size, "cached"))
            s.remember_conversion(platform, key, layer, cached.descriptor, cached.diff_id, local=False)
            return cached
        s.progress(ProgressEvent("convert", layer.digest, 0, layer.size, "converting"))
        try:
            result = driver.convert_layer(content, layer)
            content.verify_sources()
        except AccelError as exc:
            _name_layer(exc, layer)
            raise
        finally:
            content.close()
        if result is None:
            return None
        self._check_committed(result, layer)
        s.lease.add([result.descriptor.digest])
        s.remember_conversion(platform, key, layer, result.descriptor, result.diff_id)
        s.progress(ProgressEvent("convert", layer.digest, layer.size, layer.size, "converted"))
        return result

    def _check_committed(self, result: Any, layer: Descriptor) -> None:
        """Only a blob the driver committed (its sources verified) may be pushed under the layer's new name."""
        if not isinstance(result, ConvertedLayer):
            raise DriverError(f"driver {self.driver.name()} returned {type(result).__name__} for layer "
                              f"{layer.digest}, not a ConvertedLayer or None", digest=layer.digest)
        desc = result.descriptor
        if not self.s.store.has(desc.digest) or self.s.store.size(desc.digest) != desc.size:
            raise DriverError(f"driver {self.driver.name()} returned blob {desc.digest} ({desc.size} bytes) for "
                              f"layer {layer.digest}, but did not commit it to the content store",
                              digest=layer.digest)


def _name_layer(exc: AccelError, layer: Descriptor) -> None:
    """Which layer failed, for whoever reads the reason."""
    if not getattr(exc, "digest", ""):
        exc.digest = layer.digest
    if isinstance(exc, LayerError) and layer.digest not in exc.message:
        exc.message = f"layer {layer.digest}: {exc.message}"
        exc.args = (exc.message,)
