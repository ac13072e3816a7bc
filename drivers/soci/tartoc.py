"""The ztoc's TOC: one entry per tar header, as Go's ``archive/tar`` reader yields them to upstream's builder.

Upstream builds the TOC with Go's tar reader (soci-snapshotter ztoc/toc_builder.go:119-161), so the fields are
Go's: the raw header name (a directory keeps its ``/``), PAX records applied and then GNU long names over
them, ``\\0`` regular files turned into ``dir`` when the name ends in ``/``, the data offset right after the
last header block, the size field as written (also for header-only types, whose data is not skipped), mtimes
at PAX nanosecond precision, and *all* the entry's PAX records. Python's ``tarfile`` normalises several of
these, hence this small reader of our own. It reads a stream forward, once; nothing is held but one header.
"""
from __future__ import annotations

import dataclasses
import datetime
from zlib import adler32
from typing import BinaryIO, Iterator

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
MAX_SPECIAL = 1 << 20  # Go's maxSpecialFileSize: PAX and GNU long-name payloads
_TYPES = {b"1": "hardlink", b"2": "symlink", b"5": "dir", b"0": "reg", b"3": "char", b"4": "block", b"6": "fifo"}
_HIGH = bytes(range(128, 256))
_HEADER_ONLY = {b"1", b"2", b"3", b"4", b"5", b"6"}  # Go's isHeaderOnlyType: no data follows


class TarTocError(ValueError):
    """The stream is not a tar archive upstream's builder accepts."""


@dataclasses.dataclass(slots=True)
class TocEntry:
    name: str
    type: str
    offset: int  # of the data in the tar stream
    size: int
    linkname: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime_s: int = 0
    mtime_ns: int = 0
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def mod_time(self) -> str:
        return rfc3339_nano(self.mtime_s, self.mtime_ns)


def rfc3339_nano(sec: int, nsec: int) -> str:
    """Go's ``time.Time.MarshalText`` in UTC; "" where Go refuses (years outside 0..9999)."""
    days, rem = divmod(sec, 86400)
    try:
        day = datetime.date.fromordinal(datetime.date(1970, 1, 1).toordinal() + days)
    except (ValueError, OverflowError):
        return ""
    frac = f".{nsec:09d}".rstrip("0") if nsec else ""
    return (f"{day.year:04d}-{day.month:02d}-{day.day:02d}T{rem // 3600:02d}:{rem // 60 % 60:02d}:"
            f"{rem % 60:02d}{frac}Z")


def _string(b: bytes) -> str:
    i = b.find(b"\0")
    return (b if i < 0 else b[:i]).decode("utf-8", "surrogateescape")


def _numeric(b: bytes) -> int:
    if b and b[0] & 0x80:  # base-256 (GNU), as Go's parseNumeric
        inv = 0xFF if b[0] & 0x40 else 0
        x = 0
        for i, c in enumerate(b):
            c ^= inv
            if i == 0:
                c &= 0x7F
            if x >> 56:
                raise TarTocError("tar header: numeric field overflows")
            x = x << 8 | c
        if x >> 63:
            raise TarTocError("tar header: numeric field overflows")
        return ~x if inv else x
    s = b.strip(b" \0")
    if not s:
        return 0
    if b"\0" in s:
        s = s[:s.index(b"\0")]
    try:
        return int(s, 8)
    except ValueError:
        raise TarTocError(f"tar header: bad octal field {s[:20]!r}") from None


def _checksum_ok(blk: bytes) -> bool:
    try:
        want = _numeric(blk[148:156])
    except TarTocError:
        return False
    # the unsigned sum of the block with the checksum field as 8 spaces; ``sum(blk)`` is 3-4 µs a block in
    # Python, zlib's C adler32 gives it in ~0.2: its low half is 1 + the byte sum mod 65521, and the sum of
    # 256 bytes (at most 65280) never wraps
    unsigned = (adler32(blk[:256]) & 0xFFFF) + (adler32(blk[256:]) & 0xFFFF) - 2 - sum(blk[148:156]) + 256
    if want == unsigned:
        return True
    body = blk[:148] + b" " * 8 + blk[156:]
    high = len(body) - len(body.translate(None, _HIGH))  # bytes >= 0x80 count 256 less when signed
    return want == unsigned - 256 * high


def _pax_time(v: str) -> tuple[int, int]:
    ss, _, sn = v.partition(".")
    try:
        secs = int(ss, 10)
    except ValueError:
        raise TarTocError(f"tar PAX time {v!r} is not a number") from None
    if sn and not sn.isdigit():
        raise TarTocError(f"tar PAX time {v!r} is not a number")
    ns = int((sn + "000000000")[:9]) if sn else 0
    if ss.startswith("-") and ns:  # Go: time.Unix(secs, -nsecs)
        secs, ns = secs - 1, 1_000_000_000 - ns
    return secs, ns


def _pax_records(buf: bytes) -> dict[str, str]:
    """Go's parsePAX: ``"%d %s=%s\\n"`` records, the length counting the whole record; a later key wins."""
    out: dict[str, str] = {}
    while buf:
        n_str, sp, _ = buf.partition(b" ")
        if not sp or not n_str.isdigit() or not 5 <= int(n_str) <= len(buf):
            raise TarTocError("tar PAX header: malformed record")
        n = int(n_str)
        rec, buf = buf[len(n_str) + 1:n], buf[n:]
        if not rec.endswith(b"\n") or b"=" not in rec:
            raise TarTocError("tar PAX header: malformed record")
        k, _, v = rec[:-1].partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
    return out


class TarToc:
    """Reads a tar stream's headers; ``entries()`` yields them, then ``size`` is the end-of-archive offset."""

    def __init__(self, stream: BinaryIO):
        self._r, self.pos, self.size = stream, 0, 0
        # a stream that can pass over bytes without handing them out (the gzip indexer) skips file contents
        self._skip_fn = getattr(stream, "skip", None)

    def _read(self, n: int) -> bytes:
        data = self._r.read(n)
        if len(data) == n or not data:
            self.pos += len(data)
            return data
        parts, want = [data], n - len(data)
        while want:
            b = self._r.read(want)
            if not b:
                break
            parts.append(b)
            want -= len(b)
        data = b"".join(parts)
        self.pos += len(data)
        return data

    def _skip(self, n: int) -> None:
        if self._skip_fn is not None and n > 0:
            done = self._skip_fn(n)
            self.pos += done
            if done < n:
                raise TarTocError(f"tar stream truncated at byte {self.pos} inside an entry's data")
            return
        while n > 0:
            b = self._read(min(n, 1 << 20))
            if not b:
                raise TarTocError(f"tar stream truncated at byte {self.pos} inside an entry's data")
            n -= len(b)

    def _payload(self, size: int, what: str) -> bytes:
        if size < 0 or size > MAX_SPECIAL:
            raise TarTocError(f"tar {what} of {size} bytes is too large")
        data = self._read(size)
        if len(data) != size:
            raise TarTocError(f"tar stream truncated in a {what}")
        self._skip(-size % BLOCK)
        return data

    def entries(self) -> Iterator[TocEntry]:
        pax: dict[str, str] = {}
        long_name = long_link = ""
        while True:
            blk = self._read(BLOCK)
            if not blk:
                self.size = self.pos
                return
            if len(blk) < BLOCK:
                raise TarTocError(f"tar stream truncated at byte {self.pos} inside a header")
            if blk == _ZERO_BLOCK:
                second = self._read(BLOCK)
                if second and second != _ZERO_BLOCK:
                    raise TarTocError(f"tar stream: a zero block at byte {self.pos - 2 * BLOCK} is followed by "
                                      "data")
                self.size = self.pos
                return
            if not _checksum_ok(blk):
                raise TarTocError(f"not a tar stream: bad header checksum at byte {self.pos - BLOCK}")
            magic, version = blk[257:263], blk[263:265]
            star = magic == b"ustar\0" and blk[508:512] == b"tar\0"
            ustar = magic == b"ustar\0"
            gnu = magic == b"ustar " and version == b" \0"
            flag = blk[156:157]
            size = _numeric(blk[124:136])
            if flag in (b"x", b"g"):
                recs = _pax_records(self._payload(size, "PAX header"))
                if flag == b"x":
                    pax = recs
                    continue
                raise TarTocError("tar stream has a PAX global header (type 'g'), which SOCI's ztoc cannot "
                                  "describe (upstream refuses it too)")
            if flag in (b"L", b"K"):
                value = _string(self._payload(size, "GNU long name"))
                if flag == b"L":
                    long_name = value
                else:
                    long_link = value
                continue
            e = TocEntry(name=_string(blk[0:100]), type="", offset=0, size=size, linkname=_string(blk[157:257]),
                         mode=_numeric(blk[100:108]), uid=_numeric(blk[108:116]), gid=_numeric(blk[116:124]),
                         mtime_s=_numeric(blk[136:148]))
            if ustar or gnu:
                e.uname, e.gname = _string(blk[265:297]), _string(blk[297:329])
                e.devmajor, e.devminor = _numeric(blk[329:337]), _numeric(blk[337:345])
                prefix = _string(blk[345:476] if star else blk[345:500]) if (ustar or star) else ""
                if prefix:
                    e.name = prefix + "/" + e.name
            for k, v in pax.items():
                if v == "":
                    continue  # Go keeps the header's own value
                if k == "path":
                    e.name = v
                elif k == "linkpath":
                    e.linkname = v
                elif k == "uname":
                    e.uname = v
                elif k == "gname":
                    e.gname = v
                elif k in ("uid", "gid", "size"):
                    try:
                        setattr(e, k, int(v, 10))
                    except ValueError:
                        raise TarTocError(f"tar PAX {k}={v!r} is not a number") from None
                elif k == "mtime":
                    e.mtime_s, e.mtime_ns = _pax_time(v)
            e.pax = pax
            if long_name:
                e.name = long_name
            if long_link:
                e.linkname = long_link
            pax, long_name, long_link = {}, "", ""
            if flag == b"\0":
                flag = b"5" if e.name.endswith("/") else b"0"
            kind = _TYPES.get(flag)
            if kind is None:
                raise TarTocError(f"tar entry {e.name!r} has type {flag!r}, which SOCI's ztoc cannot describe "
                                  "(upstream refuses it too)")
            e.type = kind
            e.offset = self.pos
            if e.size < 0:
                raise TarTocError(f"tar entry {e.name!r} has a negative size")
            yield e
            data = 0 if flag in _HEADER_ONLY else e.size
            self._skip(data + (-data % BLOCK))
