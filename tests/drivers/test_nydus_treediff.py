"""``accelctl check``'s merged view (drivers/nydus/treediff.py): the merged bootstrap the builder writes for layers
with whiteouts, opaque directories, hard links, xattrs, devices and implied directories agrees with the blobs' own
bootstraps merged again; an inode changed in the merged bootstrap, a dropped file and a wrong chunk are named."""
from __future__ import annotations

import io
import struct

from drivers.nydus import layout as L
from drivers.nydus.builder import BuildOptions, convert_layer, layer_from_blob, merge_bootstrap
from drivers.nydus.reader import Rafs
from drivers.nydus.tree import merge
from drivers.nydus.treediff import difference
from tests.drivers.nydus_oracle import three_layers

OPTS = BuildOptions(chunk_size=0x1000)


def built(tmp_path):
    layers = []
    for i, tar in enumerate(three_layers()):
        with open(tmp_path / f"blob{i}", "wb") as sink:
            layers.append(convert_layer(io.BytesIO(tar), sink, OPTS, position=i))
    boot = merge_bootstrap(layers, OPTS)
    # what the checker has: each blob's own bootstrap read back, not the builder's trees
    trees = [layer_from_blob(tmp_path / f"blob{i}", i, OPTS).root for i in range(len(layers))]
    return bytearray(boot), merge(trees)


def test_the_builders_merged_bootstrap_agrees_with_its_layers(tmp_path):
    boot, expected = built(tmp_path)
    assert difference(expected, Rafs(bytes(boot))) == []


def test_changed_inodes_and_chunks_are_named(tmp_path):
    boot, expected = built(tmp_path)
    rafs = Rafs(bytes(boot))
    nodes = dict(rafs.walk())
    struct.pack_into("<I", boot, nodes["etc/passwd"].offset + 24, 7)          # i_uid of the extended inode
    # point usr/bin/tool's first chunk index at opt/big-link's first chunk: same sizes, other data
    start = L.align(nodes["usr/bin/tool"].offset + nodes["usr/bin/tool"].isize + nodes["usr/bin/tool"].xattr_size, 8)
    other = L.align(nodes["opt/big-link"].offset + nodes["opt/big-link"].isize, 8)
    boot[start:start + 8] = boot[other:other + 8]
    problems = difference(expected, Rafs(bytes(boot)))
    assert problems == ["'etc/passwd': uid 7, the layers give 0",
                        "'usr/bin/tool': chunk 0 is not the layer's (2 chunks, the layers give 2)"]


def test_a_path_only_one_side_has_is_named(tmp_path):
    boot, expected = built(tmp_path)
    del expected.children[b"run"]
    expected.children[b"etc"].children[b"extra"] = expected.children[b"etc"].children[b"passwd"]
    assert difference(expected, Rafs(bytes(boot))) == ["'etc/extra' is missing", "'run' is in no layer",
                                                       "'run/initctl' is in no layer"]
