"""The eStargz table of contents (``stargz.index.json``), built entry by entry while the layer streams.

Field names, order and omission rules follow stargz-snapshotter's ``estargz.TOCEntry`` (``types.go``):
``name`` and ``type`` always, everything else ``omitempty``; xattr values are base64 (Go's ``[]byte``);
``offset`` is the compressed offset of the member holding the entry's payload, known only once the member
has been compressed, so each entry is kept as a JSON fragment plus a member index and finished in
:meth:`TocBuilder.render`. Memory grows with the number of entries (like Go's writer), never with file sizes.
"""
from __future__ import annotations

import base64
import functools
import json
import time
from typing import Iterator, NamedTuple

from acceleration_sdk.errors import LayerError
from acceleration_sdk.tar import TarEntry

TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"  # estargz landmarkContents
# Input entries the writer drops: a layer converted twice must not carry two TOCs or stale landmarks
# (Go's Writer skips TOCTarName, Build skips both landmarks).
RESERVED_NAMES = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
NO_OFFSET = -1


class Chunk(NamedTuple):  # a NamedTuple: one is made per file, and it is 3x cheaper than a frozen dataclass
    """One chunk of a regular file: the member it starts, its place in the file and its sha256 digest."""

    member: int
    offset: int
    size: int
    digest: str


class _Name:
    """What the TOC knows about one name: for hard-link checks and for replacing duplicates."""

    __slots__ = ("kind", "target", "first", "count", "linked")

    def __init__(self, kind: str, target: str, first: int, count: int):
        self.kind, self.target, self.first, self.count, self.linked = kind, target, first, count, False


def go_seconds(seconds: int, nanos: int) -> int:
    """The whole second the Go writer records for ``seconds`` + ``nanos`` (floor form, as :class:`TarEntry`
    keeps it): 0 when the floor is 0 (``formatModtime`` treats ``Unix() == 0`` as no time), else rounded to the
    nearest second with halves away from zero."""
    if not nanos or not seconds:
        return seconds
    if seconds > 0:
        return seconds + (nanos >= 500_000_000)
    return seconds + (nanos > 500_000_000)   # -1.5 is (-2, 5e8) and goes to -2; -1.4 is (-2, 6e8) and goes to -1


@functools.lru_cache(maxsize=4096)  # layers repeat a few mtimes many times
def format_modtime(seconds: int) -> str:
    """RFC 3339 UTC like Go's ``formatModtime``; empty for the epoch and for times JSON readers cannot parse."""
    if seconds == 0:
        return ""
    try:
        t = time.gmtime(seconds)
    except (OverflowError, OSError, ValueError):
        return ""
    if not 1 <= t.tm_year <= 9999:
        return ""
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}Z"


_encode_str = json.encoder.encode_basestring  # the C escaper json.dumps uses (ensure_ascii=False)
RENDER_PIECE = 1 << 20  # bytes per piece handed to the compressor while the TOC streams out


class TocBuilder:
    """Collects TOC entries in output order; duplicate names replace earlier ones (tar semantics: last wins).

    Each entry is kept as UTF-8 JSON without its closing brace (and without ``offset``), plus the index of
    the member that holds its payload; :meth:`render` streams the finished JSON in pieces.
    """

    def __init__(self, chunk_size: int) -> None:
        self._chunk_size = chunk_size
        self._items: list[tuple[int, bytes] | None] = []
        self._names: dict[str, _Name] = {}

    def resolve_hardlink(self, entry: TarEntry) -> str:
        """The final (non-hard-link) target of a hard link; refuses dangling links, links to dirs and cycles.

        The reference reader recurses through ``linkName`` without a cycle check and resolves it among TOC
        names, so the TOC carries the final target's normalised name.
        """
        info = self._names.get(entry.linkname)
        if info is None:
            raise LayerError(f"hard link {entry.name!r} points at {entry.linkname!r}, which is not earlier in the layer")
        if info.kind == "dir":
            raise LayerError(f"hard link {entry.name!r} points at directory {entry.linkname!r}")
        target = info.target if info.kind == "hardlink" else entry.linkname
        if target == entry.name:
            raise LayerError(f"hard link {entry.name!r} forms a cycle")
        return target

    def add(self, entry: TarEntry, chunks: list[Chunk] = (), digest: str = "", linkname: str = "") -> None:
        """Add an entry (and, for a non-empty regular file, its chunks and whole-file digest)."""
        old = self._names.get(entry.name)
        if old is not None:
            if old.linked and entry.kind == "dir":
                raise LayerError(f"{entry.name!r} is hard-linked and later replaced by a directory")
            for i in range(old.first, old.first + old.count):
                self._items[i] = None
        if entry.kind == "hardlink":
            self._names[linkname].linked = True
        first = len(self._items)
        name = _encode_str(entry.name)
        # Field order and omitempty rules of Go's TOCEntry (types.go).
        out = ['{"name":', _encode_str(entry.name or "./"), ',"type":"', entry.kind, '"']
        if entry.kind == "reg" and entry.size:
            out.append(',"size":%d' % entry.size)
        modtime = format_modtime(go_seconds(entry.mtime, entry.mtime_ns))
        if modtime:
            out.append(',"modtime":"%s"' % modtime)
        link = linkname or entry.linkname
        if link:
            out += (',"linkName":', _encode_str(link))
        if entry.mode:
            out.append(',"mode":%d' % entry.mode)
        if entry.uid:
            out.append(',"uid":%d' % entry.uid)
        if entry.gid:
            out.append(',"gid":%d' % entry.gid)
        if entry.uname:
            out += (',"userName":', _encode_str(entry.uname))
        if entry.gname:
            out += (',"groupName":', _encode_str(entry.gname))
        if entry.devmajor:
            out.append(',"devMajor":%d' % entry.devmajor)
        if entry.devminor:
            out.append(',"devMinor":%d' % entry.devminor)
        if entry.xattrs:
            out += (',"xattrs":{', ",".join(f"{_encode_str(k)}:\"{base64.b64encode(v).decode()}\""
                                            for k, v in sorted(entry.xattrs.items())), "}")
        if digest:
            out.append(',"digest":"%s"' % digest)
        if chunks:
            self._items.append((chunks[0].member, self._chunk_fields(out, chunks[0])))
            for chunk in chunks[1:]:
                sub = ['{"name":', name, ',"type":"chunk"']
                self._items.append((chunk.member, self._chunk_fields(sub, chunk)))
        else:
            self._items.append((NO_OFFSET, "".join(out).encode()))
        target = linkname if entry.kind == "hardlink" else entry.name
        self._names[entry.name] = _Name(entry.kind, target, first, len(self._items) - first)

    def _chunk_fields(self, out: list[str], chunk: Chunk) -> bytes:
        # Like Go's Writer: chunkSize is written for every full chunk and omitted for a short last one
        # (a zero chunkSize means "to the end of the file").
        if chunk.offset:
            out.append(',"chunkOffset":%d' % chunk.offset)
        if chunk.size == self._chunk_size:
            out.append(',"chunkSize":%d' % chunk.size)
        out.append(',"chunkDigest":"%s"' % chunk.digest)
        return "".join(out).encode()

    def render(self, member_offsets: list[int]) -> Iterator[bytes]:
        """The TOC JSON in pieces, each payload entry's ``offset`` resolved from its member's compressed offset."""
        pieces, size = [b'{"version":1,"entries":['], 0
        sep = b""
        for item in self._items:
            if item is None:
                continue
            member, fragment = item
            piece = sep + fragment + (b"}" if member == NO_OFFSET else b',"offset":%d}' % member_offsets[member])
            sep = b","
            pieces.append(piece)
            size += len(piece)
            if size >= RENDER_PIECE:
                yield b"".join(pieces)
                pieces, size = [], 0
        pieces.append(b"]}")
        yield b"".join(pieces)

    def rendered_size(self, member_offsets: list[int]) -> int:
        """len() of the rendered JSON, without building it (a tar header needs the size first)."""
        size = len(b'{"version":1,"entries":[') + len(b"]}")
        count = 0
        for item in self._items:
            if item is None:
                continue
            member, fragment = item
            count += 1
            size += len(fragment) + 1
            if member != NO_OFFSET:
                size += len(',"offset":') + len(str(member_offsets[member]))
        return size + max(count - 1, 0)
