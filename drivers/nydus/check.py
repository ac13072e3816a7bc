"""``accelctl check`` for nydus images: the driver's :class:`ImageChecker`.

A nydus image is blob layers (``application/vnd.oci.image.layer.nydus.blob.v1``, ``nydus-blob: true``) and a
last gzip layer annotated ``nydus-bootstrap: true`` holding ``image/image.boot``. Each blob layer is read with
:func:`.entries.read_layer` (its per-layer bootstrap held to nydusd's load rules, every chunk's digest and data
verified, file bytes hashed for ``--source``); the bootstrap layer's merged bootstrap is held to the same rules,
cross-checked against every blob it names (blob.meta, blob.digest: :func:`.validate.validate`) and against the
blob layers' own trees merged (:func:`.treediff.difference`: what nydusd mounts is what the layers hold).
Before the layers, :meth:`NydusChecker.check_manifest` applies ``nydusify check``'s manifest rule
(contrib/nydusify/pkg/checker/rule/manifest.go): the bootstrap is the last layer, and only it.

A layer built with ``chunk_dict_ref`` names, after its own blob, the chunk dict blobs its files also read from;
they are layers of the image after it (nydus-snapshotter appends them before the bootstrap), so the check fetches
them ahead (``get_layer``, spooled to disk) and reads the layer with them, each dict chunk checked against its
digest. A dict blob is the dict image's layer: its chunks are verified on its turn, but it has no source layer.
"""
from __future__ import annotations

import re
import stat
from typing import Iterator

from acceleration_sdk.errors import LayerError
from acceleration_sdk.oci import DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, Descriptor
from acceleration_sdk.testing.entries import Allowances, LayerEntry

from .blobfile import BlobFile
from .bootlayer import read_bootstrap_layer
from .media import BLOB_ANNOTATION, BOOTSTRAP_ANNOTATION, FS_VERSION_ANNOTATION, NYDUS_BLOB
from .entries import read_layer
from .layout import B_ZRAN, RafsError
from .reader import Rafs
from .tree import from_bootstrap, merge
from .treediff import difference
from .refblob import REF_ANNOTATION
from .validate import validate

# What RAFS does not keep (owner names, sub-second mtimes, tar order; directories may be implied), and a blob
# is no tar: its diff_id is its own digest.
ALLOWANCES = Allowances(dropped=frozenset({"uname", "gname"}), mtime_precision=1.0, mtime_truncated=True,
                        implicit_dirs=True, keeps_order=False, tar_view=False, diff_id="blob")


SHOWN = 3  # differences between the merged bootstrap and the layers named on the FAIL line


def claims(layers) -> bool:
    """nydus output: a layer annotated as the bootstrap (nydus-snapshotter looks at the last one) or a nydus blob
    layer -- so an image whose bootstrap is misplaced is still checked as nydus, and told what is wrong."""
    return any(d.annotations.get(BOOTSTRAP_ANNOTATION) == "true" or d.media_type == NYDUS_BLOB for d in layers)


class NydusChecker:
    allowances = ALLOWANCES

    def __init__(self, layer_count: int):
        self._last = layer_count - 1
        # blob id (digest hex) -> the blob's parsed tail (its metadata only: the spooled file goes after each
        # layer); None when the blob layer failed its own check
        self._blobs: dict[str, BlobFile | None] = {}
        self._trees: dict[int, object] = {}   # layer index -> its tree (metadata only), for the merged view
        self._own = self._last                # blob layers of the image itself (check_manifest counts them)
        self._at: dict[str, int] = {}         # blob id -> index of the blob layer holding it
        self._dicts: dict[int, int | None] = {}   # chunk dict blob layers others read from -> entries on its turn
        self._get_layer = None                # the check's get_layer (bind): a layer's path, ahead of its turn
        # OCI-ref (zran) layers: their parsed blobs by *source* gzip digest hex (``.refcheck``), and how to fetch
        # a blob of the checked repository (the gzip layers are not in the manifest): bind's ``spool``
        self.ref_blobs: dict = {}
        self.spool = None

    def bind(self, get_manifest, get_blob, *, get_layer, spool) -> None:
        """``get_layer(i)``: a later layer's path (chunk dict blobs), kept by the check for the layer's own turn;
        ``spool(descriptor)``: any blob of the checked repository on disk (zran's gzip layers), removed here."""
        self._get_layer, self.spool = get_layer, spool

    def check_manifest(self, manifest, config) -> None:
        """nydusify's manifest rule; blob layers' media types and annotations are checked with each layer."""
        layers = manifest.layers
        for i, d in enumerate(layers[:self._last]):
            self._at.setdefault(d.digest.split(":", 1)[1], i)
        marked = [i for i, d in enumerate(layers) if d.annotations.get(BOOTSTRAP_ANNOTATION) == "true"]
        if self._last not in marked:
            found = f"; layer {marked[0] + 1} of {len(layers)} carries it" if marked else ""
            raise LayerError(f"the bootstrap must be the last layer: {layers[-1].digest} is not annotated "
                             f"{BOOTSTRAP_ANNOTATION}: \"true\"{found} (nydus-snapshotter mounts the last layer's "
                             "bootstrap)")
        if len(marked) > 1:
            raise LayerError(f"{len(marked)} layers are annotated {BOOTSTRAP_ANNOTATION}: only the last one may be")
        # the image's own blob layers, which the merged tree is made of: chunk_dict_ref appends the dict image's
        # blobs after them (nydus-snapshotter's MergeLayers) with no history entry; the history's non-empty
        # entries (the source's layers, then the bootstrap's) count them when the history is complete
        built = [h for h in config.get("history") or () if isinstance(h, dict) and not h.get("empty_layer")]
        self._own = len(built) - 1 if 0 < len(built) - 1 <= self._last else self._last

    def check_layer(self, index: int, desc: Descriptor, path: str) -> Iterator[LayerEntry] | None:
        if index == self._last:
            self._check_bootstrap(desc, path)
            return None
        blob_id = desc.digest.split(":", 1)[1]
        self._blobs[blob_id] = None
        self._blobs[blob_id] = BlobFile(path)  # first: a bad annotation must not fail the bootstrap too
        if desc.media_type != NYDUS_BLOB:
            raise LayerError(f"media type {desc.media_type} is not {NYDUS_BLOB}", digest=desc.digest)
        if desc.annotations.get(BLOB_ANNOTATION) != "true":
            raise LayerError(f"missing annotation {BLOB_ANNOTATION}: \"true\"", digest=desc.digest)
        if REF_ANNOTATION in desc.annotations:   # OCI-ref (zran): its chunks are slices of the gzip layer it names
            from .refcheck import check_ref_layer
            return check_ref_layer(self, index, desc, path)
        entries = self._entries(index, desc, path)
        if index not in self._dicts:
            return entries
        # a chunk dict blob another layer read from: the dict image's files, not this image's (no source layer)
        self._dicts[index] = sum(1 for _ in entries)
        return None

    def unpaired_detail(self, index: int) -> str:
        """The line of a layer check_layer returned None for: the bootstrap, or a chunk dict blob."""
        if index == self._last:
            return "verified against the blob layers"
        return f"{self._dicts.get(index)} entries, chunks verified (a chunk dict blob: no source layer)"

    def _dict_paths(self, index: int, path: str) -> dict[str, str]:
        """blob id -> spooled path of the chunk dict blobs the layer's own bootstrap names after its own blob."""
        boot = BlobFile(path).bootstrap
        if boot is None or self._get_layer is None:  # read_layer says what is missing
            return {}
        paths = {}
        for b in Rafs(boot).blobs[1:]:
            at = self._at.get(b.blob_id)
            if at is None or at == index:
                raise LayerError(f"the layer was built against chunk dict blob sha256:{b.blob_id}, which is no "
                                 "other blob layer of the image (nydus-snapshotter appends the dict blobs a layer "
                                 "uses before the bootstrap)")
            self._dicts.setdefault(at, None)
            paths[b.blob_id] = self._get_layer(at)
        return paths

    def _entries(self, index: int, desc: Descriptor, path: str) -> Iterator[LayerEntry]:
        try:
            dict_paths = self._dict_paths(index, path)
            with open(path, "rb") as fh:
                yield from read_layer(fh, desc, keep_data=False, dict_blobs=dict_paths)
            # verified above: its tree is what the merged bootstrap must show of this layer
            self._trees[index] = from_bootstrap(Rafs(BlobFile(path).bootstrap), index)
        except RafsError as exc:
            raise RafsError(_naming_files(path, str(exc))) from exc

    def _check_bootstrap(self, desc: Descriptor, path: str) -> None:
        if desc.media_type not in (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP):
            raise LayerError(f"media type {desc.media_type}: a nydus bootstrap layer is a gzip tar",
                             digest=desc.digest)
        for key, value in ((BOOTSTRAP_ANNOTATION, "true"), (FS_VERSION_ANNOTATION, "6")):
            if desc.annotations.get(key) != value:
                raise LayerError(f"annotation {key} is {desc.annotations.get(key)!r}, expected {value!r}",
                                 digest=desc.digest)
        with open(path, "rb") as fh:
            rafs = Rafs(read_bootstrap_layer(fh)[0])   # image.boot only: the blob.meta files come with the blobs
        if rafs.blobs and all(b.features & B_ZRAN for b in rafs.blobs):   # an OCI-ref (zran) image
            from .refcheck import check_ref_bootstrap
            check_ref_bootstrap(self, rafs, desc)
        else:
            self._check_blob_tables(rafs, desc)
        self._check_trees(rafs, desc)

    def _check_blob_tables(self, rafs: Rafs, desc: Descriptor) -> None:
        for b in rafs.blobs:
            if b.blob_id not in self._blobs:
                raise LayerError(f"the bootstrap names blob sha256:{b.blob_id}, which is no layer of the image",
                                 digest=desc.digest)
            if self._blobs[b.blob_id] is None:
                raise LayerError(f"the bootstrap names blob sha256:{b.blob_id}, which is unreadable (see its line)",
                                 digest=desc.digest)
        # the blob layers' data was verified as they were read: here the tables must agree
        validate(rafs, {b.blob_id: self._blobs[b.blob_id] for b in rafs.blobs}, strict=True, verify_data=False)

    def _check_trees(self, rafs: Rafs, desc: Descriptor) -> None:
        """What nydusd mounts (the merged bootstrap) against the blob layers' own trees merged (zran ones too)."""
        if any(i not in self._trees for i in range(self._last)):  # a blob layer failed (its own line says why)
            return
        # the image's own layers by the history's count, else every blob layer but the dict blobs others read
        # from, else every blob layer (a source whose history misses some layers): the bootstrap must show one
        tried = [difference(merge([self._trees[i] for i in own]), rafs)
                 for own in dict.fromkeys((tuple(range(self._own)),
                                           tuple(i for i in range(self._last) if i not in self._dicts),
                                           tuple(range(self._last))))]
        problems = min(tried, key=len)
        if problems:
            more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
            raise LayerError("the merged bootstrap differs from its blob layers merged: "
                             + "; ".join(problems[:SHOWN]) + more, digest=desc.digest)


def _naming_files(path: str, message: str) -> str:
    """``message`` about a bad chunk of a blob layer, led by the files of its own bootstrap the chunk holds: the
    blob is verified chunk by chunk (its own, then what it reads from dict blobs) before its tree is read."""
    try:
        rafs = Rafs(BlobFile(path).bootstrap)
        # "chunk N:" (its own blob), "chunk N of blob sha256:X:" (validate), "chunk N of dict blob sha256:X:"
        if found := re.match(r"chunk (\d+)(?: of (?:dict )?blob sha256:(\w+))?:", message):
            index, blob_id = int(found.group(1)), found.group(2)
            blobs = {i for i, b in enumerate(rafs.blobs) if b.blob_id == blob_id} if blob_id else {0}  # 0: its own
            names = [name for name, inode in rafs.walk() if stat.S_ISREG(inode.mode)
                     and any(c.index == index and c.blob_index in blobs for c in rafs.file_chunks(inode))]
        else:
            return message
    except RafsError:  # the tree is broken too: the chunk's own message has to do
        return message
    if not names:
        return message
    return f"{names[0]!r}" + (f" (and {len(names) - 1} more files)" if len(names) > 1 else "") + f": {message}"
