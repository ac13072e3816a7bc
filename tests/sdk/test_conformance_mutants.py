"""The conformance suite is itself tested: drivers with one bug each (mutants of the estargz driver) must fail it.

Each mutant wraps the real estargz driver and breaks one thing, either in what it feeds the driver (the
source tar) or in the TOC of what the driver wrote (rewritten consistently: TOC digest annotation, member,
footer and diff_id all match the lie, so only the comparison with the source can catch it). A TOC-only lie
leaves the tar stream right, so those mutants also prove the reader reads through the TOC, not the tar.
The identity rewrite is the control: the same machinery with no lie passes.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import tarfile

import pytest

from acceleration_sdk.compression import open_decompressed
from acceleration_sdk.content import ContentStore
from acceleration_sdk.driver import ConvertedLayer, LayerDriver, load_driver
from acceleration_sdk.oci import Descriptor
from acceleration_sdk.testing import (MATRIX, Allowances, Cell, ConformanceError, LayerEntry, StoreProvider,
                                     check_cell, compare)
from acceleration_sdk.testing.layers import GNU, PAX
from drivers.estargz.members import estargz_footer
from drivers.estargz.reader import INTERNAL_NAMES, TOC_DIGEST_ANNOTATION, read_layer, read_toc

CHUNK = 4096
ALLOW = Allowances(mtime_precision=1.0, internal_names=INTERNAL_NAMES)
PAX_GZIP = Cell(PAX, "", "gzip")
GNU_DOT_ZSTD = Cell(GNU, "./", "zstd")
PAX_CELLS = [Cell(PAX, prefix, "gzip") for prefix in ("", "./", "/")]  # every name form; PAX holds the xattrs


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Mutant(LayerDriver):
    """The real estargz driver behind one deliberate bug (subclasses override ``source`` or ``toc``)."""

    def __init__(self, **options):
        super().__init__({})
        self.inner = load_driver("estargz", {"compression_level": 1, "chunk_size": CHUNK, **options})

    def name(self) -> str:
        return "estargz"

    def version(self) -> str:
        return self.inner.version()

    def source(self, tar: bytes) -> bytes:  # the source tar the real driver gets
        return tar

    def toc(self, toc: dict, files: dict[str, bytes]) -> dict | None:  # None: keep the driver's blob as it is
        return None

    def convert_layer(self, content, desc: Descriptor) -> ConvertedLayer:
        with content.open_uncompressed(desc) as src:
            tar = src.read()
        changed = self.source(tar)
        if changed != tar:
            desc = content.add_layer(changed, "gzip")
        result = self.inner.convert_layer(content, desc)
        out = result.descriptor
        with content.store.open(out.digest) as fh:
            toc = read_toc(fh, out)
            files = {e.name: e.data for e in read_layer(fh, out)}
        new_toc = self.toc(toc, files)
        return result if new_toc is None else rewrite_toc(content, result, new_toc)


def rewrite_toc(content: StoreProvider, result: ConvertedLayer, toc: dict) -> ConvertedLayer:
    """An eStargz (gzip) blob with its TOC member replaced by ``toc``; footer, annotation and diff_id to match."""
    desc = result.descriptor
    blob = content.store.read_bytes(desc.digest)
    toc_offset = int(blob[-51:][16:32], 16)
    raw = json_bytes(toc)
    header = tarfile.TarInfo("stargz.index.json")
    header.size = len(raw)
    member = gzip.compress(header.tobuf(tarfile.USTAR_FORMAT) + raw + bytes(-len(raw) % 512) + bytes(1024), mtime=0)
    new = blob[:toc_offset] + member + estargz_footer(toc_offset)
    digest = content.store.write_bytes(new)
    diff_id = sha256(open_decompressed(io.BytesIO(new)).read())
    annotations = {**desc.annotations, TOC_DIGEST_ANNOTATION: sha256(raw)}
    return ConvertedLayer(Descriptor(media_type=desc.media_type, digest=digest, size=len(new),
                                     annotations=annotations), diff_id)


def json_bytes(toc: dict) -> bytes:
    import json
    return json.dumps(toc, separators=(",", ":"), ensure_ascii=False).encode()


def entry(toc: dict, name: str, kind: str | None = None) -> dict:
    return next(e for e in toc["entries"] if e["name"] == name and (kind is None or e["type"] == kind))


def tar_rewrite(tar: bytes, edit) -> bytes:
    """Re-write ``tar`` (as PAX, which holds every field) after ``edit(list of (TarInfo, bytes))``."""
    items = []
    with tarfile.open(fileobj=io.BytesIO(tar), encoding="utf-8", errors="surrogateescape") as tf:
        for info in tf:
            items.append((info, tf.extractfile(info).read() if info.isreg() else b""))
    edit(items)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for info, data in items:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _index(items, name: str) -> int:
    return next(i for i, (info, _) in enumerate(items) if info.name.lstrip("./") == name)


class IdentityRewrite(Mutant):
    """The control: every rewrite path runs, nothing is changed."""

    def source(self, tar):
        return tar_rewrite(tar, lambda items: None)

    def toc(self, toc, files):
        return toc


class EmptiesAFile(Mutant):
    def source(self, tar):
        def edit(items):
            i = _index(items, "etc/motd")
            items[i] = (items[i][0], b"")
        return tar_rewrite(tar, edit)


class DropsAnXattr(Mutant):
    def toc(self, toc, files):
        del entry(toc, "usr/bin/ping")["xattrs"]["security.capability"]
        return toc


class SwapsTwoEntries(Mutant):
    """Two files' TOC entries trade names: each name now leads to the other file's bytes."""

    def toc(self, toc, files):
        a, b = entry(toc, "etc/hostname"), entry(toc, "etc/motd")
        a["name"], b["name"] = b["name"], a["name"]
        return toc


class SwapsEntryOrder(Mutant):
    """Two neighbouring entries change places in the layer (tar and TOC alike)."""

    def source(self, tar):
        def edit(items):
            i = _index(items, "etc/hostname")
            items[i], items[i + 1] = items[i + 1], items[i]
        return tar_rewrite(tar, edit)


class TruncatesTheLastChunk(Mutant):
    """The TOC ends the last chunk of a multi-chunk file 100 bytes early (digests recomputed to match)."""

    def toc(self, toc, files):
        name = "data/multi-chunk"
        head = entry(toc, name, "reg")
        last = [e for e in toc["entries"] if e["name"] == name][-1]
        head["size"] -= 100
        data = files[name][:head["size"]]
        last["chunkDigest"] = sha256(data[last["chunkOffset"]:])
        head["digest"] = sha256(data)
        return toc


class WrongDiffId(Mutant):
    def convert_layer(self, content, desc):
        result = super().convert_layer(content, desc)
        return dataclasses.replace(result, diff_id=sha256(b"not the output"))


def run(driver: LayerDriver, cell: Cell, tmp_path) -> None:
    check_cell(driver, read_layer, cell, chunk_size=CHUNK, allowances=ALLOW,
               provider=StoreProvider(ContentStore(tmp_path / "store")))


@pytest.mark.parametrize("cell", [PAX_GZIP, GNU_DOT_ZSTD], ids=lambda c: c.id)
def test_the_identity_rewrite_passes(cell, tmp_path):
    run(IdentityRewrite(), cell, tmp_path)


@pytest.mark.parametrize("mutant, views, needles", [
    (EmptiesAFile, ("[reader]", "[tar view]"), ("'etc/motd': size differs: source 320, output 0",
                                                  "'etc/motd': file bytes differ from byte 0")),
    (DropsAnXattr, ("[reader]",), ("'usr/bin/ping': xattr 'security.capability' missing in the output",)),
    (SwapsTwoEntries, ("[reader]",), ("'etc/hostname': size differs", "'etc/motd': file bytes differ")),
    (SwapsEntryOrder, ("[reader]", "[tar view]"), ("entry order differs: the source has 'etc/hostname' where "
                                                   "the output has 'etc/motd'",)),
    (TruncatesTheLastChunk, ("[reader]",), ("'data/multi-chunk': size differs: source 13522, output 13422",
                                            "'data/multi-chunk': file bytes differ from byte 13422")),
    (WrongDiffId, (), ("is not the sha256 of the uncompressed output",)),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
@pytest.mark.parametrize("cell", PAX_CELLS, ids=lambda c: c.id)
def test_each_mutant_fails_the_suite_naming_its_bug(mutant, views, needles, cell, tmp_path):
    with pytest.raises(ConformanceError) as caught:
        run(mutant(), cell, tmp_path)
    message = str(caught.value)
    for needle in needles:
        assert needle in message, message
    # the TOC-only lies leave the tar stream right: only the reader (through the TOC) can see them
    seen = {p[:p.index("]") + 1] for p in caught.value.problems if p.startswith("[")}
    assert seen == set(views), message


@pytest.mark.parametrize("mutant", [EmptiesAFile, SwapsEntryOrder, WrongDiffId])
def test_source_mutants_fail_zstd_chunked_too(mutant, tmp_path):
    driver = mutant(compression="zstdchunked", compression_level=1)
    with pytest.raises(ConformanceError):
        run(driver, GNU_DOT_ZSTD, tmp_path)


def test_matrix_covers_formats_prefixes_and_compressions():
    assert len(MATRIX) == 27 and len({c.id for c in MATRIX}) == 27


def test_truncated_mtimes_must_read_back_as_the_same_second():
    """``mtime_truncated`` (nydus: whole seconds, nsec dropped) is stricter than rounding, not looser."""
    allow = Allowances(mtime_precision=1.0, mtime_truncated=True)
    source = [LayerEntry("f", "reg", mtime=10.75)]
    assert compare(source, [LayerEntry("f", "reg", mtime=10)], allow) == []
    assert "mtime differs" in compare(source, [LayerEntry("f", "reg", mtime=11)], allow)[0]   # rounded: wrong
    assert compare(source, [LayerEntry("f", "reg", mtime=11)], Allowances(mtime_precision=1.0)) == []
    with pytest.raises(ValueError, match="mtime_precision"):
        Allowances(mtime_truncated=True)
