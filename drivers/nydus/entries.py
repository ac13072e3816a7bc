"""Read a nydus blob layer back into the conformance suite's entries, the way nydusd would serve it.

    for entry in read_layer(blob, descriptor): ...   # acceleration_sdk.testing.LayerEntry values, tree order

The blob's tail (TOC -> blob.meta, blob.digest, the per-layer image.boot) is parsed by :class:`BlobFile`; the
per-layer bootstrap is held to nydusd's load rules with the blob's data verified (every chunk digest and crc),
then walked: each inode becomes an entry, a regular file's bytes come from its chunk indexes through the chunk
table into the blob (nydusd's path, not the kernel's). An inode reached a second time is a hard link to the
first name it was reached by. What the format does not keep is the suite's ``Allowances`` (see
tests/test_driver_contract.py): owner names, sub-second mtimes, tar order; whiteouts stay ``.wh.*`` files in a
layer's own bootstrap (tar-rafs), exactly as the source holds them.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import BinaryIO, Callable, Iterator

from acceleration_sdk.oci import Descriptor
from acceleration_sdk.testing.entries import LayerEntry, Sha256

from . import codec
from . import layout as L
from .blobfile import BlobFile
from .layout import RafsError
from .reader import Rafs
from .validate import validate, validate_against_blobs

_KINDS = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
          stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}


def read_layer(blob: BinaryIO, desc: Descriptor | None = None, keep_data: bool = True,
               dict_blobs: dict[str, str] | None = None) -> Iterator[LayerEntry]:
    """Every entry of the nydus blob layer in ``blob`` (a seekable file), file bytes included.

    ``keep_data=False`` (``accelctl check``): file bytes are hashed chunk by chunk into ``LayerEntry.digest``.
    ``dict_blobs``: blob id -> path of the chunk dict blobs a layer built with ``chunk_dict_ref`` points into
    (its per-layer bootstrap names them after its own); their chunks are checked against their digests as read.
    """
    path = getattr(blob, "name", None)
    if isinstance(path, str) and os.path.isfile(path):
        yield from _read(path, keep_data, dict_blobs or {})
        return
    with tempfile.NamedTemporaryFile(prefix="nydus-blob-") as copy:  # BlobFile reads from a path
        blob.seek(0)
        shutil.copyfileobj(blob, copy)
        copy.flush()
        yield from _read(copy.name, keep_data, dict_blobs or {})


def _read(path: str, keep_data: bool = True, dict_paths: dict[str, str] | None = None) -> Iterator[LayerEntry]:
    blob = BlobFile(path)
    if blob.bootstrap is None:
        raise RafsError("the blob carries no image.boot: not a nydus blob layer")
    rafs = Rafs(blob.bootstrap)
    others = [b.blob_id for b in rafs.blobs if b.blob_id != L.INLINE_BLOB_ID]
    if any(b.blob_id == L.INLINE_BLOB_ID for b in rafs.blobs[1:]):   # its own blob first, then dict blobs
        raise RafsError(f"the per-layer bootstrap names blob {rafs.blobs[0].blob_id}, not the inline blob, first")
    missing = [b for b in others if b not in (dict_paths or {})]
    if missing:
        raise RafsError(f"the layer was built against a chunk dict: its files also read from blob sha256:{missing[0]}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + ", which was not given")
    blobs = {L.INLINE_BLOB_ID: blob, **{b: BlobFile(dict_paths[b]) for b in others}}
    # this blob's data in full; a dict blob's chunks are checked one by one as they are read (below)
    validate(rafs, {L.INLINE_BLOB_ID: blob} if len(others) < len(rafs.blobs) else None, strict=True, partial=True)
    if others:
        validate_against_blobs(rafs, blobs, verify_data=False)
    handles: dict[str, BinaryIO] = {}
    try:
        handles = {b: open(blobs[b].path, "rb") for b in others}
        with open(path, "rb") as fh:
            handles[L.INLINE_BLOB_ID] = fh

            def read_chunk(chunk: L.Chunk) -> bytes:
                entry = rafs.blobs[chunk.blob_index]
                data = blobs[entry.blob_id].read_chunk(handles[entry.blob_id], chunk.index, entry.compressor)
                if entry.blob_id != L.INLINE_BLOB_ID and codec.digest(entry.digester, data) != chunk.digest:
                    # "chunk N of dict blob sha256:X:" -- check._naming_files finds the files by that chunk
                    raise RafsError(f"chunk {chunk.index} of dict blob sha256:{entry.blob_id}: its data does not "
                                    "match its digest")
                return data

            yield from walk_entries(rafs, read_chunk, keep_data)
    finally:
        for fh in handles.values():
            fh.close()


def walk_entries(rafs: Rafs, read_chunk: Callable[[L.Chunk], bytes], keep_data: bool = True) -> Iterator[LayerEntry]:
    """Every inode of ``rafs`` as a :class:`LayerEntry`; a file's bytes come chunk by chunk from ``read_chunk``
    (an inline blob's chunk data, or a zran blob's gzip layer: ``refblob.read_ref_layer``)."""
    first_name: dict[int, str] = {}
    for name, inode in rafs.walk():
        kind = _KINDS.get(stat.S_IFMT(inode.mode))
        if kind is None:
            raise RafsError(f"{name!r}: inode mode {inode.mode:o} is not a kind a layer holds")
        common = dict(mode=stat.S_IMODE(inode.mode), uid=inode.uid, gid=inode.gid, mtime=inode.mtime,
                      xattrs=dict(inode.xattrs))
        if kind != "dir" and inode.nid in first_name:
            yield LayerEntry(name, "hardlink", linkname=first_name[inode.nid], **common)
            continue
        first_name[inode.nid] = name
        if kind == "reg":
            if keep_data:
                data = b"".join(_file_chunks(rafs, read_chunk, inode))
                yield LayerEntry(name, kind, size=len(data), data=data, **common)
            else:
                h = Sha256()
                for piece in _file_chunks(rafs, read_chunk, inode):
                    h.update(piece)
                yield LayerEntry(name, kind, size=h.size, digest=h.digest, **common)
        elif kind == "symlink":
            target = rafs.symlink(inode).decode("utf-8", "surrogateescape")
            yield LayerEntry(name, kind, linkname=target, **common)
        elif kind in ("char", "block"):
            major, minor = inode.rdev
            yield LayerEntry(name, kind, devmajor=major, devminor=minor, **common)
        else:
            yield LayerEntry(name, kind, **common)


def _file_chunks(rafs: Rafs, read_chunk: Callable[[L.Chunk], bytes], inode) -> Iterator[bytes]:
    """The file's bytes chunk by chunk (a chunk is at most 16 MiB), cut to the inode's size."""
    left = inode.size
    for chunk in rafs.file_chunks(inode):
        if left <= 0:
            break
        data = read_chunk(chunk)[:left]
        left -= len(data)
        yield data
    if left > 0:
        raise RafsError(f"inode {inode.nid}: its chunks hold {inode.size - left} bytes of {inode.size}")
