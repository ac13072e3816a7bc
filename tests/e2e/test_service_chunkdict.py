"""``chunk_dict_ref`` through the service: Harbor-shaped webhooks -> gunicorn -> a real qcluster -> the engine
with the nydus driver -> a real registry. A route's dict on the configured registry deduplicates; a route whose
dict is on a registry acceld is not configured for FAILs its task with the reason, and nothing is tagged."""
from __future__ import annotations

import json

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk.engine import convert
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.e2e.test_nydus_chunkdict import layers_a, layers_b
from tests.service.stack import manifest_exists
from tests.support.images import push_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dict_ref(module_registry, tmp_path_factory):
    """Image A converted to nydus before the service starts (the dict the route names)."""
    host = module_registry.host
    with RegistryClient() as client:
        push_image(client, f"{host}/base/dict:v1", layers_a())
    cfg = config_mod.from_dict({
        "provider": {"work_dir": str(tmp_path_factory.mktemp("dict-work")), "source": {host: {}}},
        "converter": {"driver": {"type": "nydus", "config": {"fs_chunk_size": "0x1000"}}}})
    return convert(cfg, f"{host}/base/dict:v1").target


@pytest.fixture(scope="module")
def stack(module_stack, module_registry, dict_ref):
    def route(name: str, repo: str, ref: str) -> dict:   # routes need distinct targets: the suffix is the name
        return {"name": name, "match": {"repository": [repo]}, "target": "{host}/{path}:{tag}-" + name,
                "driver": {"type": "nydus", "config": {"fs_chunk_size": "0x1000", "chunk_dict_ref": ref}}}
    converter = {"driver": {"type": "nydus", "config": {"fs_chunk_size": "0x1000"}},
                 "routes": [route("dedup", "apps/*", dict_ref),
                            route("gone", "bad/*", f"{module_registry.host}/base/dict:gone")]}
    return module_stack(converter=converter)


def test_a_route_with_a_chunk_dict_converts_against_it(stack, module_registry, dict_ref):
    with RegistryClient() as client:
        push_image(client, f"{module_registry.host}/apps/app:v1", layers_b())
        resp = stack.post(stack.source("apps/app:v1"), sync=True)
        assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack.logs()
        task = next(t for t in stack.tasks() if t["source"] == stack.source("apps/app:v1"))
        assert task["status"] == "COMPLETED" and task["reason"] == "", task
        manifest = json.loads(client.get_manifest(parse(task["target"])).raw)
        dict_blobs = json.loads(client.get_manifest(parse(dict_ref)).raw)["layers"][:-1]
    assert sorted(layer["digest"] for layer in manifest["layers"][2:-1]) == sorted(b["digest"] for b in dict_blobs)


def test_a_dict_that_is_gone_fails_the_task_with_the_reason(stack, module_registry):
    with RegistryClient() as client:
        push_image(client, f"{module_registry.host}/bad/app:v1", layers_b())
    resp = stack.post(stack.source("bad/app:v1"), sync=True)
    assert resp.status_code == 500 and resp.json()["code"] == "ERR_CONVERT_FAILED", resp.content
    task = next(t for t in stack.tasks() if t["source"] == stack.source("bad/app:v1"))
    assert task["status"] == "FAILED", task
    assert f"chunk_dict_ref {module_registry.host}/base/dict:gone" in task["reason"], task
    assert "Traceback" not in task["reason"]
    assert not manifest_exists(module_registry.host, "bad/app:v1-gone")
