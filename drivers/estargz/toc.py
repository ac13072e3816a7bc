"""The eStargz table of contents (``stargz.index.json``), built entry by entry while the layer streams.

Field names, order and omission rules follow stargz-snapshotter's ``estargz.TOCEntry`` (``types.go``):
``name`` and ``type`` always, everything else ``omitempty``; xattr values are base64 (Go's ``[]byte``);
``offset`` is the compressed offset of the member holding the entry's payload, known only once the member
has been compressed, so each entry is kept as a JSON fragment plus a member index and finished in
:meth:`TocBuilder.render`. Memory grows with the number of entries (like Go's writer), never with file sizes.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import time

from acceleration_sdk.errors import LayerError

from .tarstream import TarEntry

TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"  # estargz landmarkContents
# Input entries the writer drops: a layer converted twice must not carry two TOCs or stale landmarks
# (Go's Writer skips TOCTarName, Build skips both landmarks).
RESERVED_NAMES = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
NO_OFFSET = -1


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
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


def _dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class TocBuilder:
    """Collects TOC entries in output order; duplicate names replace earlier ones (tar semantics: last wins)."""

    def __init__(self, chunk_size: int) -> None:
        self._chunk_size = chunk_size
        self._items: list[tuple[int, str] | None] = []
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
        doc: dict = {"name": entry.name or "./", "type": entry.kind}
        if entry.kind == "reg" and entry.size:
            doc["size"] = entry.size
        modtime = format_modtime(entry.mtime)
        if modtime:
            doc["modtime"] = modtime
        if linkname or entry.linkname:
            doc["linkName"] = linkname or entry.linkname
        for key, value in (("mode", entry.mode), ("uid", entry.uid), ("gid", entry.gid),
                           ("userName", entry.uname), ("groupName", entry.gname),
                           ("devMajor", entry.devmajor), ("devMinor", entry.devminor)):
            if value:
                doc[key] = value
        if entry.xattrs:
            doc["xattrs"] = {k: base64.b64encode(v).decode() for k, v in sorted(entry.xattrs.items())}
        if digest:
            doc["digest"] = digest
        if chunks:
            _chunk_fields(doc, chunks[0], self._chunk_size)
            self._items.append((chunks[0].member, _dumps(doc)[:-1]))
            for chunk in chunks[1:]:
                sub = {"name": entry.name, "type": "chunk"}
                _chunk_fields(sub, chunk, self._chunk_size)
                self._items.append((chunk.member, _dumps(sub)[:-1]))
        else:
            self._items.append((NO_OFFSET, _dumps(doc)[:-1]))
        target = linkname if entry.kind == "hardlink" else entry.name
        self._names[entry.name] = _Name(entry.kind, target, first, len(self._items) - first)

    def render(self, member_offsets: list[int]) -> bytes:
        """The TOC JSON, with each payload entry's ``offset`` resolved from its member's compressed offset."""
        parts = []
        for item in self._items:
            if item is None:
                continue
            member, fragment = item
            if member == NO_OFFSET:
                parts.append(fragment + "}")
            else:
                parts.append(f'{fragment},"offset":{member_offsets[member]}}}')
        return ('{"version":1,"entries":[' + ",".join(parts) + "]}").encode()


def _chunk_fields(doc: dict, chunk: Chunk, chunk_size: int) -> None:
    # Like Go's Writer: chunkSize is written for every full chunk and omitted for a short last one
    # (a zero chunkSize means "to the end of the file").
    if chunk.offset:
        doc["chunkOffset"] = chunk.offset
    if chunk.size == chunk_size:
        doc["chunkSize"] = chunk.size
    doc["chunkDigest"] = chunk.digest
