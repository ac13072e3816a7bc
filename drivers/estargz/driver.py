"""The ``estargz`` driver: rewrites every layer as eStargz (gzip) or zstd:chunked, keeping the image's shape."""
from __future__ import annotations

import os
from typing import Any, Mapping

from acceleration_sdk.driver import ConvertedLayer, LayerDriver
from acceleration_sdk.errors import DriverError
from acceleration_sdk.oci import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor

DEFAULT_CHUNK_SIZE = 4 << 20  # 4 MiB: the estargz default chunk size
DEFAULT_LEVEL = 9  # gzip level of the reference converter (ctr-remote / acceld)
DEFAULT_ZSTD_LEVEL = 3  # the reference's zstd:chunked uses klauspost/zstd SpeedDefault, which is zstd level 3
COMPRESSIONS = ("estargz", "zstdchunked")
_OPTIONS = ("compression", "docker2oci", "chunk_size", "compression_level", "prioritized_files",
            "with_referrer", "workers")


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise DriverError(f"converter.driver.config.{key}: expected true or false, got {value!r}")


def _int(value: Any, key: str, low: int, high: int) -> int:
    try:
        number = int(value, 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise DriverError(f"converter.driver.config.{key}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise DriverError(f"converter.driver.config.{key}: expected {low}..{high}, got {value!r}")
    return number


class EStargzDriver(LayerDriver):
    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        for key in self.options:
            if key not in _OPTIONS:
                raise DriverError(f"converter.driver.config.{key}: unknown option for estargz "
                                  f"(allowed: {', '.join(_OPTIONS)})")
        self.compression = str(self.options.get("compression", "estargz"))
        if self.compression not in COMPRESSIONS:
            raise DriverError(f"converter.driver.config.compression: expected one of {', '.join(COMPRESSIONS)}, "
                              f"got {self.compression!r}")
        self._docker2oci = _bool(self.options.get("docker2oci", True), "docker2oci")
        self._with_referrer = _bool(self.options.get("with_referrer", False), "with_referrer")
        self.chunk_size = _int(self.options.get("chunk_size", DEFAULT_CHUNK_SIZE), "chunk_size", 4096, 1 << 30)
        high = 9 if self.compression == "estargz" else 22
        default = DEFAULT_LEVEL if self.compression == "estargz" else DEFAULT_ZSTD_LEVEL
        self.level = _int(self.options.get("compression_level", default), "compression_level", 1, high)
        self.workers = _int(self.options.get("workers", min(2, os.cpu_count() or 1)), "workers", 1, 64)
        prioritized = self.options.get("prioritized_files", ())
        if isinstance(prioritized, str):
            prioritized = [p for p in prioritized.replace(",", "\n").splitlines() if p.strip()]
        if not isinstance(prioritized, (list, tuple)) or not all(isinstance(p, str) for p in prioritized):
            raise DriverError("converter.driver.config.prioritized_files: expected a list of paths")
        self.prioritized_files = tuple(p.strip() for p in prioritized)

    def name(self) -> str:
        return "estargz"

    def version(self) -> str:
        return "zstdchunked-v1" if self.compression == "zstdchunked" else "v1"

    def docker2oci(self) -> bool:
        return self._docker2oci

    def with_referrer(self) -> bool:
        return self._with_referrer

    def cache_key(self) -> str:
        # workers change speed, not bytes
        return (f"{self.name()}/{self.version()}/{self.compression}/{self.chunk_size}/{self.level}/"
                f"{','.join(self.prioritized_files)}")

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
