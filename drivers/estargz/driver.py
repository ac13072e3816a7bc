"""The ``estargz`` driver: rewrites every layer as eStargz (gzip) or zstd:chunked, keeping the image's shape."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from acceleration_sdk.driver import ConvertedLayer, LayerDriver
from acceleration_sdk.oci import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor
from acceleration_sdk.options import Option, OptionSchema

DEFAULT_CHUNK_SIZE = 4 << 20  # 4 MiB: the estargz default chunk size
DEFAULT_LEVEL = 9  # gzip level of the reference converter (ctr-remote / acceld)
DEFAULT_ZSTD_LEVEL = 3  # the reference's zstd:chunked uses klauspost/zstd SpeedDefault, which is zstd level 3
COMPRESSIONS = ("estargz", "zstdchunked")


def _gzip(values) -> bool:
    return values["compression"] == "estargz"


# The one place the estargz options are declared: config validation, `accelctl drivers estargz` and the
# errors all read it.
OPTIONS = OptionSchema(
    Option("compression", str, "estargz", choices=COMPRESSIONS,
           help="estargz (gzip) or zstdchunked (zstd:chunked, stargz-snapshotter flavour)"),
    Option("docker2oci", bool, True, help="Docker media types become OCI ones (needed for layer annotations)"),
    Option("chunk_size", int, DEFAULT_CHUNK_SIZE, range=(4096, 1 << 30),
           help="bytes per chunk of big files (4 MiB, the estargz default)"),
    Option("compression_level", int, lambda o: DEFAULT_LEVEL if _gzip(o) else DEFAULT_ZSTD_LEVEL,
           range=lambda o: (1, 9) if _gzip(o) else (1, 22),
           help=f"gzip 1-9 (default {DEFAULT_LEVEL}, the reference converter's) or "
                f"zstd 1-22 for zstdchunked (default {DEFAULT_ZSTD_LEVEL}, the reference's SpeedDefault)"),
    Option("prioritized_files", list, (), help="files the runtime reads first (prefetched); empty = none"),
    Option("with_referrer", bool, False, help="point the converted manifest's subject at the source manifest"),
    Option("workers", int, lambda o: min(2, os.cpu_count() or 1), range=(1, 64),
           help="threads compressing one layer (default 2, or 1 on a one-CPU host); speed only, not bytes"),
)


class EStargzDriver(LayerDriver):
    """eStargz (gzip) or zstd:chunked layers, readable by stargz-snapshotter; the image keeps its shape."""

    options_schema = OPTIONS
    default_tag_suffix = "-esgz"  # acceld's example rule; also for zstdchunked, as before drivers declared it

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)  # validated against OPTIONS, defaults filled
        self.compression = self.options["compression"]
        self._docker2oci = self.options["docker2oci"]
        self._with_referrer = self.options["with_referrer"]
        self.chunk_size = self.options["chunk_size"]
        self.level = self.options["compression_level"]
        self.workers = self.options["workers"]
        self.prioritized_files = self.options["prioritized_files"]

    @classmethod
    def image_checker(cls, manifest, claim: bool = True):
        """eStargz/zstd:chunked output: recognised by a TOC annotation on any layer (``.check``)."""
        from .check import EStargzChecker, claims

        return EStargzChecker() if not claim or claims(manifest.layers) else None

    def name(self) -> str:
        return "estargz"

    def version(self) -> str:
        return "zstdchunked-v1" if self.compression == "zstdchunked" else "v1"

    def docker2oci(self) -> bool:
        return self._docker2oci

    def with_referrer(self) -> bool:
        return self._with_referrer

    def cache_key(self) -> str:
        # workers change speed, not bytes. The prioritized files enter as a digest of the list: joined they
        # were ambiguous (a recorded path may hold a comma: ("/a,/b",) and ("/a", "/b") made one key) and
        # grew with the list (--prefetch-from: thousands of paths in every remote cache entry's annotation)
        files = self.prioritized_files
        listed = "sha256:" + hashlib.sha256(json.dumps(list(files)).encode()).hexdigest() if files else ""
        return f"{self.name()}/{self.version()}/{self.compression}/{self.chunk_size}/{self.level}/{listed}"

    def convert_layer(self, content, desc: Descriptor) -> ConvertedLayer | None:
        from .writer import convert_tar

        with content.open_uncompressed(desc) as tar, content.blob_writer() as out:
            result = convert_tar(tar, out, compression=self.compression, chunk_size=self.chunk_size,
                                 level=self.level, prioritized_files=self.prioritized_files,
                                 tmp_dir=content.store.tmp_dir, workers=self.workers)
            digest = out.commit()  # the engine verifies the source first
        media_type = OCI_LAYER_ZSTD if result.compression == "zstd" else OCI_LAYER_GZIP
        return ConvertedLayer(Descriptor(media_type=media_type, digest=digest, size=out.size,
                                         annotations=dict(result.annotations)), result.diff_id)
