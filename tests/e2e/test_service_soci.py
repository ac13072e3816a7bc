"""The service with the soci driver: Harbor-shaped webhooks -> gunicorn -> a real qcluster -> the engine with
the soci driver -> a real registry, and upstream's soci-verify on the result; a layer that claims gzip but is
not FAILs the task with its reason and no tag."""
from __future__ import annotations

import json
import random

import pytest

from acceleration_sdk import oci
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.service.stack import manifest_exists
from tests.support import soci_tools
from tests.support.images import push_image, simple_tar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(module_stack):
    soci = {"driver": {"type": "soci", "config": {"span_size": 65536, "min_layer_size": 100000,
                                                  "optimizations": ["xattr"]}},
            "rules": [{"tag_suffix": "-soci"}]}
    return module_stack(converter=soci)


def _big_tar() -> bytes:
    rnd = random.Random(1)
    return simple_tar({f"usr/lib/f{i}": rnd.randbytes(40_000) for i in range(10)})


def test_a_pushed_image_converts_to_soci_through_the_service(stack, module_registry):
    repo = f"{module_registry.host}/library/app"
    with RegistryClient() as client:
        push_image(client, f"{repo}:1", [_big_tar(), simple_tar({"etc/app.conf": b"x=1\n"})])
    resp = stack.post(f"{repo}:1", sync=True)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack.logs()
    task = next(t for t in stack.tasks() if t["source"] == f"{repo}:1")
    assert task["status"] == "COMPLETED" and task["reason"] == "", task
    assert task["target"] == f"{repo}:1-soci" and task["driver"] == "soci"
    proc = soci_tools.soci_verify(f"{repo}:1-soci", "-strict")
    assert soci_tools.last_line(proc).startswith("soci: PASS"), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_layer_that_is_not_gzip_fails_the_task_with_its_reason(stack, module_registry):
    repo = f"{module_registry.host}/library/broken"
    with RegistryClient() as client:
        src = push_image(client, f"{repo}:1", [_big_tar()], compression="")
        manifest = dict(src.manifest, layers=[dict(src.manifest["layers"][0], mediaType=oci.OCI_LAYER_GZIP)])
        client.put_manifest(parse(f"{repo}:1"), json.dumps(manifest).encode(), oci.OCI_MANIFEST)
    resp = stack.post(f"{repo}:1", sync=True)
    assert resp.status_code == 500 and resp.json()["code"] == "ERR_CONVERT_FAILED", resp.content
    task = next(t for t in stack.tasks() if t["source"] == f"{repo}:1")
    assert task["status"] == "FAILED" and "not a valid gzip stream" in task["reason"], task
    assert "Traceback" not in task["reason"]
    assert not manifest_exists(module_registry.host, "library/broken:1-soci")
