"""The conformance suite's source layers through the ``soci`` driver, read back by upstream's own code.

The gzip and uncompressed cells of :data:`acceleration_sdk.testing.MATRIX` (PAX/GNU/USTAR headers x name
prefixes "", "./", "/", every entry kind: hard links, devices, xattrs, long names, big ids) become the layers
of two images, one per compression, converted with ``min_layer_size: 0`` so every layer gets a ztoc. Then
``soci-verify`` (upstream soci-snapshotter: every ztoc, every file through the span manager, every TOC entry
against upstream's own TOC) must PASS, and so must ``accelctl check`` against the source.
"""
from __future__ import annotations

import json

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk.check import check_image
from acceleration_sdk.engine import convert
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from acceleration_sdk.testing import MATRIX, build_tar, cell_entries
from drivers.soci import layout
from tests.support import soci_tools
from tests.support.images import push_image

CHUNK = 4096  # the cells' file sizes are multiples and fractions of this
SPAN = 1 << 16  # the smallest span size the driver accepts: the bigger files cross spans


@pytest.fixture
def client(registry):
    with RegistryClient() as c:
        yield c


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_matrix_cells_pass_upstream_soci_verify_and_check(tmp_path, registry, client, compression):
    cells = [c for c in MATRIX if c.compression == compression]
    assert len(cells) == 9
    repo = f"{registry.host}/soci/matrix-{compression}"
    push_image(client, f"{repo}:v1", [build_tar(cell_entries(c, CHUNK), c) for c in cells],
               compression="gzip" if compression == "gzip" else "")
    cfg = config_mod.from_dict({"provider": {"work_dir": str(tmp_path / "work")}, "converter": {
        "driver": {"type": "soci", "config": {"span_size": SPAN, "min_layer_size": 0}}}})
    target = convert(cfg, f"{repo}:v1").target

    top = json.loads(client.get_manifest(parse(target)).raw)
    soci = next(d for d in top["manifests"] if d.get("artifactType") == layout.SOCI_INDEX_V2)
    index = json.loads(client.get_manifest(parse(target).with_digest(soci["digest"])).raw)
    assert len(index["layers"]) == 9  # min_layer_size 0: one ztoc per cell

    proc = soci_tools.soci_verify(target, "-strict")
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0

    result = check_image(client, parse(target), tmp_dir=str(tmp_path), source=parse(f"{repo}:v1"))
    assert result.ok, result.lines
    assert result.verdict == f"PASS {target}: 9 layer(s) verified"
