"""The service with ``merge_manifest: true``: a Harbor-shaped webhook -> gunicorn -> a real qcluster -> the engine
with the nydus driver -> a real registry; the converted tag is one OCI index serving runtimes with and without
nydus (the layouts themselves are checked in tests/e2e/test_nydus_merge.py)."""
from __future__ import annotations

import json

import pytest
import requests

from acceleration_sdk import oci
from drivers.nydus.merge import ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, EMPTY_LAYER_DIGEST
from tests.service.images import push_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(module_stack):
    nydus = {"driver": {"type": "nydus", "config": {"merge_manifest": "true", "fs_chunk_size": "0x1000"}},
             "rules": [{"tag_suffix": "-nydus"}]}
    return module_stack(converter=nydus)


def get(registry, path: str, accept: str) -> dict:
    resp = requests.get(f"http://{registry.host}/v2/{path}", headers={"Accept": accept}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_push_converts_to_a_merged_index_through_the_service(stack, module_registry, tmp_path):
    source_digest = push_image(module_registry.host, "library/web:1", tmp_path,
                               files={"bin/web": b"#!/bin/sh\n" * 3000})
    src = stack.source("library/web:1")
    resp = stack.post(src, sync=True)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack.logs()
    task = next(t for t in stack.tasks() if t["source"] == src)
    assert task["status"] == "COMPLETED" and task["reason"] == "", task

    index = get(module_registry, "library/web/manifests/1-nydus", oci.OCI_INDEX)
    assert index["mediaType"] == oci.OCI_INDEX
    plain, nydus = index["manifests"]
    assert "artifactType" not in plain and nydus["artifactType"] == ARTIFACT_TYPE
    assert plain["platform"] == nydus["platform"] == {"architecture": "amd64", "os": "linux"}
    accept = ", ".join(oci.MANIFEST_TYPES)
    plain_m = get(module_registry, f"library/web/manifests/{plain['digest']}", accept)
    nydus_m = get(module_registry, f"library/web/manifests/{nydus['digest']}", accept)
    assert plain_m["layers"][0]["digest"] == EMPTY_LAYER_DIGEST and len(plain_m["layers"]) == 2
    source = get(module_registry, f"library/web/manifests/{source_digest}", accept)
    assert plain_m["layers"][1:] == source["layers"]
    assert nydus_m["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    sizes = [m["config"]["size"] + sum(x["size"] for x in m["layers"]) for m in (plain_m, nydus_m)]
    assert task["target_size"] == sum(sizes), task
    assert json.dumps(index).count(ARTIFACT_TYPE) == 1
