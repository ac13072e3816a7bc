"""``chunk_dict_ref``: chunk-level deduplication against a nydus image used as a chunk dictionary.

    image = content.referenced_image(ref, what="chunk_dict_ref")   # a configured registry only (the engine's)
    cdict = load(image, content.platform, opts)                     # its merged bootstrap's chunk table
    cdict.lookup(digest, size)                                      # -> a Chunk inside a dict blob, or None

What nydus does with ``nydus-image create --chunk-dict bootstrap=<dict image.boot>`` (builder/src/core/
chunk_dict.rs, node.rs ``deduplicate_chunk``): every chunk of the dict's chunk table is known by digest; a chunk
of the layer with that digest and uncompressed size is not stored again, the file's chunk points into the dict's
blob instead, and only the dict blobs actually used join the layer's blob table. ``nydus-image merge`` keeps
those blobs by id (builder/src/merge.rs: at most one blob per layer is not the dict's), and nydus-snapshotter
appends the merged bootstrap's blobs that are no layer of the image to the manifest's layers
(pkg/converter/convert_unix.go ``mergeManifestBlobDigests``: after the image's own blobs, before the bootstrap;
diff_id = digest, no history entry). acceld fetches the dict image and reads its bootstrap (pkg/driver/nydus,
``getChunkDict``).

Here the chunks of a dict blob carry the label ``DICT_LABEL + i`` (``i``: the blob's index in the dict's blob
table) where a layer's own chunks carry the layer's position; the bootstrap writer maps labels to blob table
indexes. A chunk dict must use this conversion's digester and chunk size (nydus's ``check_compatibility``
refuses another chunk size; another digester would match nothing) and, for this builder, its compressor.
"""
from __future__ import annotations

import collections
import dataclasses
import tarfile
import threading

from acceleration_sdk.errors import ConversionError, LayerError
from acceleration_sdk.oci import INDEX_TYPES, Descriptor, Index, Manifest

from . import layout as L
from .bootlayer import BootstrapLayerError, read_bootstrap_layer
from .layout import Chunk, RafsError
from .media import BLOB_ANNOTATION, BOOTSTRAP_ANNOTATION, NYDUS_BLOB
from .reader import Rafs
from .validate import validate

DICT_LABEL = 1 << 20        # chunk labels at or above this name a dict blob (layer positions stay far below)
NYDUS_ARTIFACT = "application/vnd.nydus.image.manifest.v1+json"   # merge_manifest's nydus children
NYDUS_OS_FEATURE = "nydus.remoteimage.v1"                          # older nydusify's mark
# dict blob features this builder cannot point into: zran (oci_ref), batch, encrypted, tarfs chunks
UNUSABLE = L.B_ZRAN | L.B_BATCH | L.B_ENCRYPTED | L.B_TARFS | L.B_SEPARATE


@dataclasses.dataclass
class ChunkDict:
    """One dict image's usable chunks. Immutable once loaded: shared by conversions (keyed by manifest digest)."""

    reference: str                      # the dict image, by digest
    manifest_digest: str                # what a layer built against it depends on (its cache key)
    blobs: list[L.BlobEntry]            # the dict bootstrap's blob table
    layers: dict[str, Descriptor]       # blob id -> the dict manifest's layer holding that blob
    metas: dict[str, bytes]             # blob id -> image/<id>.blob.meta from the dict's bootstrap layer
    chunks: dict[bytes, Chunk]          # digest -> the chunk in its dict blob, labelled DICT_LABEL + blob index

    def lookup(self, digest: bytes, size: int) -> Chunk | None:
        chunk = self.chunks.get(digest)
        return chunk if chunk is not None and chunk.uncompressed_size == size else None

    def label(self, blob_id: str) -> int:
        for i, blob in enumerate(self.blobs):
            if blob.blob_id == blob_id and blob_id in self.layers:
                return DICT_LABEL + i
        raise RafsError(f"the blob was built against chunk dict blob sha256:{blob_id}, which {self.reference} "
                        "does not hold")

    def entry(self, label: int, blob_index: int) -> L.BlobEntry:
        """The dict blob ``label`` names, as a blob table entry at ``blob_index``."""
        return dataclasses.replace(self.blobs[label - DICT_LABEL], blob_index=blob_index)

    def blob_id(self, label: int) -> str:
        return self.blobs[label - DICT_LABEL].blob_id

    @property
    def size(self) -> int:
        """Bytes of the dict's usable blobs."""
        return sum(self.layers[b.blob_id].size for b in self.blobs if b.blob_id in self.layers)


def is_dict_label(label: int) -> bool:
    return label >= DICT_LABEL


def from_bootstrap(boot: bytes, layers: dict[str, Descriptor], metas: dict[str, bytes], *, reference: str,
                   manifest_digest: str, compressor: str, digester: str, chunk_size: int) -> ChunkDict:
    """The dict of a merged bootstrap: chunks of the blobs ``layers`` holds and this builder can point into."""
    rafs = Rafs(boot)
    validate(rafs)   # nydusd's load rules: a dict that nydusd would refuse is refused here too
    found = (rafs.compressor, rafs.digester, rafs.ext.chunk_size)
    if found != (compressor, digester, chunk_size):
        raise ConversionError(f"chunk_dict_ref {reference} was built with compressor {found[0]}, digester {found[1]}, "
                              f"fs_chunk_size {found[2]:#x}; this conversion uses {compressor}, {digester}, "
                              f"{chunk_size:#x}: set the same three options, or use another dict image",
                              reference=reference)
    usable = {i for i, b in enumerate(rafs.blobs) if b.blob_id in layers and not b.features & UNUSABLE}
    chunks: dict[bytes, Chunk] = {}
    for chunk, _flags, _foff in rafs.chunks:
        if chunk.blob_index in usable and chunk.digest not in chunks:   # the first one, as nydus's HashChunkDict
            chunks[chunk.digest] = dataclasses.replace(chunk, blob_index=DICT_LABEL + chunk.blob_index)
    return ChunkDict(reference, manifest_digest, list(rafs.blobs),
                     {b.blob_id: layers[b.blob_id] for i, b in enumerate(rafs.blobs) if i in usable}, metas, chunks)


def _wanted(desc: Descriptor, platform: dict) -> bool:
    p = desc.platform or {}
    if not platform or not p:
        return True
    return (p.get("os") == platform.get("os") and p.get("architecture") == platform.get("architecture")
            and (not platform.get("variant") or not p.get("variant") or p.get("variant") == platform.get("variant")))


def select_manifest(image, platform: dict) -> tuple[Descriptor, Manifest]:
    """The dict image's nydus manifest: the image itself, or the index child for ``platform`` whose last layer
    is a nydus bootstrap (a merge_manifest index holds OCI manifests beside it)."""
    raw = image.read_manifest()
    name = str(image.reference)
    if image.root.media_type not in INDEX_TYPES:
        manifest = Manifest.from_json(raw, image.root.media_type, name)
        if not _is_nydus(manifest):
            raise ConversionError(f"chunk_dict_ref {name} is not a nydus image: its last layer is not annotated "
                                  f"{BOOTSTRAP_ANNOTATION}", reference=name)
        return image.root, manifest
    children = [c for c in Index.from_json(raw, image.root.media_type, name).manifests
                if not c.is_attestation and c.media_type not in INDEX_TYPES and _wanted(c, platform)]
    # merge_manifest's nydus children first (their artifactType or os.features say so), then the rest in order
    children.sort(key=lambda c: not (c.artifact_type == NYDUS_ARTIFACT
                                     or NYDUS_OS_FEATURE in ((c.platform or {}).get("os.features") or [])))
    for child in children:
        manifest = Manifest.from_json(image.read_manifest(child), child.media_type, f"{name}@{child.digest}")
        if _is_nydus(manifest):
            return child, manifest
    shown = "/".join(platform.get(k, "") for k in ("os", "architecture", "variant") if platform.get(k)) or "any"
    raise ConversionError(f"chunk_dict_ref {name} holds no nydus manifest for platform {shown}", reference=name)


def _is_nydus(manifest: Manifest) -> bool:
    return bool(manifest.layers) and manifest.layers[-1].annotations.get(BOOTSTRAP_ANNOTATION) == "true"


class DictCache:
    """Loaded dicts by manifest digest (a few: one per dict image and platform), shared by a driver's layers."""

    def __init__(self, size: int = 4):
        self._size = size
        self._loaded: collections.OrderedDict[str, ChunkDict] = collections.OrderedDict()
        self._lock = threading.Lock()

    def load(self, image, platform: dict, *, compressor: str, digester: str, chunk_size: int) -> ChunkDict:
        desc, manifest = select_manifest(image, platform)
        with self._lock:   # one load at a time: two layers asking at once read the bootstrap once
            found = self._loaded.get(desc.digest)
            if found is not None:
                self._loaded.move_to_end(desc.digest)
                return found
            name = str(image.reference.with_digest(desc.digest))
            layers = {d.digest.split(":", 1)[1]: Descriptor(media_type=NYDUS_BLOB, digest=d.digest, size=d.size,
                                                            annotations={BLOB_ANNOTATION: "true"})
                      for d in manifest.layers[:-1] if d.media_type == NYDUS_BLOB}
            with image.open_blob(manifest.layers[-1]) as fh:
                try:   # only the blob.meta of the dict's blob layers is kept (bounded: .bootlayer)
                    boot, metas = read_bootstrap_layer(fh, layers)
                except BootstrapLayerError as exc:
                    raise ConversionError(f"chunk_dict_ref {name}: {exc}", reference=name) from None
                # LayerError: the SDK's decompressor (bad gzip/zstd); the walk would name the layer being
                # converted, so it is said here that the dict's layer is the broken one
                except (tarfile.TarError, OSError, EOFError, LayerError) as exc:
                    raise ConversionError(f"chunk_dict_ref {name}: its bootstrap layer is not a readable gzip tar "
                                          f"({exc})", reference=name) from None
            try:
                cdict = from_bootstrap(boot, layers, metas, reference=name, manifest_digest=desc.digest,
                                       compressor=compressor, digester=digester, chunk_size=chunk_size)
            except RafsError as exc:
                raise ConversionError(f"chunk_dict_ref {name}: its bootstrap is not a valid RAFS v6 bootstrap: {exc}",
                                      reference=name) from None
            self._loaded[desc.digest] = cdict
            while len(self._loaded) > self._size:
                self._loaded.popitem(last=False)
            return cdict
