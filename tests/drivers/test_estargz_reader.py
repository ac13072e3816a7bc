"""drivers/estargz/reader.py refuses what a lazy-pulling reader must refuse, for both output flavours."""
from __future__ import annotations

import dataclasses
import io

import pytest

from acceleration_sdk.content import ContentStore
from acceleration_sdk.driver import load_driver
from acceleration_sdk.errors import LayerError
from acceleration_sdk.testing import MATRIX, StoreProvider, source_view
from drivers.estargz.reader import TOC_DIGEST_ANNOTATION, read_layer, read_toc

CHUNK = 4096


@pytest.fixture(params=["estargz", "zstdchunked"])
def converted(request, tmp_path):
    provider = StoreProvider(ContentStore(tmp_path / "store"))
    tar, source = source_view(MATRIX[0], CHUNK)
    driver = load_driver("estargz", {"compression": request.param, "compression_level": 1, "chunk_size": CHUNK})
    result = driver.convert_layer(provider, provider.add_layer(tar))
    return provider.store.read_bytes(result.descriptor.digest), result.descriptor, source


def test_reads_every_file_through_its_chunks(converted):
    blob, desc, source = converted
    entries = {e.name: e for e in read_layer(io.BytesIO(blob), desc)}
    want = {e.name: e for e in source}
    assert entries["data/multi-chunk"].data == want["data/multi-chunk"].data
    toc = read_toc(io.BytesIO(blob), desc)
    assert sum(1 for e in toc["entries"] if e["name"] == "data/multi-chunk") == 4  # 3 full chunks + the rest


def test_a_toc_that_does_not_match_its_annotation_is_refused(converted):
    blob, desc, _ = converted
    lying = dataclasses.replace(desc, annotations={**desc.annotations, TOC_DIGEST_ANNOTATION: "sha256:" + "0" * 64})
    with pytest.raises(LayerError, match="toc.digest"):
        list(read_layer(io.BytesIO(blob), lying))


def test_a_corrupted_chunk_is_refused(converted):
    blob, desc, _ = converted
    toc = read_toc(io.BytesIO(blob), desc)
    chunk = [e for e in toc["entries"] if e["name"] == "data/multi-chunk"][1]
    broken = bytearray(blob)
    broken[chunk["offset"] + 30] ^= 0xFF  # inside the compressed chunk, past any frame/member header
    with pytest.raises(LayerError, match="multi-chunk|corrupt"):
        list(read_layer(io.BytesIO(bytes(broken)), desc))


def test_a_plain_tar_is_not_an_estargz_blob(converted):
    _, desc, _ = converted
    with pytest.raises(LayerError, match="footer"):
        read_toc(io.BytesIO(b"\0" * 4096), dataclasses.replace(desc, annotations={}))
