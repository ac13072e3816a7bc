"""A streaming, validating tar reader that keeps each entry's raw header bytes.

    reader = TarReader(stream)                      # stream: anything with read(); short reads are fine
    while (entry := reader.next()) is not None:     # TarEntry values; payloads not read are skipped
        data = reader.read(entry.size)

A writer that copies the tar (the eStargz driver) passes every input header through byte for byte -- PAX
records, GNU long names, base-256 numbers and anything else a tool put there survive -- and needs the *meaning*
of each header beside it; a builder of another format (nydus) needs only the meaning. :class:`TarEntry`
carries both: ``header`` is the exact bytes of the entry's header blocks (PAX ``x`` / GNU ``L``/``K`` blocks
included) and the other fields are the resolved attributes.

What one header means (names, numbers, PAX records) is :mod:`acceleration_sdk.tar.header`; this module is the
reading: buffering, skipping payloads, folding extended headers into the entry they precede. Nothing here
touches the file system; entry names are data. Hostile input raises
:class:`acceleration_sdk.errors.LayerError` with a one-line message naming the byte offset.
"""
from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO

from acceleration_sdk.errors import AccelError, LayerError

from .header import (BLOCK, TarEntry, entry_from_header, header_number, nul_terminated, pax_records,
                        refuse_sparse, verify_checksum)

ZERO_BLOCK = bytes(BLOCK)
# 1 MiB: Go archive/tar's maxSpecialFileSize, the cap on PAX and GNU long-name payloads.
META_LIMIT = 1 << 20
# 1 MiB reads from the source stream: large enough to amortise Python call overhead per header.
READ_SIZE = 1 << 20

try:  # translate a broken compressed source into LayerError at this one boundary
    import zstandard as _zstd
    _SOURCE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, EOFError, gzip.BadGzipFile, _zstd.ZstdError)
except ImportError:  # pragma: no cover - zstandard is a hard dependency
    _SOURCE_ERRORS = (zlib.error, EOFError, gzip.BadGzipFile)


class TarReader:
    """Reads a tar stream entry by entry; ``src`` only needs ``read`` (short reads are fine, like a pipe's).

    Usage: ``while (e := r.next()) is not None: data = r.read(n) ...``. ``next`` skips whatever payload the
    caller did not read. PAX global records (``globals``) apply to every later entry. ``errors`` says how
    names, owner names and xattr keys that are not UTF-8 become ``str``: ``"surrogateescape"`` (lossless:
    ``.encode("utf-8", "surrogateescape")`` gives the tar's bytes back) or ``"replace"`` (U+FFFD, what Go's
    JSON encoder shows for them). After the end-of-archive marker the rest of ``src`` is read and ignored.
    """

    def __init__(self, src: BinaryIO, *, errors: str = "surrogateescape"):
        self._src = src
        self._errors = errors
        self._buf = b""
        self._off = 0
        self.pos = 0  # input bytes consumed
        self._payload_left = 0
        self._padding_left = 0
        self._done = False
        self.globals: dict[str, bytes] = {}

    # -- raw input -------------------------------------------------------------------------------
    def _fill(self, want: int) -> bytes:
        try:
            data = self._src.read(want)
        except AccelError:
            raise
        except _SOURCE_ERRORS as exc:
            raise LayerError(f"cannot read layer stream at byte {self.pos}: {exc}") from exc
        return data or b""

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or fewer only at end of stream."""
        avail = len(self._buf) - self._off
        if avail >= n:
            out = self._buf[self._off:self._off + n]
            self._off += n
            self.pos += n
            return out
        parts = [self._buf[self._off:]] if avail else []
        got = avail
        self._buf, self._off = b"", 0
        while got < n:
            need = n - got
            data = self._fill(max(need, READ_SIZE))
            if not data:
                break
            if len(data) > need:
                self._buf, self._off = data, need
                data = data[:need]
            parts.append(data)
            got += len(data)
        self.pos += got
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise LayerError(f"truncated tar: the stream ends early, in {what} at byte {self.pos}")
        return data

    def _skip(self, n: int, what: str) -> None:
        while n:
            step = min(n, READ_SIZE)
            self._read_exact(step, what)
            n -= step

    def drain(self) -> None:
        """Consume the rest of the source (the bytes after the end-of-archive marker are ignored)."""
        while self._read(READ_SIZE):
            pass

    # -- payload ---------------------------------------------------------------------------------
    def read(self, n: int) -> bytes:
        """Up to ``n`` payload bytes of the current entry (exactly ``n`` unless fewer remain)."""
        n = min(n, self._payload_left)
        data = self._read_exact(n, "file payload")
        self._payload_left -= n
        return data

    # -- headers ---------------------------------------------------------------------------------
    def next(self) -> TarEntry | None:
        """The next entry, or ``None`` at the end of the archive."""
        if self._done:
            return None
        if self._payload_left or self._padding_left:
            self._skip(self._payload_left + self._padding_left, "file payload")
            self._payload_left = self._padding_left = 0
        start = self.pos
        raw: list[bytes] = []
        pax: dict[str, bytes] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            at = self.pos
            block = self._read(BLOCK)
            if not block and not raw:
                # A stream that ends on a block boundary without the two zero blocks: Go accepts it and
                # stargz-snapshotter's own zstd:chunked layers are written that way.
                self._done = True
                return None
            if len(block) != BLOCK:
                raise LayerError(f"truncated tar: the stream ends early, in a header at byte {self.pos}")
            if block == ZERO_BLOCK:
                if raw:
                    raise LayerError(f"invalid tar: end-of-archive marker after an extended header at byte {at}")
                self._done = True
                self.drain()
                return None
            verify_checksum(block, at)
            flag = block[156]
            if flag in b"xgLK":
                size = header_number(block[124:136], "size", at)
                if size < 0 or size > META_LIMIT:
                    raise LayerError(f"invalid tar: extended header of {size} bytes at byte {at}")
                payload = self._read_exact(size, "an extended header")
                pad = self._read_exact(-size % BLOCK, "an extended header")
                if flag == ord("g"):  # (extended headers before it, as Python's tarfile can write, ride along)
                    records = pax_records(payload, at, self._errors)
                    refuse_sparse(records, at)
                    for key, value in records.items():
                        if value:
                            self.globals[key] = value
                        else:
                            self.globals.pop(key, None)
                    return TarEntry(header=b"".join(raw) + block + payload + pad, name="", kind="global",
                                    offset=start)
                raw += (block, payload, pad)
                if flag == ord("x"):
                    pax.update(pax_records(payload, at, self._errors))
                elif flag == ord("L"):
                    long_name = nul_terminated(payload, self._errors)
                else:
                    long_link = nul_terminated(payload, self._errors)
                continue
            raw.append(block)
            records = pax
            if self.globals:
                records = {k: v for k, v in self.globals.items() if k not in ("path", "linkpath", "size")}
                records.update(pax)
            entry = entry_from_header(block, b"".join(raw), records, long_name, long_link, start, at, self._errors)
            self._payload_left = entry.size
            self._padding_left = entry.padding
            return entry
