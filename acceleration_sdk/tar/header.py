"""One tar header: what its blocks mean, and the rules every entry name follows.

:func:`entry_from_header` turns a header block (plus the PAX records and GNU long names that came before it)
into a :class:`TarEntry`; the field decoders beside it read the octal / base-256 numbers, NUL-terminated
strings and PAX records Go's archive/tar accepts, and refuse what it refuses. :mod:`acceleration_sdk.tar.reader`
reads those blocks off a stream. Hostile input raises :class:`acceleration_sdk.errors.LayerError` naming the
byte offset.

Nothing here is one output format's: names are normalised the way every layer applier sees them (no ``./``,
no leading ``/``, ``..`` refused), mtimes are kept as seconds plus nanoseconds so each driver applies its own
rule (the eStargz TOC rounds like Go, nydus keeps whole seconds), and how bytes that are not UTF-8 become
``str`` is the caller's choice (``errors``: ``surrogateescape`` is lossless, ``replace`` is what Go's JSON shows).
"""
from __future__ import annotations

import dataclasses
import re

from acceleration_sdk.errors import LayerError

BLOCK = 512
# 4095 bytes: Linux PATH_MAX (4096) less its NUL. No runtime can create a longer path or symlink target, and
# without a cap a `tar c` of a 10,000-deep tree (~2 MB gzipped) makes ever-longer names: a 100 MB eStargz TOC.
MAX_NAME = 4095

# Typeflags (POSIX ustar + GNU): regular files, header-only types, and the meta headers we fold in.
_REG_FLAGS = frozenset(b"0\x007")
_KINDS = {ord("1"): "hardlink", ord("2"): "symlink", ord("3"): "char", ord("4"): "block",
          ord("5"): "dir", ord("6"): "fifo"}
_XATTR_PREFIX = "SCHILY.xattr."
_OCTAL = re.compile(rb"[0-7]+")
_PAX_INT = re.compile(rb"-?[0-9]+")
_PAX_TIME = re.compile(rb"-?[0-9]+(\.[0-9]*)?")


@dataclasses.dataclass(slots=True)
class TarEntry:
    """One tar entry: its raw header bytes plus what they mean.

    ``kind`` is reg, dir, symlink, hardlink, char, block, fifo, or ``"global"`` for a PAX global header (its
    records already apply to the entries after it; a writer that copies the tar passes its bytes through).
    ``name`` is normalised (no ``./``, no leading or trailing ``/``; ``""`` is the root). ``linkname`` is
    normalised for hard links and verbatim for symlinks. The time is ``mtime`` seconds (the floor, as
    ``st_mtime``) plus ``mtime_ns`` nanoseconds (``0 <= mtime_ns < 10**9``; only a PAX record has them).
    ``size`` is 0 for every kind but ``reg`` (header-only types carry no payload).
    """

    header: bytes
    name: str
    kind: str
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: int = 0
    mtime_ns: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = dataclasses.field(default_factory=dict)
    offset: int = 0  # byte offset of the entry's first header block in the input

    @property
    def padding(self) -> int:
        """Zero bytes that follow the payload up to the next 512-byte boundary."""
        return -self.size % BLOCK


def clean_name(raw: str, *, where: str) -> str:
    """Normalise an entry name like the reference eStargz reader (``path.Clean("/"+name)`` minus the slash).

    Unlike that reader we refuse ``..`` components: a name that needs them is hostile, not sloppy.
    """
    if "\x00" in raw:
        raise LayerError(f"{where}: name {_shown(raw)} contains a NUL byte")
    parts = [p for p in raw.split("/") if p and p != "."]
    if ".." in parts:
        raise LayerError(f"{where}: name {_shown(raw)} escapes the layer root (its '..' leaves the layer)")
    name = "/".join(parts)
    _check_length(name, "name", where)
    return name


def _shown(text: str) -> str:
    """``repr`` of a name for a message, cut short: a message stays readable whatever the tar says."""
    return repr(text) if len(text) <= 120 else f"{text[:120]!r}... ({len(text)} characters)"


def _check_length(path: str, what: str, where: str) -> None:
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME:
        raise LayerError(f"{where}: {what} {_shown(path)} is {size} bytes, longer than any path a runtime can "
                         f"create (PATH_MAX {MAX_NAME + 1})")


def entry_from_header(block: bytes, header: bytes, records: dict[str, bytes], long_name: str | None,
                      long_link: str | None, start: int, at: int, errors: str = "surrogateescape") -> TarEntry:
    """The entry whose last header block is ``block`` (at byte ``at``; its first header block at ``start``).

    ``header`` is the raw bytes of all its header blocks, ``records`` the PAX records that apply to it (global
    ones already merged in), ``long_name`` / ``long_link`` the GNU ``L`` / ``K`` payloads if there were any;
    ``errors`` decodes bytes that are not UTF-8 (see the module docstring).
    """
    if records:
        refuse_sparse(records, at)
    flag = block[156]
    magic = block[257:263]
    name = nul_terminated(block[0:100], errors)
    if magic == b"ustar\x00" and block[345] != 0:  # POSIX prefix (GNU stores atime/ctime there)
        name = nul_terminated(block[345:500], errors) + "/" + name
    if long_name is not None:
        name = long_name
    if records.get("path"):
        name = records["path"].decode("utf-8", errors)
    link = nul_terminated(block[157:257], errors)
    if long_link is not None:
        link = long_link
    if records.get("linkpath"):
        link = records["linkpath"].decode("utf-8", errors)

    where = f"tar entry at byte {at}"
    if flag in _REG_FLAGS:
        kind = "dir" if flag == 0 and name.endswith("/") else "reg"
    elif flag in _KINDS:
        kind = _KINDS[flag]
    elif flag == ord("S"):
        raise LayerError(f"{where}: GNU sparse files are not supported")
    else:
        raise LayerError(f"{where}: unsupported tar entry type {chr(flag)!r} for {name!r}")
    clean = clean_name(name, where=where)
    if not clean and kind != "dir":
        raise LayerError(f"{where}: a {kind} entry has an empty name")

    size = header_number(block[124:136], "size", at)
    if "size" in records:
        size = _pax_int(records["size"], "size", at)
    if size < 0:
        raise LayerError(f"{where}: negative size {size}")
    if kind != "reg":
        size = 0  # header-only types carry no payload (Go's archive/tar and Python's tarfile agree)

    entry = TarEntry(
        header=header, name=clean, kind=kind, size=size, offset=start,
        mode=header_number(block[100:108], "mode", at) & 0o7777,
        uid=_pax_int(records["uid"], "uid", at) if "uid" in records else header_number(block[108:116], "uid", at),
        gid=_pax_int(records["gid"], "gid", at) if "gid" in records else header_number(block[116:124], "gid", at),
    )
    if "mtime" in records:
        entry.mtime, entry.mtime_ns = _pax_time(records["mtime"], at)
    else:
        entry.mtime = header_number(block[136:148], "mtime", at)
    if magic.startswith(b"ustar"):
        entry.uname = nul_terminated(block[265:297], errors)
        entry.gname = nul_terminated(block[297:329], errors)
        if kind in ("char", "block"):
            entry.devmajor = header_number(block[329:337], "devmajor", at)
            entry.devminor = header_number(block[337:345], "devminor", at)
    if "uname" in records:
        entry.uname = records["uname"].decode("utf-8", errors)
    if "gname" in records:
        entry.gname = records["gname"].decode("utf-8", errors)
    if kind in ("char", "block"):
        if "SCHILY.devmajor" in records:
            entry.devmajor = _pax_int(records["SCHILY.devmajor"], "devmajor", at)
        if "SCHILY.devminor" in records:
            entry.devminor = _pax_int(records["SCHILY.devminor"], "devminor", at)
    if entry.uid < 0 or entry.gid < 0 or entry.devmajor < 0 or entry.devminor < 0:
        raise LayerError(f"{where}: negative owner or device number for {name!r}")
    if kind == "hardlink":
        entry.linkname = clean_name(link, where=f"{where} (hard link target)")
        if not entry.linkname:
            raise LayerError(f"{where}: hard link {name!r} has an empty target")
    elif kind == "symlink":
        _check_length(link, "symlink target", where)
        entry.linkname = link  # a symlink target is data: dangling, absolute and ../ targets are all legal
    if records:
        entry.xattrs = {k[len(_XATTR_PREFIX):]: v for k, v in records.items()
                        if k.startswith(_XATTR_PREFIX) and len(k) > len(_XATTR_PREFIX)}
    return entry


def nul_terminated(field: bytes, errors: str = "surrogateescape") -> str:
    """A header string field (or a GNU long-name payload): the bytes up to the first NUL, as UTF-8."""
    return field.split(b"\x00", 1)[0].decode("utf-8", errors)


def verify_checksum(block: bytes, at: int) -> None:
    """Refuse a block whose checksum matches neither the unsigned nor the (historic) signed byte sum."""
    field = block[148:156].split(b"\x00", 1)[0].strip(b" ")
    if not _OCTAL.fullmatch(field):
        raise LayerError(f"not a tar stream: invalid header at byte {at}")
    want = int(field, 8)
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    if want == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    if want != signed:
        raise LayerError(f"not a tar stream: header checksum mismatch at byte {at}")


def header_number(field: bytes, what: str, at: int) -> int:
    """A numeric header field: octal text, or GNU base-256 for values octal cannot hold."""
    if field and field[0] & 0x80:  # GNU base-256: big-endian two's complement, marker bit set
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.strip(b" \x00").split(b"\x00", 1)[0]  # Go: Trim(" \x00"), then up to the first NUL
    if not digits:
        return 0
    if digits.isdigit():  # ASCII digits only, so no sign, "0o" or "_" reaches int()
        try:
            return int(digits, 8)
        except ValueError:
            pass
    raise LayerError(f"invalid tar: bad {what} field {field!r} at byte {at}")


def _pax_int(value: bytes, what: str, at: int) -> int:
    if not _PAX_INT.fullmatch(value) or len(value) > 24:
        raise LayerError(f"invalid tar: bad PAX {what} {value[:40]!r} at byte {at}")
    return int(value)


def _pax_time(value: bytes, at: int) -> tuple[int, int]:
    """(seconds, nanoseconds) of a PAX time: digits past the ninth are cut off (as Go's parsePAXTime does, on
    the magnitude), then seconds are the floor: ``-1.25`` is ``(-2, 750000000)``."""
    if not _PAX_TIME.fullmatch(value) or len(value) > 40:
        raise LayerError(f"invalid tar: bad PAX mtime {value[:40]!r} at byte {at}")
    negative = value.startswith(b"-")
    whole, _, fraction = value.lstrip(b"-").partition(b".")
    seconds, nanos = int(whole), int((fraction + b"000000000")[:9])
    if not negative:
        return seconds, nanos
    if nanos:
        return -seconds - 1, 1_000_000_000 - nanos
    return -seconds, 0


def pax_records(data: bytes, at: int, errors: str = "surrogateescape") -> dict[str, bytes]:
    """The ``length key=value\\n`` records of a PAX ``x`` / ``g`` payload; later keys win."""
    records: dict[str, bytes] = {}
    i, end = 0, len(data)
    while i < end:
        if data[i] == 0 and not data[i:].strip(b"\x00"):
            break  # NUL padding after the last record
        space = data.find(b" ", i, i + 24)
        digits = data[i:space] if space > i else b""
        if not digits.isdigit():
            raise LayerError(f"invalid tar: malformed PAX record at byte {at}")
        length = int(digits)
        if length <= len(digits) + 1 or i + length > end or data[i + length - 1] != 0x0A:
            raise LayerError(f"invalid tar: malformed PAX record at byte {at}")
        key, eq, value = data[space + 1:i + length - 1].partition(b"=")
        if not eq or not key:
            raise LayerError(f"invalid tar: malformed PAX record at byte {at}")
        records[key.decode("utf-8", errors)] = value
        i += length
    return records


def refuse_sparse(records: dict[str, bytes], at: int) -> None:
    """PAX sparse files (``GNU.sparse.*``) would need a map of holes no lazy-pulling format expresses."""
    if any(k.startswith("GNU.sparse.") for k in records):
        raise LayerError(f"tar entry at byte {at}: sparse files are not supported")
