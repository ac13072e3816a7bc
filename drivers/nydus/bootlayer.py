"""The nydus bootstrap layer: a gzip tar of ``image/image.boot`` (the merged bootstrap) and
``image/<blob id>.blob.meta`` files (nydus-snapshotter's packToTar, pkg/converter/convert_unix.go).

The driver writes it (:func:`write_bootstrap_layer`, ``finalize_manifest``); ``accelctl check`` (``.check``) and
``chunk_dict_ref`` (``.chunkdict``, the dict image's bootstrap) read it back with :func:`read_bootstrap_layer`,
streamed, with what is held in memory bounded: a hostile layer is small gzip and huge tar.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from typing import BinaryIO, Collection

from acceleration_sdk.compression import open_decompressed
from acceleration_sdk.errors import LayerError

from .media import BOOTSTRAP_DIR

MAX_BOOTSTRAP = 512 << 20   # image.boot is held in memory: metadata, a few MB for a Debian rootfs
MAX_META = 64 << 20         # one blob.meta (16 bytes a chunk); a bigger one is skipped, never read
# every blob.meta kept from one layer, together: the tar may name any number of them, and a gzip of zeros
# makes 64 MiB of one cost 64 KiB of layer (256 MiB: 16M chunks, 64 GiB of data at the smallest chunk size)
MAX_METAS = 256 << 20
BOOT_NAME = f"{BOOTSTRAP_DIR}/image.boot"
META_SUFFIX = ".blob.meta"


class BootstrapLayerError(LayerError):
    """The bootstrap layer's tar breaks a bound or lacks image.boot; the message does not say whose layer it is
    (the caller does: the checked image's, or the chunk dict's)."""


class _Hashing:
    """Hashes the uncompressed tar (the bootstrap layer's diff_id) on its way into gzip."""

    def __init__(self, out):
        self._out, self.sha = out, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self._out.write(data)


def write_bootstrap_layer(out, boot: bytes, metas: list[tuple[str, bytes]]) -> str:
    """``image/`` (0755), ``image/image.boot`` (0444) and ``image/<id>.blob.meta`` files as tar+gzip into
    ``out`` (nydus-snapshotter's packToTar: zero times, root owner); returns the uncompressed tar's sha256."""
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
        hashing = _Hashing(gz)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.USTAR_FORMAT) as tf:
            folder = tarfile.TarInfo(BOOTSTRAP_DIR)
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(folder)
            for name, data in [("image.boot", boot)] + [(f"{blob_id}{META_SUFFIX}", meta) for blob_id, meta in metas]:
                info = tarfile.TarInfo(f"{BOOTSTRAP_DIR}/{name}")
                info.mode, info.size = 0o444, len(data)
                tf.addfile(info, io.BytesIO(data))
    return "sha256:" + hashing.sha.hexdigest()


def read_bootstrap_layer(fh: BinaryIO, wanted: Collection[str] = ()) -> tuple[bytes, dict[str, bytes]]:
    """``image/image.boot`` and the ``image/<id>.blob.meta`` files of the bootstrap layer in ``fh`` (gzip or
    zstd tar), streamed to its end. Only the blob.meta of a blob id in ``wanted`` is kept, each at most MAX_META
    and at most MAX_METAS together: the others are never read into memory. ``tarfile`` and decompression errors
    pass through (``TarError``, ``OSError``, ``EOFError``, the SDK's ``LayerError``); a bound broken or no
    image.boot: :class:`BootstrapLayerError`."""
    boot, metas, kept = None, {}, 0
    with tarfile.open(fileobj=open_decompressed(fh), mode="r|") as tf:
        for info in tf:
            path = info.name.lstrip("./")
            if not info.isreg() or not path.startswith(BOOTSTRAP_DIR + "/"):
                continue
            if path == BOOT_NAME:
                if info.size > MAX_BOOTSTRAP:
                    raise BootstrapLayerError(f"{BOOT_NAME} is {info.size} bytes, more than {MAX_BOOTSTRAP}")
                boot = tf.extractfile(info).read()
                continue
            blob_id = path[len(BOOTSTRAP_DIR) + 1:-len(META_SUFFIX)]
            if path.endswith(META_SUFFIX) and info.size <= MAX_META and blob_id in wanted:
                if kept + info.size > MAX_METAS:
                    raise BootstrapLayerError(f"the blob.meta files of its blob layers are more than {MAX_METAS} "
                                              "bytes together")
                kept += info.size
                metas[blob_id] = tf.extractfile(info).read()
    if boot is None:
        raise BootstrapLayerError(f"the bootstrap layer holds no {BOOT_NAME}")
    return boot, metas
