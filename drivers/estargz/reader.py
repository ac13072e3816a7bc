"""Read an eStargz or zstd:chunked layer back through its TOC: the driver's reader for the conformance suite.

    for entry in read_layer(blob, descriptor): ...   # acceleration_sdk.testing.LayerEntry values, TOC order

Unlike an untar, this reads the way a lazy-pulling snapshotter does: footer -> TOC (``stargz.index.json``)
-> for each regular file, each chunk's own member at the TOC's ``offset``. So a TOC that lies (wrong sizes,
swapped names, lost xattrs, bad offsets) shows up as a wrong entry even when the tar stream is right. Checked
on the way, as errors: the footer, the TOC digest annotation (and the zstd:chunked manifest checksum), that
chunks tile each file, every ``chunkDigest`` and every file ``digest``.

Written from the format description (stargz-snapshotter ``docs/estargz.md``, ``estargz/types.go``,
``zstdchunked.go``), not from this package's writer: byte layouts are parsed here again on purpose.
Landmarks and the TOC entry are yielded like any entry; the suite's allowances name them as internal.
"""
from __future__ import annotations

import base64
import calendar
import hashlib
import json
import struct
import tarfile
import time
import zlib
from typing import BinaryIO, Iterator

import zstandard

from acceleration_sdk.errors import LayerError
from acceleration_sdk.oci import Descriptor
from acceleration_sdk.testing.entries import LayerEntry, Sha256, clean_name

TOC_NAME = "stargz.index.json"
INTERNAL_NAMES = frozenset({TOC_NAME, ".prefetch.landmark", ".no.prefetch.landmark"})
GZIP_FOOTER_SIZE = 51         # estargz footer: an empty gzip member with an "SG" extra field
ZSTD_FOOTER_SIZE = 8 + 40     # a skippable frame (magic + length) around the 40-byte footer
ZSTD_SKIPPABLE_MAGIC = 0x184D2A50
ZSTD_FOOTER_MAGIC = b"GnUlInUx"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
MANIFEST_CHECKSUM_ANNOTATION = "io.containers.zstd-chunked.manifest-checksum"
READ_SIZE = 64 << 10
MAX_TOC = 256 << 20  # a TOC bigger than this is refused instead of read into memory


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _size(blob: BinaryIO) -> int:
    blob.seek(0, 2)
    return blob.tell()


def _gzip_toc(blob: BinaryIO, size: int) -> bytes:
    blob.seek(size - GZIP_FOOTER_SIZE)
    footer = blob.read(GZIP_FOOTER_SIZE)
    # gzip header with FEXTRA; the extra field holds subfield "SG": 16 hex digits of the TOC offset + "STARGZ"
    if len(footer) != GZIP_FOOTER_SIZE or footer[:4] != b"\x1f\x8b\x08\x04" or footer[12:14] != b"SG" \
            or footer[32:38] != b"STARGZ":
        raise LayerError("not an eStargz blob: no eStargz footer in the last 51 bytes")
    toc_offset = int(footer[16:32], 16)
    if not 0 <= toc_offset < size - GZIP_FOOTER_SIZE:
        raise LayerError(f"eStargz footer points outside the blob (TOC offset {toc_offset})")
    blob.seek(toc_offset)
    member = _inflate(blob, MAX_TOC + 2048)  # the TOC entry and the end-of-archive: one member
    header = tarfile.TarInfo.frombuf(member[:512], "utf-8", "surrogateescape")
    if header.name != TOC_NAME:
        raise LayerError(f"the member at the TOC offset holds {header.name!r}, not {TOC_NAME}")
    toc = member[512:512 + header.size]
    if len(toc) != header.size:
        raise LayerError("the TOC is cut short")
    return toc


def _zstd_toc(blob: BinaryIO, size: int, desc: Descriptor) -> bytes:
    blob.seek(size - ZSTD_FOOTER_SIZE)
    frame = blob.read(ZSTD_FOOTER_SIZE)
    magic, length = struct.unpack("<II", frame[:8])
    if magic != ZSTD_SKIPPABLE_MAGIC or length != 40 or frame[40:] != ZSTD_FOOTER_MAGIC:
        raise LayerError("not a zstd:chunked blob: no GnUlInUx footer in the last skippable frame")
    offset, compressed_len, raw_len, _kind = struct.unpack("<QQQQ", frame[8:40])
    if offset + compressed_len > size - ZSTD_FOOTER_SIZE or raw_len > MAX_TOC:
        raise LayerError(f"zstd:chunked footer points outside the blob (offset {offset}, {compressed_len} bytes)")
    blob.seek(offset)
    compressed = blob.read(compressed_len)
    checksum = desc.annotations.get(MANIFEST_CHECKSUM_ANNOTATION) if desc.annotations else None
    if checksum and checksum != _sha256(compressed):
        raise LayerError(f"zstd:chunked manifest checksum {checksum} does not match the compressed TOC")
    try:
        return zstandard.ZstdDecompressor().decompress(compressed, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise LayerError(f"the zstd:chunked TOC does not decompress: {exc}") from exc


def _inflate(blob: BinaryIO, want: int) -> bytes:
    """Up to ``want`` bytes of the gzip member starting at the blob's position (a chunk starts its own member)."""
    out: list[bytes] = []
    got = 0
    d = zlib.decompressobj(31)
    while got < want:
        data = d.unconsumed_tail or blob.read(READ_SIZE)
        if not data:
            break
        try:
            piece = d.decompress(data, want - got)
        except zlib.error as exc:
            raise LayerError(f"corrupt gzip member: {exc}") from exc
        out.append(piece)
        got += len(piece)
        if d.eof:
            break
    return b"".join(out)


def _unzstd(blob: BinaryIO, want: int) -> bytes:
    """``want`` bytes from the zstd frame starting at the blob's position (a chunk starts its own frame)."""
    reader = zstandard.ZstdDecompressor().stream_reader(blob, read_size=READ_SIZE, read_across_frames=False,
                                                        closefd=False)
    out: list[bytes] = []
    got = 0
    try:
        while got < want:
            piece = reader.read(want - got)
            if not piece:
                break
            out.append(piece)
            got += len(piece)
    except zstandard.ZstdError as exc:
        raise LayerError(f"corrupt zstd frame: {exc}") from exc
    return b"".join(out)


def _modtime(value: str) -> int:
    if not value:
        return 0  # omitted: the epoch (the writer omits it)
    return calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))


def _file_chunks(blob: BinaryIO, entry: dict, chunks: list[dict], zstd: bool) -> Iterator[bytes]:
    """The file's bytes chunk by chunk, each checked against its ``chunkDigest`` (one chunk in memory at a time)."""
    name, size = entry["name"], entry.get("size", 0)
    at = 0
    whole = Sha256()
    for chunk in chunks:
        if chunk.get("chunkOffset", 0) != at:
            raise LayerError(f"{name!r}: chunk at {chunk.get('chunkOffset', 0)} does not follow byte {at}")
        length = chunk.get("chunkSize") or size - at  # omitted (0) on the last chunk: to the end of the file
        blob.seek(chunk["offset"])
        try:
            data = _unzstd(blob, length) if zstd else _inflate(blob, length)
        except LayerError as exc:
            raise LayerError(f"{name!r}: chunk at {at}: {exc}") from exc
        if len(data) != length:
            raise LayerError(f"{name!r}: chunk at {at} holds {len(data)} bytes, the TOC says {length}")
        if chunk.get("chunkDigest") and chunk["chunkDigest"] != _sha256(data):
            raise LayerError(f"{name!r}: chunk at {at} does not match its chunkDigest")
        whole.update(data)
        yield data
        at += length
    if at != size:
        raise LayerError(f"{name!r}: chunks cover {at} bytes, the TOC says {size}")
    if entry.get("digest") and entry["digest"] != whole.digest:
        raise LayerError(f"{name!r}: file bytes do not match the TOC digest")


def _toc_json(blob: BinaryIO, desc: Descriptor) -> tuple[bytes, bool]:
    size = _size(blob)
    blob.seek(0)
    zstd = blob.read(4) == b"\x28\xb5\x2f\xfd"
    raw = _zstd_toc(blob, size, desc) if zstd else _gzip_toc(blob, size)
    expected = desc.annotations.get(TOC_DIGEST_ANNOTATION) if desc.annotations else None
    if expected and expected != _sha256(raw):
        raise LayerError(f"the TOC does not match the {TOC_DIGEST_ANNOTATION} annotation {expected}")
    return raw, zstd


def read_toc(blob: BinaryIO, desc: Descriptor) -> dict:
    """The parsed TOC of an eStargz (gzip) or zstd:chunked blob, its digest checked against the annotation."""
    return json.loads(_toc_json(blob, desc)[0])


def read_layer(blob: BinaryIO, desc: Descriptor, keep_data: bool = True) -> Iterator[LayerEntry]:
    """Every TOC entry of the blob as a :class:`LayerEntry`, file bytes read chunk by chunk from their members.

    ``keep_data=False`` (``accelctl check`` on real images): every chunk is still read and verified, but the
    file's bytes are only hashed into ``LayerEntry.digest``.
    """
    raw_toc, zstd = _toc_json(blob, desc)
    toc = json.loads(raw_toc)
    if toc.get("version") != 1:
        raise LayerError(f"unknown TOC version {toc.get('version')!r}")
    entries: list[dict] = []
    chunks: dict[int, list[dict]] = {}
    last_reg: dict[str, int] = {}
    for raw in toc.get("entries", []):
        kind = raw.get("type")
        if kind == "chunk":
            owner = last_reg.get(raw.get("name"))
            if owner is None:
                raise LayerError(f"chunk entry for {raw.get('name')!r} has no regular file before it")
            chunks[owner].append(raw)
            continue
        if kind == "reg":
            last_reg[raw["name"]] = len(entries)
            chunks[len(entries)] = [raw] if raw.get("size") else []
        entries.append(raw)
    for i, raw in enumerate(entries):
        kind = raw["type"]
        data, digest = b"", ""
        if kind == "reg" and keep_data:
            data = b"".join(_file_chunks(blob, raw, chunks[i], zstd))
        elif kind == "reg":
            h = Sha256()
            for piece in _file_chunks(blob, raw, chunks[i], zstd):
                h.update(piece)
            digest = h.digest
        link = raw.get("linkName", "")
        yield LayerEntry(
            name=clean_name(raw["name"]), kind=kind, mode=raw.get("mode", 0) & 0o7777, uid=raw.get("uid", 0),
            gid=raw.get("gid", 0), uname=raw.get("userName", ""), gname=raw.get("groupName", ""),
            size=raw.get("size", 0), mtime=_modtime(raw.get("modtime", "")),
            linkname=clean_name(link) if kind == "hardlink" else link,
            devmajor=raw.get("devMajor", 0), devminor=raw.get("devMinor", 0),
            xattrs={k: base64.b64decode(v) for k, v in raw.get("xattrs", {}).items()}, data=data, digest=digest)
