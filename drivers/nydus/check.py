"""``accelctl check`` for nydus images: the driver's :class:`ImageChecker`.

A nydus image is blob layers (``application/vnd.oci.image.layer.nydus.blob.v1``, ``nydus-blob: true``) and a
last gzip layer annotated ``nydus-bootstrap: true`` holding ``image/image.boot``. Each blob layer is read with
:func:`.entries.read_layer` (its per-layer bootstrap held to nydusd's load rules, every chunk's digest and data
verified, file bytes hashed for ``--source``); the bootstrap layer's merged bootstrap is held to the same rules
and cross-checked against every blob it names (blob.meta, blob.digest: :func:`.validate.validate`).
"""
from __future__ import annotations

import re
import stat
import tarfile
from typing import Iterator

from acceleration_sdk.compression import open_decompressed
from acceleration_sdk.errors import LayerError
from acceleration_sdk.oci import DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, Descriptor
from acceleration_sdk.testing.entries import Allowances, LayerEntry

from .blobfile import BlobFile
from .media import BLOB_ANNOTATION, BOOTSTRAP_ANNOTATION, BOOTSTRAP_DIR, FS_VERSION_ANNOTATION, NYDUS_BLOB
from .entries import read_layer
from .layout import B_ZRAN, RafsError
from .reader import Rafs
from .refblob import REF_ANNOTATION
from .validate import validate

# What RAFS does not keep (owner names, sub-second mtimes, tar order; directories may be implied), and a blob
# is no tar: its diff_id is its own digest.
ALLOWANCES = Allowances(dropped=frozenset({"uname", "gname"}), mtime_precision=1.0, mtime_truncated=True,
                        implicit_dirs=True, keeps_order=False, tar_view=False, diff_id="blob")
MAX_BOOTSTRAP = 512 << 20  # a bootstrap is metadata (a Debian rootfs: a few MB); bigger is refused, not read


def claims(layers) -> bool:
    """A nydus image's last layer is the bootstrap (nydus-snapshotter's rule for recognising one)."""
    return bool(layers) and layers[-1].annotations.get(BOOTSTRAP_ANNOTATION) == "true"


class NydusChecker:
    allowances = ALLOWANCES

    def __init__(self, layer_count: int):
        self._last = layer_count - 1
        # blob id (digest hex) -> the blob's parsed tail (its metadata only: the spooled file goes after each
        # layer); None when the blob layer failed its own check
        self._blobs: dict[str, BlobFile | None] = {}
        # OCI-ref (zran) layers: their parsed blobs by *source* gzip digest hex (``.refcheck``), and how to fetch
        # a blob of the checked repository (the gzip layers are not in the manifest): ``bind_spool``
        self.ref_blobs: dict = {}
        self.spool = None

    def bind_spool(self, spool) -> None:
        """``spool(descriptor) -> path``: a blob of the checked repository downloaded (verified) into the work
        directory; the caller removes it."""
        self.spool = spool

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
            return check_ref_layer(self, desc, path)
        return self._entries(desc, path)

    @staticmethod
    def _entries(desc: Descriptor, path: str) -> Iterator[LayerEntry]:
        try:
            with open(path, "rb") as fh:
                yield from read_layer(fh, desc, keep_data=False)
        except RafsError as exc:
            found = re.match(r"chunk (\d+):", str(exc))
            if not found:
                raise
            # the blob is verified chunk by chunk before its tree is read: say which files the bad chunk holds
            names = _files_with_chunk(path, int(found.group(1)))
            shown = f"{names[0]!r}" + (f" (and {len(names) - 1} more files)" if len(names) > 1 else "")
            raise RafsError(f"{shown}: {exc}" if names else str(exc)) from exc

    def _check_bootstrap(self, desc: Descriptor, path: str) -> None:
        if desc.media_type not in (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP):
            raise LayerError(f"media type {desc.media_type}: a nydus bootstrap layer is a gzip tar",
                             digest=desc.digest)
        for key, value in ((BOOTSTRAP_ANNOTATION, "true"), (FS_VERSION_ANNOTATION, "6")):
            if desc.annotations.get(key) != value:
                raise LayerError(f"annotation {key} is {desc.annotations.get(key)!r}, expected {value!r}",
                                 digest=desc.digest)
        rafs = Rafs(_bootstrap(path))
        if rafs.blobs and all(b.features & B_ZRAN for b in rafs.blobs):   # an OCI-ref (zran) image
            from .refcheck import check_ref_bootstrap
            check_ref_bootstrap(self, rafs, desc)
            return
        for b in rafs.blobs:
            if b.blob_id not in self._blobs:
                raise LayerError(f"the bootstrap names blob sha256:{b.blob_id}, which is no layer of the image",
                                 digest=desc.digest)
            if self._blobs[b.blob_id] is None:
                raise LayerError(f"the bootstrap names blob sha256:{b.blob_id}, which is unreadable (see its line)",
                                 digest=desc.digest)
        # the blob layers' data was verified as they were read: here the tables must agree
        validate(rafs, {b.blob_id: self._blobs[b.blob_id] for b in rafs.blobs}, strict=True, verify_data=False)


def _files_with_chunk(path: str, index: int) -> list[str]:
    """The regular files of a blob layer's own bootstrap whose data lies in chunk ``index``."""
    try:
        rafs = Rafs(BlobFile(path).bootstrap)
        return [name for name, inode in rafs.walk() if stat.S_ISREG(inode.mode)
                and any(chunk.index == index for chunk in rafs.file_chunks(inode))]
    except RafsError:  # the tree is broken too: the chunk's own message has to do
        return []


def _bootstrap(path: str) -> bytes:
    """``image/image.boot`` from the bootstrap layer's tar, streamed through."""
    want = f"{BOOTSTRAP_DIR}/image.boot"
    with open(path, "rb") as fh, tarfile.open(fileobj=open_decompressed(fh), mode="r|") as tf:
        for info in tf:
            if info.name.lstrip("./") == want and info.isreg():
                if info.size > MAX_BOOTSTRAP:
                    raise LayerError(f"{want} is {info.size} bytes, more than {MAX_BOOTSTRAP}")
                return tf.extractfile(info).read()
    raise LayerError(f"the bootstrap layer holds no {want}")
