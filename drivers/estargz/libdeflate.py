"""Whole-buffer gzip compression with libdeflate (Debian's libdeflate0), through ctypes.

eStargz members are whole buffers of at most one chunk, which is what libdeflate is built for: at the same
level it compresses 1.5-4x faster than zlib-ng and a little smaller (bench rootfs, level 9: 0.373 of the
input against zlib-ng's 0.379). The output is standard gzip. ctypes releases the GIL during the call, so
members compress in parallel on the writer's threads. When the library is missing, ``available`` is False
and the writer uses zlib-ng.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

_lib = None
try:
    _name = ctypes.util.find_library("deflate") or "libdeflate.so.0"
    _lib = ctypes.CDLL(_name)
    _lib.libdeflate_alloc_compressor.restype = ctypes.c_void_p
    _lib.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
    _lib.libdeflate_free_compressor.restype = None
    _lib.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
    _lib.libdeflate_gzip_compress_bound.restype = ctypes.c_size_t
    _lib.libdeflate_gzip_compress_bound.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _lib.libdeflate_gzip_compress.restype = ctypes.c_size_t
    _lib.libdeflate_gzip_compress.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                              ctypes.c_void_p, ctypes.c_size_t]
except (OSError, AttributeError):  # no libdeflate on this machine
    _lib = None

available = _lib is not None


class _Compressor:
    """One libdeflate compressor and output buffer; not thread-safe, so one per thread and level."""

    def __init__(self, level: int):
        self._c = _lib.libdeflate_alloc_compressor(level)
        if not self._c:
            raise ValueError(f"libdeflate refuses level {level}")
        self._buf = ctypes.create_string_buffer(0)

    def compress(self, data: bytes) -> bytes:
        bound = _lib.libdeflate_gzip_compress_bound(self._c, len(data))
        if ctypes.sizeof(self._buf) < bound:
            self._buf = ctypes.create_string_buffer(bound)
        n = _lib.libdeflate_gzip_compress(self._c, data, len(data), self._buf, bound)
        if n == 0:  # cannot happen with a buffer of the bound's size
            raise RuntimeError("libdeflate: output buffer too small")
        return ctypes.string_at(self._buf, n)

    def __del__(self):
        if getattr(self, "_c", None) and _lib is not None:
            _lib.libdeflate_free_compressor(self._c)
            self._c = None


_local = threading.local()


def gzip_compress(data: bytes, level: int) -> bytes:
    """``data`` as one gzip member at ``level`` (0-12; 0 stores)."""
    compressors = getattr(_local, "compressors", None)
    if compressors is None:
        compressors = _local.compressors = {}
    comp = compressors.get(level)
    if comp is None:
        comp = compressors[level] = _Compressor(level)
    return comp.compress(data)
