"""OCI-ref (zran) nydus blobs: the reader rebuilds every file from the ZRAN context and the gzip layer alone.

The conformance matrix's gzip cells go through the driver with ``oci_ref: true`` and are read back through
``refblob.read_ref_layer`` (checkpoints decoded from the source gzip, every chunk held to blob.digest and its
crc32c); nydus-image's own zran blob.meta (nydus tests/texture/zran) is parsed and held to nydusd's rules;
nydus's zran test layers (one member, two members, a zero-length file) convert and read back.
"""
import gzip
import hashlib
import io
import os
import random
import struct
import tarfile
from pathlib import Path

import pytest

from acceleration_sdk.content import ContentStore
from acceleration_sdk.driver import load_driver
from acceleration_sdk.testing import MATRIX, StoreProvider, check_cell, compare, tar_entries
from drivers.nydus import layout as L
from drivers.nydus.check import ALLOWANCES
from drivers.nydus.layout import RafsError
from drivers.nydus.reader import Rafs
from drivers.nydus.refblob import (REF_ANNOTATION, ZRAN_BLOB_FEATURES, RefBlob, convert_ref_layer,
                                   merge_ref_bootstrap, read_ref_layer, validate_ref)
from drivers.nydus.zranctx import MAX_OUT, decode_context, unpack_contexts

SMALL_CHUNK = 4096
FIXTURES = Path(os.environ.get("NYDUS_ZRAN_FIXTURES", "/work/shared/fixtures/nydus/zran"))
META_FIXTURE = FIXTURES / "233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a.blob.meta"
GZIP_CELLS = [c for c in MATRIX if c.compression == "gzip"]


def _ref_reader(provider: StoreProvider):
    """The suite's reader for a zran blob: it also opens the source gzip the blob names (its only other input)."""
    def read(fh, desc):
        with provider.store.open(desc.annotations[REF_ANNOTATION]) as gz:
            yield from read_ref_layer(provider.store.path(desc.digest), gz)
    return read


@pytest.mark.parametrize("cell", GZIP_CELLS, ids=[c.id for c in GZIP_CELLS])
def test_gzip_cells_read_back_from_the_source_gzip(cell, tmp_path):
    provider = StoreProvider(ContentStore(tmp_path / "store"))
    try:
        driver = load_driver("nydus", {"oci_ref": True, "fs_chunk_size": SMALL_CHUNK})
        check_cell(driver, _ref_reader(provider), cell, chunk_size=SMALL_CHUNK, provider=provider,
                   allowances=ALLOWANCES)
    finally:
        provider.close()


def _layer(files: int, seed: int) -> bytes:
    r = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(files):
            kind = i % 3
            data = (r.randbytes(r.randint(0, 600_000)) if kind == 0 else bytes(r.randint(0, 900_000)) if kind == 1
                    else (b"text %d " % i) * r.randint(0, 80_000))
            info = tarfile.TarInfo(f"dir{i % 4}/file{i}")
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _convert(gz: bytes, chunk_size: int, tmp_path: Path, name: str = "blob"):
    path = tmp_path / name
    with open(path, "wb") as out:
        result = convert_ref_layer(io.BytesIO(gz), out, chunk_size)
    return path, result


@pytest.mark.parametrize("chunk_size", [0x1000, 0x10000, 0x100000])
def test_layer_reads_back_and_merged_bootstrap_names_the_gzip(chunk_size, tmp_path):
    tar = _layer(30, chunk_size)
    gz = gzip.compress(tar, 6)
    path, result = _convert(gz, chunk_size, tmp_path)
    assert result.blob.source == "sha256:" + hashlib.sha256(gz).hexdigest()
    assert result.blob.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.stat().st_size < len(gz) // 2   # a reference: windows and tables, no file data
    with io.BytesIO(gz) as g:
        got = list(read_ref_layer(str(path), g))
    problems = compare(list(tar_entries(io.BytesIO(tar))), got, ALLOWANCES)
    assert not problems, problems[:5]

    blob = RefBlob(path)
    assert blob.header.features == ZRAN_BLOB_FEATURES
    assert blob.header.zran_offset == blob.chunk_count * L.CI_V2_SIZE
    assert 0 < blob.header.zran_count <= blob.chunk_count
    assert all(c.out_len <= MAX_OUT for c in blob.contexts)
    boot = merge_ref_bootstrap([result], chunk_size)
    rafs = Rafs(boot)
    entry = rafs.blobs[0]
    assert entry.blob_id == result.blob.source.split(":")[1]          # nydusd fetches the gzip by it
    assert entry.blob_meta_digest.hex() == result.blob.digest.split(":")[1]  # ... and blob.meta from here
    assert (entry.blob_meta_size, entry.compressed_size) == (path.stat().st_size, len(gz))
    assert (entry.compressor, entry.digester, entry.features & L.B_INLINED_FS_META) == ("gzip", "sha256", 0)
    with io.BytesIO(gz) as g:
        validate_ref(rafs, {entry.blob_id: blob}, {entry.blob_id: g})


def test_many_members_and_trailing_zeros(tmp_path):
    """Concatenated members (each file's data its own member, as eStargz cuts them) and zero padding after."""
    tar = _layer(12, 7)
    cut = [0] + sorted(random.Random(3).sample(range(1, len(tar)), 40)) + [len(tar)]
    gz = b"".join(gzip.compress(tar[a:b], 1) for a, b in zip(cut, cut[1:])) + bytes(1000)
    path, _ = _convert(gz, 0x10000, tmp_path)
    with io.BytesIO(gz) as g:
        problems = compare(list(tar_entries(io.BytesIO(tar))), list(read_ref_layer(str(path), g)), ALLOWANCES)
    assert not problems, problems[:5]


def test_wrong_gzip_or_bad_window_is_refused(tmp_path):
    tar = _layer(30, 11)
    gz = gzip.compress(tar, 6)
    path, _ = _convert(gz, 0x10000, tmp_path)
    other = gzip.compress(tar, 1)   # the same files, other gzip bytes: the checkpoints do not fit
    with pytest.raises(RafsError):
        with io.BytesIO(other + bytes(len(gz) - len(other)) if len(other) < len(gz) else other[:len(gz)]) as g:
            list(read_ref_layer(str(path), g))
    blob = RefBlob(path)
    assert sum(bool(c.window) for c in blob.contexts) > 1
    for ctx in blob.contexts:                 # windows of zeros decode to wrong bytes (or not at all)
        ctx.window = bytes(len(ctx.window))
    with io.BytesIO(gz) as g, pytest.raises(RafsError, match="blob.digest|inflate"):
        blob.verify_chunks(g)


def test_non_gzip_source_is_refused(tmp_path):
    with pytest.raises(RafsError, match="gzip"):
        _convert(_layer(2, 1), 0x10000, tmp_path)
    with pytest.raises(RafsError, match="non-gzip data"):
        _convert(gzip.compress(_layer(2, 1)) + b"garbage", 0x10000, tmp_path)


@pytest.mark.parametrize("name", ["zran-single-stream.tar.gz", "zran-two-streams.tar.gz", "zran-zero-file.tar.gz"])
def test_nydus_zran_test_layers(name, tmp_path):
    """nydus's own zran fixtures (tests/texture/zran): single member, two members, a zero-length file."""
    gz = (FIXTURES / name).read_bytes()
    path, _ = _convert(gz, 0x100000, tmp_path)
    raw = gzip.decompress(gz)   # every member: the reference view of what the layer holds
    want = list(tar_entries(io.BytesIO(raw)))
    with io.BytesIO(gz) as g:
        got = list(read_ref_layer(str(path), g))
    assert not compare(want, got, ALLOWANCES)
    assert any(e.kind == "reg" for e in got)


def _fixture():
    """nydus-image's zran blob.meta as nydusd caches it: ci + ZRAN tables, zero pad to 4 KiB, header."""
    raw = META_FIXTURE.read_bytes()
    header = L.MetaHeader.unpack(raw[-L.META_HEADER_SIZE:])
    return raw, header, raw[:header.ci_uncompressed_size]


def test_nydus_image_zran_blob_meta_fixture():
    raw, h, ci = _fixture()
    # storage/src/cache/fscache/mod.rs:444-485 states these for the fixture
    assert (h.ci_entries, h.ci_uncompressed_size, len(raw)) == (0xA3, 0xA1290, L.align(0xA1290, 4096) + 4096)
    assert h.features & (L.B_ZRAN | L.B_CHUNK_INFO_V2 | L.B_ALIGNED) == L.B_ZRAN | L.B_CHUNK_INFO_V2 | L.B_ALIGNED
    assert h.zran_offset == h.ci_entries * L.CI_V2_SIZE and h.zran_offset + h.zran_size <= len(ci)
    contexts = unpack_contexts(ci[h.zran_offset:h.zran_offset + h.zran_size], h.zran_count)
    assert len(contexts) == 21 and contexts[0].in_offset == 10 and not contexts[0].window
    assert all(len(c.window) == 32768 for c in contexts[1:])
    prev_ctx, prev_end = 0, 0
    for i in range(h.ci_entries):
        uncomp, comp, data = struct.unpack_from("<QQQ", ci, i * 24)
        assert (uncomp >> 56) & 0x3 == 0x3                        # COMPRESSED | ZRAN
        ctx_index, offset, usize = data >> 32, data & 0xFFFF_FFFF, ((uncomp >> 32) & 0xFF_FFFF) + 1
        assert prev_ctx <= ctx_index < len(contexts)              # contexts in order (nydusd walks them so)
        assert offset + usize <= contexts[ctx_index].out_len      # chunk_info_v2.rs validate
        uoff = (uncomp & 0xFFFF_FFFF) << 12
        assert uoff >= prev_end and uoff % 4096 == 0
        prev_ctx, prev_end = ctx_index, L.align(uoff + usize, 4096)
    # the windows are the tarball's own bytes: the last three chunks are nydus's zran test layers, whose sizes
    # they have (229, 8908, 364 bytes); each context's window ends where its slice begins
    sizes = [((struct.unpack_from("<Q", ci, i * 24)[0] >> 32) & 0xFF_FFFF) + 1 for i in range(h.ci_entries)]
    assert sizes[-3:] == [229, 8908, 364]
    for i in range(h.ci_entries - 3, h.ci_entries):   # ... and are tar members: their data is 512-aligned
        data = struct.unpack_from("<Q", ci, i * 24 + 16)[0]
        assert (contexts[data >> 32].out_offset + (data & 0xFFFF_FFFF)) % 512 == 0
    assert sum(b"ustar" in c.window for c in contexts[1:]) >= 3   # tar headers inside the windows


def test_decoder_on_a_checkpoint_of_a_known_stream():
    """decode_context alone (prime bits, window, raw inflate) gives back the bytes a checkpoint covers."""
    # the decoder itself, on a checkpoint made by our generator over a stream with a known answer
    data = os.urandom(200_000) + bytes(300_000)
    gz = gzip.compress(data, 6)
    from drivers.nydus.zran import ZranIndex, ZranInflater
    inflater = ZranInflater(io.BytesIO(gz))
    index = ZranIndex(inflater)
    out = b"".join(iter(lambda: inflater.read(1 << 16), b""))   # short reads, b"" only at the end
    assert out == data
    index.begin(150_000, 4096)
    chunk = index.end(160_000)
    ctx = index.contexts[chunk.index]
    assert decode_context(ctx, gz[ctx.in_offset:ctx.in_offset + ctx.in_len])[chunk.offset:chunk.offset + 10_000] \
        == data[150_000:160_000]


def test_zlib_ng_and_system_zlib_write_the_same_blob(tmp_path, monkeypatch):
    """Block ends, pending bits and windows belong to the deflate stream: either inflate library chooses the same
    checkpoints (zlib-ng's native API is used when the zlib-ng package is installed, as requirements.txt has it)."""
    from acceleration_sdk.zlib_raw import backend
    from drivers.nydus import zran
    assert backend("auto").name == "zlib-ng" and backend("zlib").name == "zlib"
    tar = _layer(20, 5)
    gz = b"".join(gzip.compress(tar[i:i + 700_000], 6) for i in range(0, len(tar), 700_000))   # members too
    _, fast = _convert(gz, 0x10000, tmp_path, "a")
    init = zran.ZranInflater.__init__
    monkeypatch.setattr(zran.ZranInflater, "__init__",
                        lambda self, raw, hashing=True, inflate="auto": init(self, raw, hashing, "zlib"))
    _, plain = _convert(gz, 0x10000, tmp_path, "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert fast.blob.digest == plain.blob.digest
    monkeypatch.undo()
    with pytest.raises(RafsError, match="truncated"):
        _convert(gz[:len(gz) // 2], 0x10000, tmp_path, "c")


def test_a_layer_without_file_data_has_no_blob_in_the_bootstrap(tmp_path):
    """Directories and symlinks only: no chunk, no blob.meta, no blob table entry (nydus-snapshotter still writes
    the layer, one per source layer); merged over a layer with data, only that one is a blob."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("etc")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
        link = tarfile.TarInfo("etc/alias")
        link.type, link.linkname = tarfile.SYMTYPE, "/dir0/file0"
        tf.addfile(link)
    empty_gz = gzip.compress(buf.getvalue())
    empty_path, empty = _convert(empty_gz, 0x10000, tmp_path, "empty")
    assert empty.blob.entry is None and RefBlob(empty_path).header is None
    got = {e.name: e for e in read_ref_layer(str(empty_path), io.BytesIO(empty_gz))}
    assert got["etc/alias"].linkname == "/dir0/file0"
    data_gz = gzip.compress(_layer(5, 2))
    _, data = _convert(data_gz, 0x10000, tmp_path, "data")
    from drivers.nydus.builder import at_position
    rafs = Rafs(merge_ref_bootstrap([at_position(data, 0), at_position(empty, 1)], 0x10000))
    assert [b.blob_id for b in rafs.blobs] == [data.blob.source[7:]]
    assert "etc/alias" in {path for path, _ in rafs.walk()}


def test_a_chunk_ending_where_a_gzip_member_ends_decodes_as_nydusd_decodes(tmp_path):
    """eStargz-like layers cut a member right after a file's data (or a chunk of it). nydusd's decoder goes past a
    member end even when its output is complete (trailer, next header: zlib_random.rs:135-172), so such a slice
    must reach into the next member; the decoder here is nydusd's loop, so a slice that stops there fails."""
    tar = _layer(12, 9)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        ends = sorted({m.offset_data + m.size for m in tf.getmembers() if m.size} |
                      {m.offset_data + 0x10000 for m in tf.getmembers() if m.size > 0x10000})
    cuts = [0] + ends + [len(tar)]
    gz = b"".join(gzip.compress(tar[a:b], 6) for a, b in zip(cuts, cuts[1:]) if b > a)
    path, _ = _convert(gz, 0x10000, tmp_path)
    with io.BytesIO(gz) as g:
        problems = compare(list(tar_entries(io.BytesIO(tar))), list(read_ref_layer(str(path), g)), ALLOWANCES)
    assert not problems, problems[:5]


def test_oci_ref_with_a_chunk_dict_is_refused_at_config_load_and_merge_manifest_is_not():
    """zran chunks are slices of the source gzip layers: a chunk dict has nothing to deduplicate, so the pair is
    refused when the config is loaded, naming the key. merge_manifest combines (tests/e2e/test_nydus_zran_merge)."""
    from acceleration_sdk import config as config_mod
    from acceleration_sdk.errors import ConfigError

    def load(**opts):
        return config_mod.from_dict({"provider": {"source": {"reg.example.com": {}}}, "converter": {
            "driver": {"type": "nydus", "config": {"oci_ref": True, **opts}}}})

    with pytest.raises(ConfigError, match="converter.driver.config.chunk_dict_ref: cannot be combined with oci_ref"):
        load(chunk_dict_ref="reg.example.com/base/dict:v1-nydus")
    assert load(merge_manifest=True).converter.driver.config["merge_manifest"] is True
