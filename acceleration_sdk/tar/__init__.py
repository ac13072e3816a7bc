"""Tar, read as a stream: :class:`TarReader` yields :class:`TarEntry` values, refusing hostile input.

    from acceleration_sdk.tar import TarReader
    reader = TarReader(layer_stream)
    while (entry := reader.next()) is not None: ...

Modules, one noun each: ``header`` (what one header's blocks mean; name rules, numbers, PAX records) and
``reader`` (the stream: buffering, payloads, extended headers). Shared by the drivers so that every format
refuses the same layers for the same reasons.
"""
from .header import BLOCK, MAX_NAME, TarEntry
from .reader import READ_SIZE, TarReader

__all__ = ["BLOCK", "MAX_NAME", "READ_SIZE", "TarEntry", "TarReader"]
