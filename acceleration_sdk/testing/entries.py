"""What a layer holds, as the conformance suite compares it: :class:`LayerEntry`, read back from a tar or a reader.

A driver's reader (see :mod:`acceleration_sdk.testing.suite`) yields :class:`LayerEntry` values for its own
output; :func:`tar_entries` yields them for any tar stream (the source, and the plain tar view of an output);
:func:`compare` lists every difference between two such views, honouring the driver's :class:`Allowances`.
Entries carry their file bytes: the suite's layers are small (a few hundred KiB), never real images. For real
images (``accelctl check``) readers stream instead: ``keep_data=False`` fills ``digest`` (sha256 of the bytes,
hashed piece by piece) and leaves ``data`` empty, and :func:`compare` compares digests then.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import tarfile
from typing import BinaryIO, Iterable, Iterator, Mapping

KINDS = ("reg", "dir", "symlink", "hardlink", "char", "block", "fifo")
_TAR_KINDS = {tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.CONTTYPE: "reg", tarfile.DIRTYPE: "dir",
              tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char",
              tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}
XATTR_PREFIX = "SCHILY.xattr."
# Fields compared for every entry; an Allowances.dropped name must be one of these.
FIELDS = ("kind", "mode", "uid", "gid", "uname", "gname", "size", "mtime", "linkname", "devmajor", "devminor",
          "xattrs", "data")


def clean_name(name: str) -> str:
    """``./a//b/`` and ``/a/b`` -> ``a/b``: the one name form views are compared in (the root is ``""``)."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


@dataclasses.dataclass(frozen=True, slots=True)
class LayerEntry:
    """One entry of a layer. ``name`` is cleaned (:func:`clean_name`); ``kind`` is one of :data:`KINDS`.

    ``linkname``: a symlink's target verbatim, a hard link's target name cleaned. ``mode`` holds permission
    bits (``& 0o7777``). ``data`` is a regular file's bytes (empty for every other kind and for hard links).
    Whiteouts are OCI ones: a regular file ``.wh.NAME`` and ``DIR/.wh..wh..opq``.
    """

    name: str
    kind: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    size: int = 0
    mtime: float = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    data: bytes = b""
    digest: str = ""  # "sha256:..." of the file bytes when the reader streamed them instead of keeping ``data``


@dataclasses.dataclass(frozen=True)
class Allowances:
    """What a driver's format legitimately does not keep. The default keeps everything, exactly.

    - ``dropped``: fields (of :data:`FIELDS`) the reader cannot report, e.g. ``{"uname", "gname"}``.
    - ``mtime_precision``: seconds the stored mtime is rounded to (``1.0``: whole seconds, so a source
      mtime of ``.75`` may read back as the next second); ``0``: exact.
    - ``mtime_truncated``: the format cuts the mtime down to ``mtime_precision`` instead of rounding it
      (nydus keeps whole seconds, ``i_mtime_nsec`` 0): ``.75`` must read back as the same second, exactly.
    - ``internal_names``: names the format adds for itself (an eStargz TOC, landmarks), ignored in both views.
    - ``implicit_dirs``: the reader may show directories the source never listed (filesystem formats).
    - ``keeps_order``: the reader yields entries in source order (tar-like formats); ``False`` for formats that
      store a tree.
    - ``tar_view``: the output decompresses to a tar that must match the source too (``False`` when the
      output is not a tar at all).
    - ``diff_id``: what the returned diff_id must hash: ``"decompressed"`` (the output with its gzip/zstd
      compression, sniffed, taken off) or ``"blob"`` (the stored blob as it is: a format whose layer blob is
      not a compressed stream, e.g. a nydus blob).
    """

    dropped: frozenset[str] = frozenset()
    mtime_precision: float = 0.0
    mtime_truncated: bool = False
    internal_names: frozenset[str] = frozenset()
    implicit_dirs: bool = False
    keeps_order: bool = True
    tar_view: bool = True
    diff_id: str = "decompressed"

    def __post_init__(self):
        if self.diff_id not in ("decompressed", "blob"):
            raise ValueError(f"Allowances.diff_id: expected 'decompressed' or 'blob', got {self.diff_id!r}")
        if self.mtime_truncated and self.mtime_precision <= 0:
            raise ValueError("Allowances.mtime_truncated needs an mtime_precision to truncate to")
        unknown = set(self.dropped) - set(FIELDS)
        if unknown:
            raise ValueError(f"Allowances.dropped: unknown fields {sorted(unknown)} (known: {', '.join(FIELDS)})")


class Sha256:
    """Hashes file bytes piece by piece (a streaming reader's ``LayerEntry.digest``)."""

    def __init__(self) -> None:
        self._h, self.size = hashlib.sha256(), 0

    def update(self, data: bytes) -> None:
        self._h.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


READ_SIZE = 1 << 20  # bytes of a file read at a time when streaming


def tar_entries(stream: BinaryIO, keep_data: bool = True) -> Iterator[LayerEntry]:
    """The entries of an uncompressed tar ``stream``, read in one pass with the stdlib ``tarfile``.

    ``keep_data=False``: file bytes are hashed into ``digest`` as they stream past, never held.
    """
    with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape") as tf:
        for info in tf:
            kind = _TAR_KINDS.get(info.type)
            if kind is None:
                raise ValueError(f"tar entry {info.name!r} has a type the suite does not know: {info.type!r}")
            data, digest, size = b"", "", info.size if kind == "reg" else 0
            if kind == "reg" and keep_data:
                data = tf.extractfile(info).read()
                size = len(data)
            elif kind == "reg":
                h, member = Sha256(), tf.extractfile(info)
                while piece := member.read(READ_SIZE):
                    h.update(piece)
                digest, size = h.digest, h.size
            xattrs = {k[len(XATTR_PREFIX):]: v.encode("utf-8", "surrogateescape")
                      for k, v in info.pax_headers.items() if k.startswith(XATTR_PREFIX)}
            device = kind in ("char", "block")
            yield LayerEntry(
                name=clean_name(info.name), kind=kind, mode=info.mode & 0o7777, uid=info.uid, gid=info.gid,
                uname=info.uname, gname=info.gname, size=size, mtime=info.mtime,
                linkname=clean_name(info.linkname) if kind == "hardlink" else info.linkname,
                devmajor=info.devmajor if device else 0, devminor=info.devminor if device else 0,
                xattrs=xattrs, data=data, digest=digest)


def _first_difference(a: bytes, b: bytes) -> int:
    """The first offset where ``a`` and ``b`` differ (the shorter length when one is a prefix of the other)."""
    for i in range(0, min(len(a), len(b)), 4096):
        x, y = a[i:i + 4096], b[i:i + 4096]
        if x != y:
            return i + next((j for j, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    return min(len(a), len(b))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16] + "..."


def _full_digest(entry: LayerEntry) -> str:
    if entry.digest:
        return entry.digest
    return "sha256:" + hashlib.sha256(entry.data).hexdigest()


def _field_problems(want: LayerEntry, got: LayerEntry, allow: Allowances) -> list[str]:
    out: list[str] = []
    name = want.name
    for field in FIELDS:
        if field in allow.dropped or field in ("xattrs", "data", "mtime"):
            continue
        a, b = getattr(want, field), getattr(got, field)
        if a != b:
            shown = (oct(a), oct(b)) if field == "mode" else (repr(a), repr(b))
            out.append(f"{name!r}: {field} differs: source {shown[0]}, output {shown[1]}")
    if allow.mtime_truncated:
        p = allow.mtime_precision
        if "mtime" not in allow.dropped and abs(math.floor(want.mtime / p) * p - got.mtime) > 1e-6:
            out.append(f"{name!r}: mtime differs: source {want.mtime!r}, output {got.mtime!r}"
                       f" (allowed: truncated to {p} s)")
    elif "mtime" not in allow.dropped and abs(want.mtime - got.mtime) > allow.mtime_precision / 2 + 1e-6:
        out.append(f"{name!r}: mtime differs: source {want.mtime!r}, output {got.mtime!r}"
                   f" (allowed precision {allow.mtime_precision or 'exact'})")
    if "xattrs" not in allow.dropped and dict(want.xattrs) != dict(got.xattrs):
        for key in sorted(set(want.xattrs) | set(got.xattrs)):
            if key not in got.xattrs:
                out.append(f"{name!r}: xattr {key!r} missing in the output")
            elif key not in want.xattrs:
                out.append(f"{name!r}: xattr {key!r} not in the source")
            elif want.xattrs[key] != got.xattrs[key]:
                out.append(f"{name!r}: xattr {key!r} differs: source {want.xattrs[key]!r}, "
                           f"output {got.xattrs[key]!r}")
    if "data" not in allow.dropped and (want.digest or got.digest):
        a, b = _full_digest(want), _full_digest(got)
        if a != b:
            out.append(f"{name!r}: file bytes differ (source {want.size} bytes {a}, output {got.size} bytes {b})")
    elif "data" not in allow.dropped and want.data != got.data:
        at = _first_difference(want.data, got.data)
        out.append(f"{name!r}: file bytes differ from byte {at} (source {len(want.data)} bytes "
                   f"{_digest(want.data)}, output {len(got.data)} bytes {_digest(got.data)})")
    return out


def _last_by_name(entries: Iterable[LayerEntry], internal: frozenset[str]) -> tuple[dict[str, LayerEntry], list[str]]:
    """name -> entry (a later entry of a name replaces an earlier one, as in a tar) and the order of first sight."""
    by_name: dict[str, LayerEntry] = {}
    order: list[str] = []
    for entry in entries:
        if entry.name in internal:
            continue
        if entry.name not in by_name:
            order.append(entry.name)
        by_name[entry.name] = entry
    return by_name, order


def compare(source: Iterable[LayerEntry], output: Iterable[LayerEntry], allow: Allowances) -> list[str]:
    """Every difference between the ``source`` view and an ``output`` view, as readable sentences."""
    want, want_order = _last_by_name(source, frozenset())
    got, got_order = _last_by_name(output, allow.internal_names)
    problems: list[str] = []
    for name in want_order:
        if name not in got:
            problems.append(f"{name!r} ({want[name].kind}) is missing in the output")
        else:
            problems += _field_problems(want[name], got[name], allow)
    for name in got_order:
        if name not in want and not (allow.implicit_dirs and got[name].kind == "dir"):
            problems.append(f"{name!r} ({got[name].kind}) is in the output but not in the source")
    if allow.keeps_order:
        shared = [n for n in got_order if n in want]
        expected = [n for n in want_order if n in got]
        for a, b in zip(expected, shared):
            if a != b:
                problems.append(f"entry order differs: the source has {a!r} where the output has {b!r}")
                break
    return problems
