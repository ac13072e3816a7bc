"""The service with acceld's nydus driver config: Harbor-shaped webhooks -> gunicorn -> a real qcluster -> the
engine with the nydus driver -> a real registry. Before the driver existed every such task FAILED with
"unknown driver 'nydus'"; now a push completes, and a broken layer FAILs with its reason and no tag."""
from __future__ import annotations

import json

import pytest
import requests

from acceleration_sdk.registry import RegistryClient
from drivers.nydus.driver import BOOTSTRAP_ANNOTATION, NYDUS_BLOB
from tests.service.images import push_image
from tests.service.stack import manifest_exists
from tests.support import tars
from tests.support.images import push_image as push_layers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(module_stack):
    nydus = {"driver": {"type": "nydus", "config": {"work_dir": "/tmp", "with_referrer": True,
                                                    "fs_chunk_size": "0x1000"}},
             "rules": [{"tag_suffix": "-nydus"}]}
    return module_stack(converter=nydus)


def test_a_pushed_image_converts_to_nydus_through_the_service(stack, module_registry, tmp_path):
    push_image(module_registry.host, "library/app:1", tmp_path, files={"bin/app": b"#!/bin/sh\n" * 3000,
                                                                 "etc/app.conf": b"x=1\n"})
    src = stack.source("library/app:1")
    resp = stack.post(src, sync=True)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack.logs()
    task = next(t for t in stack.tasks() if t["source"] == src)
    assert task["status"] == "COMPLETED" and task["reason"] == "", task
    assert task["target"] == src + "-nydus" and task["driver"] == "nydus"
    raw = requests.get(f"http://{module_registry.host}/v2/library/app/manifests/1-nydus", timeout=30,
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).content
    manifest = json.loads(raw)
    assert [layer["mediaType"] for layer in manifest["layers"][:-1]] == [NYDUS_BLOB]
    assert manifest["layers"][-1]["annotations"][BOOTSTRAP_ANNOTATION] == "true" and "subject" in manifest


def test_a_broken_layer_fails_the_task_with_its_reason(stack, module_registry):
    repo = f"{module_registry.host}/library/broken"
    with RegistryClient() as client:
        push_layers(client, f"{repo}:1", [tars.build_tar([tars.reg("../escape", b"out of the layer")])])
    resp = stack.post(f"{repo}:1", sync=True)   # a sync caller gets the failure as a JSON body
    assert resp.status_code == 500 and resp.json()["code"] == "ERR_CONVERT_FAILED", resp.content
    assert "leaves the layer" in resp.json()["message"]
    task = next(t for t in stack.tasks() if t["source"] == f"{repo}:1")
    assert task["status"] == "FAILED" and "leaves the layer" in task["reason"], task
    assert "Traceback" not in task["reason"]
    assert not manifest_exists(module_registry.host, "library/broken:1-nydus")
