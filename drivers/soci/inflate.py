"""zlib's raw inflate for SOCI's checkpoints: zlib-ng's native API when the ``zlib-ng`` wheel is installed, else
the system zlib (``acceleration_sdk.zlib_raw``).

Checkpoints need ``inflate(Z_BLOCK)`` and ``data_type`` (a block end, the last block, the unused bits of the
last input byte), which Python's ``zlib`` modules do not expose, hence ctypes. zlib-ng's inflate is zlib's
algorithm with the same ``Z_BLOCK`` contract, ~1.8x faster here (0.33 vs 0.62 CPU-s for the bench rootfs
layer); its functions are exported, under their ``zng_`` names, by the wheel's extension module.
Where a block ends and how many bits of its last byte are unused are properties of the deflate stream, so
both give upstream's checkpoints (tests/drivers/test_soci_ztoc.py checks both against soci-build).
"""
from __future__ import annotations

import ctypes

from acceleration_sdk.zlib_raw import ZStream as _ZStream, zlib_lib


class _Inflate:
    """inflateInit2 / inflate / inflateReset2 / inflateEnd of one library, its stream structure and name."""

    def __init__(self, name: str, stream, init, inflate, reset, end):
        self.name, self.stream = name, stream
        self.init, self.inflate, self.reset, self.end = init, inflate, reset, end


class _ZngStream(ctypes.Structure):
    """zlib-ng's ``zng_stream``: ``z_stream`` with a uint32 ``adler`` (104 bytes, not 112 on LP64)."""
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint32), ("total_in", ctypes.c_size_t),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint32), ("total_out", ctypes.c_size_t),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_uint32), ("reserved", ctypes.c_ulong)]


def _zlib_ng() -> _Inflate | None:
    """zlib-ng's native ``zng_*`` functions, exported by the ``zlib-ng`` wheel's extension module.

    ``zng_inflateInit2_`` checks the structure size we pass against its own: a wheel whose ``zng_stream``
    differs fails that check here, once, and the system zlib is used instead.
    """
    try:
        import zlib_ng.zlib_ng as ext

        lib = ctypes.CDLL(ext.__file__)
        lib.zlibng_version.restype = ctypes.c_char_p
        ver = lib.zlibng_version()
        ptr = ctypes.POINTER(_ZngStream)
        lib.zng_inflateInit2_.argtypes = [ptr, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.zng_inflate.argtypes = [ptr, ctypes.c_int]
        lib.zng_inflateReset2.argtypes = [ptr, ctypes.c_int]
        lib.zng_inflateEnd.argtypes = [ptr]
    except (ImportError, OSError, AttributeError, TypeError):
        return None
    found = _Inflate("zlib-ng " + ver.decode(), _ZngStream,
                     lambda strm, wbits: lib.zng_inflateInit2_(strm, wbits, ver, ctypes.sizeof(_ZngStream)),
                     lib.zng_inflate, lib.zng_inflateReset2, lib.zng_inflateEnd)
    probe = _ZngStream()
    if found.init(ctypes.byref(probe), 47) != 0:  # Z_OK
        return None
    found.end(ctypes.byref(probe))
    return found


def _zlib() -> _Inflate:
    lib = zlib_lib()
    ver = lib.zlibVersion()
    return _Inflate("zlib " + ver.decode(), _ZStream,
                    lambda strm, wbits: lib.inflateInit2_(strm, wbits, ver, ctypes.sizeof(_ZStream)),
                    lib.inflate, lib.inflateReset2, lib.inflateEnd)


_BACKENDS: dict[str, _Inflate | None] = {}


def backend(name: str = "auto") -> _Inflate:
    """``"zlib-ng"``, ``"zlib"`` or ``"auto"`` (zlib-ng when installed); loaded once."""
    if name not in _BACKENDS:
        if name == "zlib":
            _BACKENDS[name] = _zlib()
        elif name == "zlib-ng":
            _BACKENDS[name] = _zlib_ng()
        else:
            _BACKENDS[name] = backend("zlib-ng") if backend("zlib-ng") is not None else backend("zlib")
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


