"""The two tar helpers that are eStargz's own; reading tar is :mod:`acceleration_sdk.tar`.

:func:`ustar_header` writes the few headers the eStargz writer adds (landmarks, the TOC) in the plain ustar
form stargz-snapshotter writes them -- nydus writes its blob parts' headers differently, byte for byte, so this
is not a general tar writer. :func:`go_clean_name` is Go's ``cleanEntryName``, for names the user gives
(prioritized files) that must match TOC names the way the Go tools match them.
"""
from __future__ import annotations

from acceleration_sdk.tar import BLOCK


def go_clean_name(raw: str) -> str:
    """Go's ``cleanEntryName`` exactly (``..`` at the root is dropped); for trusted names such as prioritized files."""
    out: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return "/".join(out)


def ustar_header(name: str, size: int, *, mode: int = 0, typeflag: bytes = b"0") -> bytes:
    """A minimal POSIX ustar header (uid/gid/mtime 0), for the entries we add: landmarks and the TOC."""
    raw = name.encode()
    if len(raw) > 100 or size >= 8 ** 11:
        raise ValueError(f"{name!r} does not fit a plain ustar header")
    block = bytearray(BLOCK)
    block[0:len(raw)] = raw
    block[100:108] = b"%07o\x00" % mode
    block[108:116] = b"%07o\x00" % 0
    block[116:124] = b"%07o\x00" % 0
    block[124:136] = b"%011o\x00" % size
    block[136:148] = b"%011o\x00" % 0
    block[156:157] = typeflag
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)
