"""One tar header: what its blocks mean, and the rules every entry name follows.

:func:`entry_from_header` turns a header block (plus the PAX records and GNU long names that came before it)
into a :class:`TarEntry`, normalised the way the reference eStargz reader normalises it; the field decoders
beside it read the octal / base-256 numbers, NUL-terminated strings and PAX records Go's archive/tar accepts.
:mod:`drivers.estargz.tarstream` reads those blocks off a stream; :func:`ustar_header` writes the few headers
the eStargz writer adds. Hostile input raises :class:`acceleration_sdk.errors.LayerError` naming the byte offset.
"""
from __future__ import annotations

import dataclasses
import decimal
import re

from acceleration_sdk.errors import LayerError

BLOCK = 512
# 4095 bytes: Linux PATH_MAX (4096) less its NUL. No runtime can create a longer path or symlink target, and
# without a cap a `tar c` of a 10,000-deep tree (~2 MB gzipped) makes a TOC of ever-longer names: 100 MB.
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
    """One tar entry: its raw header bytes plus the attributes the TOC needs.

    ``kind`` is the TOC type (reg, dir, symlink, hardlink, char, block, fifo) or ``"global"`` for a PAX
    global header (no TOC entry; its bytes are passed through). ``name`` is normalised (no ``./``, no
    leading or trailing ``/``; ``""`` is the root). ``linkname`` is normalised for hard links and verbatim
    for symlinks. ``mtime`` is whole seconds, rounded half-up like Go's ``time.Round(time.Second)``.
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
    """Normalise an entry name like the reference reader (``path.Clean("/"+name)`` minus the slash).

    Unlike the reader we refuse ``..`` components: a name that needs them is hostile, not sloppy.
    """
    if "\x00" in raw:
        raise LayerError(f"{where}: name {_shown(raw)} contains a NUL byte")
    parts = [p for p in raw.split("/") if p and p != "."]
    if ".." in parts:
        raise LayerError(f"{where}: name {_shown(raw)} escapes the layer root")
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


def entry_from_header(block: bytes, header: bytes, records: dict[str, bytes], long_name: str | None,
                      long_link: str | None, start: int, at: int) -> TarEntry:
    """The entry whose last header block is ``block`` (at byte ``at``; its first header block at ``start``).

    ``header`` is the raw bytes of all its header blocks, ``records`` the PAX records that apply to it (global
    ones already merged in), ``long_name`` / ``long_link`` the GNU ``L`` / ``K`` payloads if there were any.
    """
    if records:
        refuse_sparse(records, at)
    flag = block[156]
    magic = block[257:263]
    name = nul_terminated(block[0:100])
    if magic == b"ustar\x00" and block[345] != 0:  # POSIX prefix (GNU stores atime/ctime there)
        name = nul_terminated(block[345:500]) + "/" + name
    if long_name is not None:
        name = long_name
    if records.get("path"):
        name = records["path"].decode("utf-8", "replace")
    link = nul_terminated(block[157:257])
    if long_link is not None:
        link = long_link
    if records.get("linkpath"):
        link = records["linkpath"].decode("utf-8", "replace")

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
        mtime=_pax_time(records["mtime"], at) if "mtime" in records else header_number(block[136:148], "mtime", at),
    )
    if magic.startswith(b"ustar"):
        entry.uname = nul_terminated(block[265:297])
        entry.gname = nul_terminated(block[297:329])
        if kind in ("char", "block"):
            entry.devmajor = header_number(block[329:337], "devmajor", at)
            entry.devminor = header_number(block[337:345], "devminor", at)
    if "uname" in records:
        entry.uname = records["uname"].decode("utf-8", "replace")
    if "gname" in records:
        entry.gname = records["gname"].decode("utf-8", "replace")
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


def nul_terminated(field: bytes) -> str:
    """A header string field (or a GNU long-name payload): the bytes up to the first NUL, as UTF-8."""
    return field.split(b"\x00", 1)[0].decode("utf-8", "replace")


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


def _pax_time(value: bytes, at: int) -> int:
    if not _PAX_TIME.fullmatch(value) or len(value) > 40:
        raise LayerError(f"invalid tar: bad PAX mtime {value[:40]!r} at byte {at}")
    exact = decimal.Decimal(value.decode())
    # Go's formatModtime treats Unix()==0 (the floor) as "no time"; keep that, else round half-up.
    if exact.to_integral_value(rounding=decimal.ROUND_FLOOR) == 0:
        return 0
    return int(exact.to_integral_value(rounding=decimal.ROUND_HALF_UP))


def pax_records(data: bytes, at: int) -> dict[str, bytes]:
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
        records[key.decode("utf-8", "replace")] = value
        i += length
    return records


def refuse_sparse(records: dict[str, bytes], at: int) -> None:
    """PAX sparse files (``GNU.sparse.*``) would need a map of holes the TOC cannot express."""
    if any(k.startswith("GNU.sparse.") for k in records):
        raise LayerError(f"tar entry at byte {at}: sparse files are not supported")
