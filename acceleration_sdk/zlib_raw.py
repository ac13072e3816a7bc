"""A ctypes binding of the system zlib's raw inflate API, for what Python's ``zlib`` module does not expose.

Random access into gzip streams (SOCI's ztoc checkpoints, nydus's zran context) needs the inflate state at
deflate block ends: ``inflate(Z_BLOCK)`` stops there and reports it in ``data_type`` (bit 7: at a block end,
bit 6: after the last block, bits 0-2: unused bits of the last input byte), and the 32 KiB window before it
is the dictionary a later ``inflateSetDictionary`` + ``inflatePrime`` resumes from. zlib's own zran.c is the
reference for that use; this module only declares the functions and the ``z_stream`` structure.
"""
from __future__ import annotations

import ctypes
import ctypes.util

Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR, Z_BLOCK = 0, 1, 2, -5, 5
WINSIZE = 32768  # deflate's window: what a checkpoint keeps


class ZStream(ctypes.Structure):
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


def _load_zlib():
    lib = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = [ctypes.POINTER(ZStream), ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.inflate.argtypes = [ctypes.POINTER(ZStream), ctypes.c_int]
    lib.inflateReset2.argtypes = [ctypes.POINTER(ZStream), ctypes.c_int]
    lib.inflateEnd.argtypes = [ctypes.POINTER(ZStream)]
    lib.inflateSetDictionary.argtypes = [ctypes.POINTER(ZStream), ctypes.c_char_p, ctypes.c_uint]
    lib.inflatePrime.argtypes = [ctypes.POINTER(ZStream), ctypes.c_int, ctypes.c_int]
    return lib


_zlib = None


def zlib_lib():
    """The system libz, loaded once."""
    global _zlib
    if _zlib is None:
        _zlib = _load_zlib()
    return _zlib
