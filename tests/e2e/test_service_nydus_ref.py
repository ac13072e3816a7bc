"""The service with acceld's misc/config/config.nydus.ref.yaml (``oci_ref: true``, ``with_referrer: true``, rules
``-nydus-oci-ref`` and ``cache_tag: nydus-cache``): a skopeo-pushed image -> Harbor-shaped webhook -> gunicorn ->
a real qcluster -> the nydus driver -> the real registry. The converted image is read back from the registry and
every file is rebuilt from the source gzip layer through the zran blob alone."""
from __future__ import annotations

import hashlib
import io
import json

import pytest

from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from drivers.nydus.refblob import REF_ANNOTATION, read_ref_layer
from tests.e2e.test_nydus_zran_convert import check_ref_image, download
from tests.service.images import push_image, random_files
from tests.service.stack import manifest_exists

pytestmark = pytest.mark.slow

# converter section of acceld's config.nydus.ref.yaml (only worker counts differ)
ACCELD_REF = {"driver": {"type": "nydus", "config": {"work_dir": "/tmp", "oci_ref": True, "with_referrer": True}},
              "rules": [{"tag_suffix": "-nydus-oci-ref"}, {"cache_tag": "nydus-cache"}]}


@pytest.fixture(scope="module")
def stack(module_stack):
    return module_stack(converter=ACCELD_REF)  # on tests/e2e/conftest.py's module_registry


def test_acceld_ref_config_converts_through_the_service(stack, module_registry, tmp_path):
    registry = module_registry
    files = {"etc/app.conf": b"x=1\n", "bin/app": b"#!/bin/sh\n" * 30000, **random_files(6, 300_000)}
    push_image(registry.host, "library/zran:1", tmp_path, files=files)
    src = stack.source("library/zran:1")
    resp = stack.post(src, sync=True)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack.logs()
    task = next(t for t in stack.tasks() if t["source"] == src)
    assert task["status"] == "COMPLETED" and task["reason"] == "", task
    assert task["target"] == src + "-nydus-oci-ref" and task["driver"] == "nydus"
    # a zran image is small beside its source: the gzip layers stay where they are
    assert task["target_size"] < task["source_size"], task

    repo = f"{registry.host}/library/zran"
    with RegistryClient() as client:
        manifest = json.loads(client.get_manifest(parse(f"{repo}:1-nydus-oci-ref")).raw)
        source_raw = client.get_manifest(parse(f"{repo}:1")).raw
        source = json.loads(source_raw)
        assert manifest["subject"]["digest"] == "sha256:" + hashlib.sha256(source_raw).hexdigest()  # with_referrer
        check_ref_image(client, repo, manifest, source, tmp_path)
        seen = {}
        for i, layer in enumerate(manifest["layers"][:-1]):
            path = tmp_path / f"layer{i}"
            download(client, repo, layer["digest"], path)
            gz = io.BytesIO(download(client, repo, layer["annotations"][REF_ANNOTATION]))
            for entry in read_ref_layer(str(path), gz):
                if entry.kind == "reg":
                    seen[entry.name] = entry.data
    assert {name: seen.get(name) for name in files} == files
    assert manifest_exists(registry.host, "library/zran:nydus-cache")       # the remote cache was written
