"""``accelctl check`` for SOCI images: the driver's :class:`ImageChecker`.

A SOCI conversion leaves every layer as pushed; what can be wrong is the index beside it. The image manifest
names its SOCI index (annotation ``com.amazon.soci.index-digest``, v2) or the index refers to the manifest
(v1: its first SOCI v1 referrer, as the snapshotter picks it); :meth:`SociChecker.bind` fetches that index and
its ztocs (each must decode and name, by annotation, a layer of this manifest with its media type and
a span size). Per layer, the ztoc is derived again from the spooled blob with our builder (byte-identical to
upstream's, tests/drivers/test_soci_ztoc.py) and compared field by field: sizes, every TOC entry, every span
digest and the checkpoints (bit offsets + 32 KiB windows) -- so a snapshotter's span reads would get the
layer's bytes. The entries returned are the layer's own tar entries, for ``--source``.
"""
from __future__ import annotations

import json
from typing import Callable, Iterator

from acceleration_sdk import oci
from acceleration_sdk.compression import open_decompressed
from acceleration_sdk.errors import LayerError
from acceleration_sdk.oci import Descriptor
from acceleration_sdk.testing.entries import Allowances, LayerEntry, tar_entries

from . import layout, ztoc
from .gzindex import GzipIndexError
from .tartoc import TarTocError

GZIP_TYPES = (oci.OCI_LAYER_GZIP, oci.DOCKER_LAYER_GZIP)  # what the driver indexes (not imported from .driver:
TAR_TYPES = (oci.OCI_LAYER, oci.DOCKER_LAYER)  # it imports this module for image_checker)
FIELDS = ("version", "compressed_size", "uncompressed_size", "algorithm", "max_span_id")


def claims(manifest) -> bool:
    """SOCI v2 output: the image manifest names its SOCI index."""
    return bool((manifest.raw.get("annotations") or {}).get(layout.ANN_INDEX_DIGEST))


class SociChecker:
    allowances = Allowances()  # the layers are the source's, byte for byte

    def __init__(self, manifest):
        self.digest = ""  # the image manifest's own, from bind (SOCI v1: the index's subject)
        self.index_digest = (manifest.raw.get("annotations") or {}).get(layout.ANN_INDEX_DIGEST, "")
        self.layers = {d.digest: d for d in manifest.layers}
        self.ztocs: dict[str, Descriptor] = {}  # layer digest -> its ztoc's descriptor
        self.get_blob: Callable[[Descriptor], bytes] | None = None

    def bind(self, get_manifest: Callable[[str], bytes], get_blob: Callable[[Descriptor], bytes], *,
             image: Descriptor | None = None, get_referrers: Callable[[], list[Descriptor]] | None = None) -> None:
        """Fetch the SOCI index and check its ztoc descriptors before the layers are checked; each ztoc is
        fetched with its layer (a ztoc of a big layer holds a 32 KiB window per span: one at a time in memory).

        v2: the index the manifest's annotation names. Without the annotation, v1: the first referrer of the
        manifest with the v1 artifact type, as the snapshotter picks it (fs/fs.go:97 SelectFirstPolicy)."""
        self.get_blob = get_blob
        self.digest = image.digest if image is not None else ""
        version = layout.SOCI_INDEX_V2
        if not self.index_digest:
            found = [d for d in (get_referrers() if get_referrers else ()) if d.artifact_type == layout.SOCI_INDEX_V1]
            if not found:
                raise LayerError(f"the image manifest has no {layout.ANN_INDEX_DIGEST} annotation (SOCI v2) and no "
                                 f"referrer of type {layout.SOCI_INDEX_V1} (SOCI v1): not a SOCI image")
            self.index_digest, version = found[0].digest, layout.SOCI_INDEX_V1
        index = json.loads(get_manifest(self.index_digest))
        got = (index.get("config") or {}).get("mediaType")
        if got != version:  # what upstream's DecodeIndex goes by (soci_index.go:222-237)
            raise LayerError(f"{self.index_digest} is not a SOCI index {version.split('.')[-1][:2]} "
                             f"(config media type {got!r}, want {version})")
        if version == layout.SOCI_INDEX_V1 and (index.get("subject") or {}).get("digest") != self.digest:
            raise LayerError(f"the SOCI index {self.index_digest} has subject "
                             f"{(index.get('subject') or {}).get('digest')!r}, not this image manifest")
        for raw in index.get("layers") or ():
            desc = Descriptor.from_dict(raw)
            ann = desc.annotations
            layer = self.layers.get(ann.get(layout.ANN_LAYER_DIGEST, ""))
            if layer is None:
                raise LayerError(f"ztoc {desc.digest} names layer {ann.get(layout.ANN_LAYER_DIGEST)!r}, "
                                 "which is not in the image manifest", digest=desc.digest)
            if ann.get(layout.ANN_LAYER_MEDIA_TYPE) != layer.media_type:
                raise LayerError(f"ztoc {desc.digest} says media type {ann.get(layout.ANN_LAYER_MEDIA_TYPE)!r}, "
                                 f"the layer is {layer.media_type}", digest=layer.digest)
            span = ann.get(layout.ANN_SPAN_SIZE, "")
            if not span.isdigit() or int(span) <= 0:
                raise LayerError(f"ztoc {desc.digest}: annotation {layout.ANN_SPAN_SIZE} is {span!r}, "
                                 "not a byte count", digest=layer.digest)
            if layer.digest in self.ztocs:
                raise LayerError(f"two ztocs for layer {layer.digest}", digest=layer.digest)
            self.ztocs[layer.digest] = desc
        if not self.ztocs:
            raise LayerError(f"the SOCI index {self.index_digest} lists no ztoc")

    def check_layer(self, index: int, desc: Descriptor, path: str) -> Iterator[LayerEntry]:
        zdesc = self.ztocs.get(desc.digest)
        if zdesc is not None:
            try:
                got = ztoc.decode(self.get_blob(zdesc))
            except LayerError:
                raise
            except Exception as exc:  # a hostile flatbuffer can break the decoder anywhere
                raise LayerError(f"ztoc {zdesc.digest} does not decode ({type(exc).__name__}: {exc})",
                                 digest=desc.digest) from None
            span = int(zdesc.annotations[layout.ANN_SPAN_SIZE])
            try:
                with open(path, "rb") as fh:
                    if desc.media_type in GZIP_TYPES:
                        want = ztoc.build_gzip(fh, span)
                    elif desc.media_type in TAR_TYPES:
                        want = ztoc.build_tar(fh, span)
                    else:
                        raise LayerError(f"a ztoc for a {desc.media_type} layer: SOCI indexes gzip and tar layers",
                                         digest=desc.digest)
            except (GzipIndexError, TarTocError) as exc:
                raise LayerError(f"the layer does not read as {desc.media_type}: {exc}", digest=desc.digest) from None
            problem = difference(ztoc.decode(ztoc.marshal(want)), got)
            if problem:
                raise LayerError(f"ztoc {zdesc.digest} disagrees with the layer: {problem}", digest=desc.digest)
        return self._entries(desc, path)

    @staticmethod
    def _entries(desc: Descriptor, path: str) -> Iterator[LayerEntry]:
        with open(path, "rb") as fh:
            stream = open_decompressed(fh) if desc.media_type in GZIP_TYPES else fh
            yield from tar_entries(stream, keep_data=False)


def difference(want: dict, got: dict) -> str:
    """The first field where ``got`` (the pushed ztoc) differs from ``want`` (derived from the layer); "" if none."""
    for key in FIELDS:
        if want[key] != got[key]:
            return f"{key} is {got[key]!r}, the layer gives {want[key]!r}"
    if len(want["entries"]) != len(got["entries"]):
        return f"{len(got['entries'])} TOC entries, the layer has {len(want['entries'])}"
    for w, g in zip(want["entries"], got["entries"]):
        if w != g:
            field = next(k for k in w if w[k] != g.get(k))
            return f"TOC entry {w['name']!r}: {field} is {g.get(field)!r}, the layer gives {w[field]!r}"
    for i, (w, g) in enumerate(zip(want["span_digests"], got["span_digests"])):
        if w != g:
            return f"span {i} digest is {g}, the layer's span hashes to {w}"
    if len(want["span_digests"]) != len(got["span_digests"]):
        return f"{len(got['span_digests'])} span digests, the layer has {len(want['span_digests'])} spans"
    if want["checkpoints"] != got["checkpoints"]:
        return "the checkpoints (offsets or windows) differ from the layer's"
    return ""
