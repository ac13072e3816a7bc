"""The driver conformance suite: every LayerDriver converts a matrix of source layers and is read back.

- :mod:`.layers`: the source matrix (USTAR/PAX/GNU x ``""``/``./``/``/`` x gzip/zstd/none, every entry kind).
- :mod:`.entries`: :class:`LayerEntry` (what a reader yields), :class:`Allowances`, the tar reader, ``compare``.
- :mod:`.harness`: :class:`StoreProvider`, the engine's own provider over a local store (no registry).
- :mod:`.suite`: :func:`check_cell`, one cell converted and compared; :class:`ConformanceError`.
- :mod:`.contract`: :class:`DriverContract`, the pytest class a driver's tests subclass (imports pytest, so it
  is loaded only when asked for).
"""
from __future__ import annotations

from .entries import Allowances, LayerEntry, clean_name, compare, tar_entries
from .harness import StoreProvider
from .layers import MATRIX, Cell, build_tar, cell_entries
from .suite import ConformanceError, Reader, check_cell, source_view

__all__ = ["Allowances", "Cell", "ConformanceError", "DriverContract", "LayerEntry", "MATRIX", "Reader",
           "StoreProvider", "build_tar", "cell_entries", "check_cell", "clean_name", "compare", "source_view",
           "tar_entries"]


def __getattr__(name: str):
    if name == "DriverContract":  # pytest is a test dependency: import it only for the pytest class
        from .contract import DriverContract
        return DriverContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
