"""The conformance check of one source layer: convert it, read the output back two ways, compare everything.

    problems = check_cell(driver, reader, cell, chunk_size=4096, allowances=Allowances(...), provider=p)

For one :class:`~.layers.Cell` it builds the source tar, stores it compressed, runs
``driver.convert_layer(provider, desc)`` and then checks:

- the returned descriptor's blob is in the store, and its sha256 and size are the descriptor's;
- the returned diff_id is the sha256 of the uncompressed output (or of the blob: ``Allowances.diff_id``);
- the plain tar view of the output (decompressed, read with ``tarfile``) holds every source entry with
  the same metadata and bytes (``tar_allowances``; internal names ignored) -- unless the format is no tar;
- the driver's own *reader* of its output (``reader(blob, descriptor)`` yielding
  :class:`~.entries.LayerEntry`) shows every source entry with the same metadata and bytes (``allowances``).

Every difference is collected; :class:`ConformanceError` lists them all (an ``AssertionError``, so pytest
shows it as a test failure). Modelled on stargz-snapshotter's ``CompressionTestSuite`` (testBuild compares
entries, chunk contents and the DiffID); this code is the project's own.
"""
from __future__ import annotations

import hashlib
import io
from typing import BinaryIO, Callable, Iterable

from ..compression import open_decompressed
from ..driver import ConvertedLayer, LayerDriver
from ..oci import Descriptor
from .entries import Allowances, LayerEntry, compare, tar_entries
from .harness import StoreProvider
from .layers import Cell, build_tar, cell_entries

# A driver's reader of its own output: the stored blob (a seekable binary file at offset 0) and the descriptor
# convert_layer returned -> every entry of the layer as LayerEntry (file bytes included), in layer order.
Reader = Callable[[BinaryIO, Descriptor], Iterable[LayerEntry]]
MAX_SHOWN = 25  # problems listed in one failure message; the count says how many more
READ_SIZE = 1 << 20  # how much of an output blob is read at a time


class ConformanceError(AssertionError):
    """A driver failed the suite on one cell; ``.problems`` holds every difference found."""

    def __init__(self, cell_id: str, problems: list[str]):
        self.cell_id, self.problems = cell_id, problems
        shown = "\n  - ".join(problems[:MAX_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        super().__init__(f"conformance cell {cell_id}: {len(problems)} problem(s):\n  - {shown}{more}")


class _Hashing:
    """Reads through a stream while hashing what passes (the diff_id of a decompressed output)."""

    def __init__(self, src: BinaryIO):
        self._src, self._h, self.size = src, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self._h.update(data)
        self.size += len(data)
        return data

    def drain(self) -> str:
        while self.read(READ_SIZE):
            pass
        return "sha256:" + self._h.hexdigest()


def source_view(cell: Cell, chunk_size: int) -> tuple[bytes, list[LayerEntry]]:
    """The cell's source tar and what an independent tar reader sees in it (the truth outputs are held to)."""
    tar = build_tar(cell_entries(cell, chunk_size), cell)
    return tar, list(tar_entries(io.BytesIO(tar)))


def _blob_problems(provider: StoreProvider, desc: Descriptor) -> list[str]:
    store = provider.store
    if not store.has(desc.digest):
        return [f"the returned blob {desc.digest} is not in the content store"]
    h, size = hashlib.sha256(), 0
    with store.open(desc.digest) as fh:
        while piece := fh.read(READ_SIZE):
            h.update(piece)
            size += len(piece)
    out = []
    if "sha256:" + h.hexdigest() != desc.digest:
        out.append(f"descriptor digest {desc.digest} is not the stored blob's sha256:{h.hexdigest()}")
    if size != desc.size:
        out.append(f"descriptor size {desc.size} is not the stored blob's size {size}")
    return out


def check_cell(driver: LayerDriver, reader: Reader, cell: Cell, *, chunk_size: int, provider: StoreProvider,
               allowances: Allowances = Allowances(), tar_allowances: Allowances | None = None) -> None:
    """Convert ``cell``'s layer with ``driver`` and compare the output with the source; raise on any problem.

    ``tar_allowances`` default to exact (only ``allowances.internal_names`` ignored): a driver that copies
    tar headers keeps everything in its tar view even when its index (a TOC) rounds or drops fields.
    """
    if tar_allowances is None:
        tar_allowances = Allowances(internal_names=allowances.internal_names)
    tar, source = source_view(cell, chunk_size)
    desc = provider.add_layer(tar, cell.compression)
    try:
        result = driver.convert_layer(provider, desc)
        provider.finish()
    except Exception as exc:
        raise ConformanceError(cell.id, [f"convert_layer failed: {type(exc).__name__}: {exc}"]) from exc
    if not isinstance(result, ConvertedLayer):
        raise ConformanceError(cell.id, [f"convert_layer returned {result!r}, not a ConvertedLayer"])
    out = result.descriptor
    problems = _blob_problems(provider, out)
    if problems:
        raise ConformanceError(cell.id, problems)

    with provider.store.open(out.digest) as fh:
        stream = _Hashing(open_decompressed(fh) if allowances.diff_id == "decompressed" else fh)
        tar_view, diff_id = None, ""
        try:  # any failure to read is a finding, not a crash of the suite
            tar_view = list(tar_entries(stream)) if allowances.tar_view else None
        except Exception as exc:  # noqa: BLE001
            problems.append(f"[tar view] the output does not read as a tar: {type(exc).__name__}: {exc}")
        try:
            diff_id = stream.drain()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the output does not decompress to its end: {type(exc).__name__}: {exc}")
    if diff_id and diff_id != result.diff_id:
        problems.append(f"diff_id {result.diff_id} is not the sha256 of the uncompressed output ({diff_id})")
    if tar_view is not None:
        problems += ["[tar view] " + p for p in compare(source, tar_view, tar_allowances)]

    with provider.store.open(out.digest) as fh:
        try:
            view = list(reader(fh, out))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"[reader] the driver's reader failed on the output: {type(exc).__name__}: {exc}")
        else:
            problems += ["[reader] " + p for p in compare(source, view, allowances)]
    if problems:
        raise ConformanceError(cell.id, problems)
