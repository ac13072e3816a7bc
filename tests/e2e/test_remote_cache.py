"""The remote layer cache (cache_tag): another host, with an empty work_dir, reuses converted layers."""
import json
import logging
import os
import sqlite3

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import ConversionError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from acceleration_sdk.remote_cache import CACHE_KEY, CACHE_VERSION, DIFF_ID, SOURCE_DIGEST, RemoteCache
from tests.support.images import push_image, simple_tar


def cfg_for(work_dir, cache_size=200, version="", verify=False):
    return config_mod.from_dict({
        "provider": {"work_dir": str(work_dir), "cache_size": cache_size, "cache_version": version},
        "converter": {"driver": {"type": "estargz", "config": {"compression_level": 1}}, "verify": verify,
                      "rules": [{"tag_suffix": "-esgz"}, {"cache_tag": "esgz-cache"}]}})


def test_second_host_reuses_layers_from_the_remote_cache(tmp_path, registry):
    client = RegistryClient()
    repo = f"{registry.host}/rc/app"
    base = simple_tar({"base": os.urandom(50_000)})
    src = push_image(client, f"{repo}:v1", [base, simple_tar({"app": b"v1"})])
    first = convert(cfg_for(tmp_path / "host-a"), f"{repo}:v1")

    cache = json.loads(client.get_manifest(parse(f"{repo}:esgz-cache")).raw)
    assert cache["annotations"][CACHE_VERSION] == "v1"
    child = json.loads(client.get_manifest(parse(f"{repo}@{cache['manifests'][0]['digest']}")).raw)
    assert {l["annotations"][SOURCE_DIGEST] for l in child["layers"]} == {l["digest"] for l in src.manifest["layers"]}

    # a new image sharing the base layer, converted on "another host" (empty work_dir)
    push_image(client, f"{repo}:v2", [base, simple_tar({"app": b"v2"})])
    events = []
    second = convert(cfg_for(tmp_path / "host-b"), f"{repo}:v2", progress=events.append)
    converted = [e.message for e in events if e.phase == "convert" and e.message in ("cached", "converted")]
    assert converted == ["cached", "converted"] or sorted(converted) == ["cached", "converted"]
    m1 = json.loads(client.get_manifest(parse(first.target)).raw)
    m2 = json.loads(client.get_manifest(parse(second.target)).raw)
    assert m1["layers"][0] == m2["layers"][0]  # the very same converted base layer
    assert CACHE_KEY not in json.dumps(m2)  # cache bookkeeping does not leak into images

    # the cache tag itself is never converted (it would loop)
    skipped = convert(cfg_for(tmp_path / "host-b"), f"{repo}:esgz-cache")
    assert skipped.skipped and "cache" in skipped.reason


def test_cache_size_caps_records_and_version_change_starts_over(tmp_path, registry):
    client = RegistryClient()
    repo = f"{registry.host}/rc/cap"
    for i in range(3):
        push_image(client, f"{repo}:v{i}", [simple_tar({f"f{i}": os.urandom(1000)})])
        convert(cfg_for(tmp_path / "w", cache_size=2), f"{repo}:v{i}")
    cache = json.loads(client.get_manifest(parse(f"{repo}:esgz-cache")).raw)
    child = json.loads(client.get_manifest(parse(f"{repo}@{cache['manifests'][0]['digest']}")).raw)
    assert len(child["layers"]) == 2

    # v2's layer is in the cache, but a cache of another version is not trusted
    events = []
    convert(cfg_for(tmp_path / "fresh", version="v2"), f"{repo}:v2", progress=events.append)
    assert [e.message for e in events if e.phase == "convert" and e.message in ("cached", "converted")] == \
        ["converted"]
    cache = json.loads(client.get_manifest(parse(f"{repo}:esgz-cache")).raw)
    assert cache["annotations"][CACHE_VERSION] == "v2"


def test_a_malformed_cache_record_only_costs_time(tmp_path, registry):
    from acceleration_sdk.remote_cache import RemoteCache
    client = RegistryClient()
    repo = f"{registry.host}/rc/bad"
    push_image(client, f"{repo}:v1", [simple_tar({"f": b"x"})])
    cache = RemoteCache(client, parse(f"{repo}:v1"), "esgz-cache", 10)
    cache._records = {"linux/amd64": ["not a dict", {"annotations": {SOURCE_DIGEST: "sha256:x", CACHE_KEY: "k"}},
                                      {"annotations": None}]}
    assert cache.get("k", "sha256:x") is None


def _cache_rows(work_dir) -> dict[str, tuple[str, str]]:
    """The local layer cache: source layer digest -> (row key, noted diff_id)."""
    with sqlite3.connect(os.path.join(work_dir, "content", "index.db")) as db:
        return {key.rsplit("@", 1)[1]: (key, diff_id)
                for key, diff_id in db.execute("SELECT key, diff_id FROM layer_cache")}


def _convert_events(cfg, source):
    events = []
    convert(cfg, source, progress=events.append)
    return {e.layer: e.message for e in events if e.phase == "convert" and e.message in ("cached", "converted")}


def test_a_layer_that_fails_verify_leaves_both_caches_and_is_converted_afresh(tmp_path, registry, caplog):
    client = RegistryClient()
    repo = f"{registry.host}/rc/verify"
    layers = [simple_tar({"a": os.urandom(20_000)}), simple_tar({"b": b"b" * 3000})]
    src = push_image(client, f"{repo}:v1", layers)
    l0, l1 = (layer["digest"] for layer in src.manifest["layers"])
    work = tmp_path / "w"
    assert _convert_events(cfg_for(work, verify=True), f"{repo}:v1") == {l0: "converted", l1: "converted"}

    # Both caches go bad the same way: layer 0's record notes layer 1's diff_id (the blob is fine, the
    # record is not), so an image built from it has a config that does not match its first layer.
    rows = _cache_rows(work)
    wrong = rows[l1][1]
    with sqlite3.connect(os.path.join(work, "content", "index.db")) as db:
        db.execute("UPDATE layer_cache SET diff_id = ? WHERE key = ?", (wrong, rows[l0][0]))
    remote = RemoteCache(client, parse(repo), "esgz-cache", 200).load()
    for records in remote._records.values():
        for rec in records:
            if rec["annotations"][SOURCE_DIGEST] == l0:
                rec["annotations"][DIFF_ID] = wrong
    remote._dirty = True
    remote.save()

    push_image(client, f"{repo}:v2", layers)
    caplog.set_level(logging.WARNING, logger="acceleration_sdk.engine")
    with pytest.raises(ConversionError, match="verification of the pushed image failed, tag 'v2-esgz' not written"):
        convert(cfg_for(work, verify=True), f"{repo}:v2")
    assert client.head_manifest(parse(f"{repo}:v2-esgz")) is None
    forgot = [r.getMessage() for r in caplog.records if "forgot" in r.getMessage()]
    assert len(forgot) == 1 and f"made from {l0}" in forgot[0], forgot  # only the layer that failed
    assert set(_cache_rows(work)) == {l1}  # layer 1 passed the check: its entry stays
    remote = RemoteCache(client, parse(repo), "esgz-cache", 200).load()
    assert remote.get(rows[l0][0].rsplit("@", 1)[0], l0) is None
    assert remote.get(rows[l1][0].rsplit("@", 1)[0], l1) is not None

    # the retry converts layer 0 again (layer 1 still comes from the cache) and passes verify
    assert _convert_events(cfg_for(work, verify=True), f"{repo}:v2") == {l0: "converted", l1: "cached"}
    assert client.head_manifest(parse(f"{repo}:v2-esgz")) is not None
    assert _cache_rows(work)[l0][1] != wrong
