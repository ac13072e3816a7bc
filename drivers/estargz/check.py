"""``accelctl check`` for eStargz and zstd:chunked images: the driver's :class:`ImageChecker`.

Per layer: the media type is a gzip or zstd layer type and matches the blob's magic; the annotations a lazy
puller needs are there (stargz-snapshotter finds the TOC by ``toc.digest``; c/storage finds a zstd:chunked TOC
by ``manifest-checksum`` and ``manifest-position``); then :func:`.reader.read_layer` reads the layer the way a
snapshotter does -- footer, TOC against its digest annotation, every chunk against its ``chunkDigest`` -- and
the entries it yields (file bytes hashed, never held) are what ``--source`` compares.
"""
from __future__ import annotations

from typing import Iterator

from acceleration_sdk.errors import LayerError
from acceleration_sdk.oci import DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor
from acceleration_sdk.testing.entries import Allowances, LayerEntry

from .reader import INTERNAL_NAMES, read_layer
from .writer import (MANIFEST_CHECKSUM_ANNOTATION, MANIFEST_POSITION_ANNOTATION, TOC_DIGEST_ANNOTATION,
                     UNCOMPRESSED_SIZE_ANNOTATION)

# The TOC stores modtime as RFC 3339 whole seconds (the writer rounds half-up, like Go's time.Round).
ALLOWANCES = Allowances(mtime_precision=1.0, internal_names=INTERNAL_NAMES)
GZIP_TYPES = (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP)  # a Docker manifest (docker2oci: false) keeps Docker's gzip type
REQUIRED = {"gzip": (TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION),
            "zstd": (TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION, MANIFEST_CHECKSUM_ANNOTATION,
                     MANIFEST_POSITION_ANNOTATION)}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def claims(layers) -> bool:
    """An image is eStargz/zstd:chunked output when any layer carries a TOC annotation."""
    return any(TOC_DIGEST_ANNOTATION in d.annotations or MANIFEST_CHECKSUM_ANNOTATION in d.annotations
               for d in layers)


class EStargzChecker:
    allowances = ALLOWANCES

    def check_layer(self, index: int, desc: Descriptor, path: str) -> Iterator[LayerEntry]:
        if desc.media_type in GZIP_TYPES:
            kind = "gzip"
        elif desc.media_type == OCI_LAYER_ZSTD:
            kind = "zstd"
        else:
            raise LayerError(f"media type {desc.media_type} is not an eStargz (gzip) or zstd:chunked layer type",
                             digest=desc.digest)
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if (magic == ZSTD_MAGIC) != (kind == "zstd"):
            raise LayerError(f"media type {desc.media_type} but the blob is "
                             f"{'zstd' if magic == ZSTD_MAGIC else 'not zstd'}", digest=desc.digest)
        missing = [a for a in REQUIRED[kind] if not desc.annotations.get(a)]
        if missing:
            raise LayerError(f"missing annotation {', '.join(missing)}", digest=desc.digest)
        size = desc.annotations[UNCOMPRESSED_SIZE_ANNOTATION]
        if not size.isdigit():
            raise LayerError(f"annotation {UNCOMPRESSED_SIZE_ANNOTATION} is {size!r}, not a byte count",
                             digest=desc.digest)
        return self._entries(desc, path)

    @staticmethod
    def _entries(desc: Descriptor, path: str) -> Iterator[LayerEntry]:
        with open(path, "rb") as fh:
            yield from read_layer(fh, desc, keep_data=False)
