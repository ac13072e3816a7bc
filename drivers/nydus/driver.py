"""The ``nydus`` driver: a RAFS v6 nydus blob per source layer, then the merged bootstrap as the last layer.

The image layout is nydus-snapshotter's ``pkg/converter`` (facts and source lines: /work/shared/NYDUS.md
section 3): each source layer becomes ``application/vnd.oci.image.layer.nydus.blob.v1`` (the blob that
``nydus-image create --type tar-rafs --blob-inline-meta --features blob-toc`` writes; diff_id = its digest),
and :meth:`NydusDriver.finalize_manifest` appends a gzip'd tar of ``image/image.boot`` (the merged bootstrap)
and ``image/<blob id>.blob.meta`` files (``.bootlayer``), with its diff_id and a history entry.

A blob depends only on the source layer, the compressor, the digester and the chunk size, so it is reusable
across images (the layer caches); the bootstrap is per image. With ``chunk_dict_ref`` it depends on the dict too:
its cache key then names the dict manifest's digest (``layer_cache_key``), and ``finalize_manifest`` appends the
dict blobs the bootstrap uses to the layers, linked so the push mounts them from the dict's repository
(``.chunkdict``). ``finalize_manifest`` takes the tree of a layer
this driver has just converted from memory (handed over once, then forgotten), and reads any other layer -- a
layer-cache hit, local or remote -- back from its blob's own per-layer bootstrap (:func:`layer_from_blob`).
"""
from __future__ import annotations

import logging
import collections
import threading
from typing import Any, Mapping

from acceleration_sdk.driver import ConvertedLayer, LayerDriver
from acceleration_sdk.errors import DriverError
from acceleration_sdk.oci import DOCKER_LAYER_GZIP, OCI_MANIFEST, OCI_LAYER_GZIP, Descriptor

from .bootlayer import write_bootstrap_layer
from .builder import BuildOptions, LayerResult, at_position, convert_layer, layer_from_blob, merge_bootstrap
from .merge import ARTIFACT_TYPE, merged_entries
from .chunkdict import ChunkDict, DictCache
from .media import BLOB_ANNOTATION, BOOTSTRAP_ANNOTATION, FS_VERSION_ANNOTATION, NYDUS_BLOB
from .options import OPTIONS
from .prefetch import patterns
from .reader import Rafs
from .validate import validate

log = logging.getLogger("drivers.nydus")

BOOTSTRAP_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
# Changes whenever the writer's output bytes for the same input and options change: part of the cache key.
WRITER_REVISION = "1"
# Converted layers kept for finalize_manifest (blob digest -> tree); the oldest go first when a caller never
# finalizes (a failed image), so a driver reused for many conversions stays bounded.
FRESH_LAYERS = 64

_builder_logged = threading.Event()


class NydusDriver(LayerDriver):
    """nydus RAFS v6 images (nydus-snapshotter, nydusd, the kernel's EROFS), built natively in Python."""

    image_ref_options = ("chunk_dict_ref",)  # config loading refuses a host not in provider.source

    options_schema = OPTIONS
    default_tag_suffix = "-nydus"  # acceld's example rules for nydus
    # nydus-snapshotter writes nydus blob layers into Docker manifests too (convert_unix.go:902-911)
    docker_layer_types = frozenset({NYDUS_BLOB})
    image_artifact_types = frozenset({ARTIFACT_TYPE})  # merge_manifest's nydus entries (``.merge``)

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)  # validated against OPTIONS: refusals happen at config load
        o = self.options
        self.build = BuildOptions(compressor=o["compressor"], digester=o["digester"], chunk_size=o["fs_chunk_size"],
                                  prefetch=patterns(o["prefetch_patterns"], o["prioritized_files"]),
                                  workers=o["workers"])
        self._dicts = DictCache()   # chunk_dict_ref's loaded dicts, by the dict manifest's digest
        self._fresh: collections.OrderedDict[str, LayerResult] = collections.OrderedDict()
        self._referenced: dict[str, Descriptor] = {}   # oci_ref: zran layer digest -> the gzip layer it names
        self._fresh_lock = threading.Lock()
        if o["builder"] and not _builder_logged.is_set():
            _builder_logged.set()
            log.info("nydus: converter.driver.config.builder %r is not run: this driver builds RAFS v6 natively",
                     o["builder"])

    @classmethod
    def image_checker(cls, manifest, claim: bool = True):
        """nydus output: recognised by the bootstrap annotation on the last layer (``.check``)."""
        from .check import NydusChecker, claims

        return NydusChecker(len(manifest.layers)) if not claim or claims(manifest.layers) else None

    def name(self) -> str:
        return "nydus"

    def version(self) -> str:
        return "v6"

    def docker2oci(self) -> bool:
        # oci_ref forces OCI manifests, as acceld does (nydus.go:203-213): the nydus-ref annotation needs them
        return self.options["docker2oci"] or self.options["oci_ref"]

    def with_referrer(self) -> bool:
        return self.options["with_referrer"]

    def referenced_blobs(self, manifest) -> list[Descriptor]:
        """oci_ref: the source gzip layers the zran layers name (nydusd reads them from the target repository)."""
        with self._fresh_lock:
            return [self._referenced[layer.digest] for layer in manifest.layers if layer.digest in self._referenced]

    def cache_key(self) -> str:
        # what enters a blob's bytes; prefetch patterns only reach the bootstrap, workers only the speed
        b = self.build
        if self.options["oci_ref"]:   # zran blobs: gzip/sha256 forced, only the chunk size counts
            return f"nydus/v6.{WRITER_REVISION}/zran/{b.chunk_size:#x}"
        return f"nydus/v6.{WRITER_REVISION}/{b.compressor}/{b.digester}/{b.chunk_size:#x}/crc{int(b.crc)}"

    def chunk_dict(self, content) -> ChunkDict | None:
        """``chunk_dict_ref``'s dict for the manifest ``content`` converts (None without one); see ``.chunkdict``."""
        ref = self.options["chunk_dict_ref"]
        if not ref:
            return None
        image = content.referenced_image(ref, what="chunk_dict_ref")   # a configured registry only
        b = self.build
        return self._dicts.load(image, getattr(content, "platform", {}), compressor=b.compressor,
                                digester=b.digester, chunk_size=b.chunk_size)

    def layer_cache_key(self, content) -> str:
        # a blob built against a chunk dict points into that dict's blobs: another dict, another blob
        cdict = self.chunk_dict(content)
        return self.cache_key() + (f"/dict:{cdict.manifest_digest}" if cdict is not None else "")

    # ------------------------------------------------------------------ one layer
    def convert_layer(self, content, desc: Descriptor) -> ConvertedLayer | None:
        if desc.annotations.get(BOOTSTRAP_ANNOTATION) == "true":
            raise DriverError(f"layer {desc.digest} is a nydus bootstrap: the source is a nydus image already",
                              digest=desc.digest)
        if self.options["oci_ref"]:
            from .refdriver import convert_ref
            return convert_ref(self, content, desc)
        cdict = self.chunk_dict(content)
        with content.open_uncompressed(desc) as tar, content.blob_writer() as out:
            result = convert_layer(tar, out, self.build, chunk_dict=cdict)  # position 0: the bytes do not depend on it
            digest = out.commit()  # the engine verifies the source first
        if digest != result.blob.digest:  # the builder hashes what it wrote: a mismatch is a bug, say so
            raise DriverError(f"layer {desc.digest}: the nydus blob was stored as {digest}, but the builder "
                              f"wrote {result.blob.digest}", digest=desc.digest)
        self.keep_fresh(digest, result)
        blob = Descriptor(media_type=NYDUS_BLOB, digest=digest, size=out.size,
                          annotations={BLOB_ANNOTATION: "true"})
        return ConvertedLayer(blob, digest)  # a nydus blob is not compressed: its diff_id is its digest

    def keep_fresh(self, digest: str, result: LayerResult) -> None:
        with self._fresh_lock:  # layers convert on several threads
            self._fresh[digest] = result
            while len(self._fresh) > FRESH_LAYERS:
                self._fresh.popitem(last=False)

    def remember_reference(self, digest: str, source: Descriptor) -> None:
        with self._fresh_lock:
            self._referenced[digest] = source
            while len(self._referenced) > 16 * FRESH_LAYERS:   # a long-lived driver stays bounded
                self._referenced.pop(next(iter(self._referenced)))

    def take_fresh(self, digest: str) -> LayerResult | None:
        with self._fresh_lock:  # once: merging twice must not share a relabelled tree
            return self._fresh.pop(digest, None)

    # ------------------------------------------------------------------ the whole image
    def finalize_manifest(self, content, manifest: dict, config: dict) -> tuple[dict, dict]:
        """Append the bootstrap layer: the merged bootstrap of every blob layer, its diff_id and history."""
        if self.options["oci_ref"]:
            from .refdriver import finalize_ref
            descs, boot, files = finalize_ref(self, content, manifest)
            return self._append_bootstrap(content, {**manifest, "layers": descs}, config, boot, files)
        cdict = self.chunk_dict(content)
        layers = []
        for position, raw in enumerate(manifest.get("layers") or []):
            desc = Descriptor.from_dict(raw)
            if desc.media_type != NYDUS_BLOB:
                raise DriverError(f"layer {desc.digest} ({desc.media_type}) was not converted to a nydus blob; "
                                  "a nydus image cannot hold it", digest=desc.digest)
            with self._fresh_lock:
                fresh = self._fresh.pop(desc.digest, None)  # once: merging twice must not share a relabelled tree
            if fresh is not None:
                layers.append(at_position(fresh, position))
            else:
                layers.append(layer_from_blob(content.converted_path(desc), position, self.build, desc.digest,
                                              chunk_dict=cdict))
        boot = merge_bootstrap(layers, self.build, chunk_dict=cdict)
        rafs = Rafs(boot)
        validate(rafs, strict=True)  # nydusd's load rules: never push a bootstrap nydusd would refuse
        metas = {r.blob.digest.split(":", 1)[1]: r.blob.blob_meta for r in layers if r.blob.entry is not None}
        dict_layers = link_dict_blobs(content, cdict, rafs, manifest, self.options["chunk_dict_ref"], metas)
        return self._append_bootstrap(content, manifest, config, boot,
                                      [(b.blob_id, metas[b.blob_id]) for b in rafs.blobs if b.blob_id in metas],
                                      dict_layers)

    def _append_bootstrap(self, content, manifest: dict, config: dict, boot: bytes, metas: list[tuple[str, bytes]],
                          dict_layers: list[Descriptor] = ()) -> tuple[dict, dict]:
        """The bootstrap layer (with the blob.meta files) after the layers; ``dict_layers`` (chunk_dict_ref's
        blobs the image uses) go between them, diff_id = digest, as nydus-snapshotter appends them."""
        with content.blob_writer() as out:
            diff_id = write_bootstrap_layer(out, boot, metas)
            digest = out.commit()
        docker = manifest.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST
        bootstrap = Descriptor(media_type=DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP, digest=digest,
                               size=out.size, annotations={BOOTSTRAP_ANNOTATION: "true", FS_VERSION_ANNOTATION: "6"})
        manifest = {**manifest, "layers": list(manifest.get("layers") or []) + [d.to_dict() for d in dict_layers]
                    + [bootstrap.to_dict()]}
        rootfs = config.setdefault("rootfs", {"type": "layers"})
        rootfs["diff_ids"] = list(rootfs.get("diff_ids") or []) + [d.digest for d in dict_layers] + [diff_id]
        config["history"] = list(config.get("history") or []) + [dict(BOOTSTRAP_HISTORY)]
        return manifest, config

    def index_entries(self, content, source, converted: Descriptor) -> list[Descriptor]:
        """merge_manifest: the source image (an empty layer first) beside the nydus one (``.merge``)."""
        if not self.options["merge_manifest"]:
            return [converted]
        return merged_entries(content, source, converted)


def link_dict_blobs(content, cdict: ChunkDict | None, rafs: Rafs, manifest: dict, ref: str,
                    metas: dict[str, bytes]) -> list[Descriptor]:
    """The chunk dict's blobs the merged bootstrap names that are no layer of the image, in blob table order
    (nydus-snapshotter's mergeManifestBlobDigests): linked so the push mounts them from the dict's repository;
    their blob.meta joins ``metas`` when the dict's bootstrap layer has it."""
    if cdict is None:
        return []
    own = {Descriptor.from_dict(raw).digest for raw in manifest.get("layers") or []}
    image = content.referenced_image(ref, what="chunk_dict_ref")
    out = []
    for entry in rafs.blobs:
        desc = cdict.layers.get(entry.blob_id)
        if desc is None or desc.digest in own:
            continue
        image.link_blob(desc)
        out.append(desc)
        if entry.blob_id in cdict.metas:
            metas[entry.blob_id] = cdict.metas[entry.blob_id]
    return out
