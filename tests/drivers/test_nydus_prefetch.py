"""The merged bootstrap's prefetch table as nydus-image fills it (drivers/nydus/prefetch.py), read back with the
project's RAFS reader: exact inodes in pattern order, a directory pattern as the directory's one inode, patterns
covered by earlier ones dropped, the root by default, and every pattern that adds nothing logged as a warning."""
from __future__ import annotations

import io
import logging

import pytest

from acceleration_sdk.driver import load_driver
from acceleration_sdk.errors import DriverError
from drivers.nydus.builder import BuildOptions, convert_layer, merge_bootstrap
from drivers.nydus.prefetch import patterns
from drivers.nydus.reader import Rafs
from drivers.nydus.validate import validate
from tests.support import tars

LOWER = [tars.reg("usr/bin/python3", b"py" * 3000), tars.reg("usr/bin/env", b"env"), tars.reg("etc/empty"),
         tars.reg("etc/ld.so.cache", b"cache"), tars.symlink("bin", "usr/bin"), tars.reg("usr/lib/a,b.so", b"so")]
UPPER = [tars.reg("app/main.py", b"print()"), tars.reg("app/data/x", b"x"), tars.reg("usr/bin/.wh.env")]


def merged(tmp_path, prefetch) -> tuple[Rafs, dict[str, int]]:
    opts = BuildOptions(chunk_size=0x1000, prefetch=tuple(prefetch))
    layers = []
    for i, entries in enumerate((LOWER, UPPER)):
        with open(tmp_path / f"blob{i}", "wb") as sink:
            layers.append(convert_layer(io.BytesIO(tars.build_tar(entries)), sink, opts, position=i))
    rafs = Rafs(merge_bootstrap(layers, opts))
    validate(rafs, strict=True)   # nydusd's load rules, the prefetch table's place and nids included
    return rafs, {path: node.nid for path, node in rafs.walk()}


def test_table_holds_the_named_inodes_in_pattern_order(tmp_path):
    rafs, nids = merged(tmp_path, ["/etc/ld.so.cache", "/usr/bin/python3", "/app/main.py"])
    assert rafs.prefetch == [nids["etc/ld.so.cache"], nids["usr/bin/python3"], nids["app/main.py"]]


def test_a_directory_pattern_is_the_directory_inode_nydusd_walks(tmp_path):
    rafs, nids = merged(tmp_path, ["/app", "/usr/bin/"])
    assert rafs.prefetch == [nids["app"], nids["usr/bin"]]
    below = sorted(p for p in nids if p.startswith("app/"))
    assert below == ["app/data", "app/data/x", "app/main.py"]  # what nydusd prefetches for that one entry


def test_no_pattern_means_the_root_as_nydus_snapshotter_passes_it(tmp_path):
    assert patterns((), ()) == ("/",)
    rafs, nids = merged(tmp_path, patterns((), ()))
    assert rafs.prefetch == [nids[""]] == [rafs.sb.root_nid]  # nydusd: prefetch every blob whole


def test_patterns_adding_nothing_are_warned_about_not_dropped_silently(tmp_path, caplog):
    wanted = ["/usr", "/usr/bin/python3", "/missing/file", "/usr/bin/env", "/etc/empty", "/bin", "/./etc//ld.so.cache"]
    with caplog.at_level(logging.WARNING, logger="drivers.nydus"):
        rafs, nids = merged(tmp_path, wanted)
    assert rafs.prefetch == [nids["usr"], nids["bin"], nids["etc/ld.so.cache"]]
    said = [r.getMessage() for r in caplog.records]
    assert "nydus: prefetch pattern '/usr/bin/python3' is covered by the earlier pattern '/usr'" in said
    assert "nydus: prefetch pattern '/usr/bin/env' is covered by the earlier pattern '/usr'" in said
    assert "nydus: prefetch pattern '/missing/file' names nothing in the image: nydusd cannot prefetch it" in said
    assert "nydus: prefetch pattern '/etc/empty' is an empty file: nothing to prefetch" in said
    assert "nydus: prefetch pattern '/bin' is a symlink: nydusd does not follow it" in said
    assert len(said) == 5


def test_a_whited_out_file_is_missing_from_the_merged_tree(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="drivers.nydus"):
        rafs, nids = merged(tmp_path, ["/usr/bin/env", "/usr/bin/python3"])
    assert rafs.prefetch == [nids["usr/bin/python3"]]
    assert any("'/usr/bin/env' names nothing" in r.getMessage() for r in caplog.records)


def test_acceld_string_is_split_at_newlines_only_and_prioritized_files_follow(tmp_path):
    driver = load_driver("nydus", {"prefetch_patterns": "/usr/lib/a,b.so\n  /app  \n\n",
                                   "prioritized_files": ["etc/ld.so.cache", "/usr/bin/python3"]})
    assert driver.build.prefetch == ("/usr/lib/a,b.so", "/app", "/etc/ld.so.cache", "/usr/bin/python3")
    rafs, nids = merged(tmp_path, driver.build.prefetch)
    assert rafs.prefetch == [nids["usr/lib/a,b.so"], nids["app"], nids["etc/ld.so.cache"], nids["usr/bin/python3"]]
    assert load_driver("nydus").build.prefetch == ("/",)


def test_a_relative_pattern_is_refused_by_name():
    with pytest.raises(DriverError) as info:
        load_driver("nydus", {"prefetch_patterns": "/usr\nusr/bin"})
    assert str(info.value) == ("converter.driver.config.prefetch_patterns: 'usr/bin' is relative; nydus prefetch "
                               "patterns start at the root (write /usr/bin)")
