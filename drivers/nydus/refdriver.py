"""The nydus driver's ``oci_ref: true`` path (acceld's config.nydus.ref.yaml): zran blob layers, no recompression.

nydus-snapshotter with ``OCIRef`` (pkg/converter/convert_unix.go:902-922, 966-973, 1209-1321; NYDUS.md section 4)
hands the still-gzip'd layer to ``nydus-image create --type targz-ref``; each source layer becomes one small
``application/vnd.oci.image.layer.nydus.blob.v1`` layer annotated ``containerd.io/snapshot/nydus-blob: "true"``
and ``containerd.io/snapshot/nydus-ref: <source layer digest>``, in source order, and the bootstrap layer is
appended as usual with ``image/<nydus blob layer digest>.blob.meta`` beside ``image/image.boot``. The source gzip
layers are not in the converted manifest: nydusd fetches them by digest (= the blob id) from the image's own
repository, where the source image already has them.
"""
from __future__ import annotations

from acceleration_sdk.driver import ConvertedLayer
from acceleration_sdk.errors import DriverError, LayerError
from acceleration_sdk.oci import LAYER_TYPES, OCI_LAYER_GZIP, Descriptor

from .builder import at_position
from .media import BLOB_ANNOTATION, NYDUS_BLOB
from .reader import Rafs
from .refblob import REF_ANNOTATION, convert_ref_layer, merge_ref_bootstrap, ref_layer_from_blob
from .validate import validate


def convert_ref(driver, content, desc: Descriptor) -> ConvertedLayer:
    """One gzip source layer -> its zran blob layer (the gzip is read once, as it downloads)."""
    if LAYER_TYPES.get(desc.media_type) != "gzip":
        raise LayerError(f"layer {desc.digest} is {desc.media_type}: oci_ref (zran) images reference gzip layers "
                         "only; convert this image without oci_ref", digest=desc.digest)
    with content.open_blob(desc) as raw, content.blob_writer() as out:
        result = convert_ref_layer(raw, out, driver.build.chunk_size, source=desc.digest)
        digest = out.commit()   # the provider verified the source's digest first
    if digest != result.blob.digest or result.blob.source != desc.digest:
        raise DriverError(f"layer {desc.digest}: the zran blob was stored as {digest} for source "
                          f"{result.blob.source}, but the builder wrote {result.blob.digest}", digest=desc.digest)
    driver.keep_fresh(digest, result)
    blob = Descriptor(media_type=NYDUS_BLOB, digest=digest, size=out.size,
                      annotations={BLOB_ANNOTATION: "true", REF_ANNOTATION: desc.digest})
    return ConvertedLayer(blob, digest)


def finalize_ref(driver, content, manifest: dict) -> tuple[list, bytes, list[tuple[str, bytes]]]:
    """The zran layers of ``manifest`` (annotations completed: a layer-cache hit may have lost them), the merged
    bootstrap, and the ``image/<name>.blob.meta`` files (named by the nydus blob layer's digest)."""
    layers, descs = [], []
    for position, raw in enumerate(manifest.get("layers") or []):
        desc = Descriptor.from_dict(raw)
        if desc.media_type != NYDUS_BLOB:
            raise DriverError(f"layer {desc.digest} ({desc.media_type}) was not converted to a nydus blob; "
                              "a nydus image cannot hold it", digest=desc.digest)
        fresh = driver.take_fresh(desc.digest)
        if fresh is not None:
            layer = at_position(fresh, position)
        else:
            layer = ref_layer_from_blob(content.converted_path(desc), position, driver.build.chunk_size, desc.digest)
        source = layer.blob.source or desc.annotations.get(REF_ANNOTATION, "")
        if not source:
            raise DriverError(f"layer {desc.digest} names no source layer (annotation {REF_ANNOTATION})",
                              digest=desc.digest)
        layers.append(layer)
        if layer.blob.entry is not None:   # chunks in the gzip layer: it must be where nydusd reads (engine push)
            driver.remember_reference(desc.digest, Descriptor(media_type=OCI_LAYER_GZIP, digest=source,
                                                              size=layer.blob.source_size))
        descs.append(desc.replace(annotations={**desc.annotations, BLOB_ANNOTATION: "true",
                                               REF_ANNOTATION: source}).to_dict())
    boot = merge_ref_bootstrap(layers, driver.build.chunk_size, driver.build.prefetch)
    rafs = Rafs(boot)
    validate(rafs, strict=True)   # nydusd's load rules: never push a bootstrap nydusd would refuse
    metas = {r.blob.source.split(":", 1)[1]: r for r in layers if r.blob.entry is not None}
    files = [(metas[b.blob_id].blob.digest.split(":", 1)[1], metas[b.blob_id].blob.blob_meta) for b in rafs.blobs]
    return descs, boot, files
