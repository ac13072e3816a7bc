"""A ctypes binding of zlib's raw inflate API, for what Python's ``zlib`` modules do not expose.

    z = backend("auto")                  # zlib-ng's native API when usable, else the system zlib; loaded once
    strm = z.stream()
    z.init(ctypes.byref(strm), 31)       # every call takes a pointer to the stream, as the C API does
    z.inflate(ctypes.byref(strm), Z_BLOCK)

Random access into gzip streams (SOCI's ztoc checkpoints, nydus's zran context) needs the inflate state at
deflate block ends: ``inflate(Z_BLOCK)`` stops there and reports it in ``data_type`` (bit 7: at a block end,
bit 6: after the last block, bits 0-2: unused bits of the last input byte), and the 32 KiB window before it
is the dictionary a later ``inflateSetDictionary`` + ``inflatePrime`` resumes from. zlib's own zran.c is the
reference for that use.

Two libraries give the same answers, because block ends, pending bits and windows are properties of the
deflate stream, not of the inflater (tests/drivers/test_soci_ztoc.py and test_nydus_zran.py check both):
zlib-ng's native ``zng_*`` API, exported by the ``zlib-ng`` wheel's extension module (requirements.txt), is
~1.8x zlib's speed here; the system zlib is the fallback.
"""
from __future__ import annotations

import ctypes
import ctypes.util

Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR, Z_BLOCK = 0, 1, 2, -5, 5
WINSIZE = 32768  # deflate's window: what a checkpoint keeps


class ZStream(ctypes.Structure):
    """zlib's ``z_stream``."""
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


class ZngStream(ctypes.Structure):
    """zlib-ng's native ``zng_stream``: ``z_stream`` with a uint32 ``adler`` (104 bytes, not 112, on LP64)."""
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint32), ("total_in", ctypes.c_size_t),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint32), ("total_out", ctypes.c_size_t),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_uint32), ("reserved", ctypes.c_ulong)]


class Inflate:
    """One library's inflate calls and its stream structure (``stream``). The calls are the C functions
    themselves (no Python wrapper in the hot loop), each taking ``ctypes.byref(stream)`` first:
    ``init(strm, wbits)``, ``inflate(strm, flush)``, ``reset(strm)``, ``reset2(strm, wbits)``, ``end(strm)``,
    ``get_dictionary(strm, buf, byref(c_uint32))``, ``set_dictionary(strm, bytes, len)``,
    ``prime(strm, bits, value)``."""

    def __init__(self, name: str, lib, prefix: str, stream, version: bytes):
        ptr = ctypes.POINTER(stream)
        signatures = {"inflateInit2_": [ptr, ctypes.c_int, ctypes.c_char_p, ctypes.c_int],
                      "inflate": [ptr, ctypes.c_int], "inflateReset": [ptr], "inflateReset2": [ptr, ctypes.c_int],
                      "inflateEnd": [ptr],
                      "inflateGetDictionary": [ptr, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint32)],
                      "inflateSetDictionary": [ptr, ctypes.c_char_p, ctypes.c_uint],
                      "inflatePrime": [ptr, ctypes.c_int, ctypes.c_int]}
        fn = {}
        for short, argtypes in signatures.items():
            fn[short] = getattr(lib, prefix + short)   # AttributeError: this library lacks it
            fn[short].argtypes = argtypes
        init2, size = fn["inflateInit2_"], ctypes.sizeof(stream)
        self.name, self.version, self.stream = name, version.decode(), stream
        # inflateInit2_ with the structure size: the library refuses a stream layout other than its own
        self.init = lambda strm, wbits: init2(strm, wbits, version, size)
        self.inflate, self.reset, self.reset2, self.end = (fn["inflate"], fn["inflateReset"], fn["inflateReset2"],
                                                           fn["inflateEnd"])
        self.get_dictionary, self.set_dictionary, self.prime = (fn["inflateGetDictionary"],
                                                                fn["inflateSetDictionary"], fn["inflatePrime"])

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _zlib_ng() -> Inflate | None:
    """zlib-ng's native ``zng_*`` functions from the ``zlib-ng`` wheel's extension module, or None.

    A wheel built with another ``zng_stream`` layout fails ``zng_inflateInit2_``'s structure-size check on a
    probe stream here, once, and the system zlib is used instead of a mis-read structure.
    """
    try:
        import zlib_ng.zlib_ng as ext

        lib = ctypes.CDLL(ext.__file__)
        lib.zlibng_version.restype = ctypes.c_char_p
        found = Inflate("zlib-ng", lib, "zng_", ZngStream, lib.zlibng_version())
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    probe = ZngStream()
    if found.init(ctypes.byref(probe), 47) != Z_OK:
        return None
    found.end(ctypes.byref(probe))
    return found


def _zlib() -> Inflate:
    lib = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
    lib.zlibVersion.restype = ctypes.c_char_p
    return Inflate("zlib", lib, "", ZStream, lib.zlibVersion())


_BACKENDS: dict[str, Inflate | None] = {}


def backend(name: str = "auto") -> Inflate:
    """``"zlib-ng"``, ``"zlib"`` (the system's) or ``"auto"`` (zlib-ng when usable); each loaded once."""
    if name not in _BACKENDS:
        if name == "zlib":
            _BACKENDS[name] = _zlib()
        elif name == "zlib-ng":
            _BACKENDS[name] = _zlib_ng()
        elif name == "auto":
            _BACKENDS[name] = backend("zlib-ng") if available("zlib-ng") else backend("zlib")
        else:
            raise ValueError(f"unknown inflate backend {name!r} (known: auto, zlib-ng, zlib)")
    found = _BACKENDS[name]
    if found is None:
        raise RuntimeError(f"inflate backend {name!r} is not available")
    return found


def available(name: str) -> bool:
    try:
        backend(name)
    except RuntimeError:
        return False
    return True
