"""converter.routes against real registries: two htpasswd registries on loopback with different credentials.

- The engine writes a route's explicit target with the route's driver: another project on the same host
  (unchanged blobs arrive by cross-repository mount, the registry's log shows it) and another host (its
  own credentials; unchanged blobs are copied, since no registry mounts across hosts).
- The whole service (gunicorn, a real qcluster): one push makes one task per matching route, both
  complete; pushes of the outputs, on either host, make no task and are counted as ignored.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
import requests
import yaml

from acceleration_sdk import config as config_mod
from acceleration_sdk import oci
from acceleration_sdk.engine import convert
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.service.stack import AUTH, ServiceStack
from tests.support.images import push_image, push_index, simple_tar
from tests.support.registry import RegistryServer
from tests.support.stackctl import reconfigure

pytestmark = pytest.mark.slow

TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
CREDS_A, CREDS_B = ("alice", "a-secret-1"), ("bob", "b-secret-2")


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    a = RegistryServer(tmp_path_factory.mktemp("reg-a"), htpasswd=dict([CREDS_A])).start()
    b = RegistryServer(tmp_path_factory.mktemp("reg-b"), htpasswd=dict([CREDS_B])).start()
    yield a, b
    b.stop()
    a.stop()


def routes_for(a, b) -> list[dict]:
    return [
        {"name": "accel-project", "match": {"repository": ["library/*"], "tag": ["v*"]},
         "target": "{host}/{project}-accel/{rest}:{tag}-esgz"},
        {"name": "mirror-zc", "match": {"repository": ["library/*"]},
         "target": f"{b.host}/{{path}}:{{tag}}-zc",
         "driver": {"type": "estargz", "config": {"compression": "zstdchunked", "compression_level": 1}}},
    ]


def sources(a, b) -> dict:
    return {a.host: {"auth": basic(*CREDS_A), "webhook": {"auth_header": AUTH}},
            b.host: {"auth": basic(*CREDS_B), "webhook": {"auth_header": AUTH}}}


def seed(client, repo: str) -> None:
    """A two-platform index with a buildx attestation: the attestation's blobs are unchanged source blobs."""
    amd = push_image(client, f"{repo}:amd", [simple_tar({"amd": b"64" * 1000})], tag=False)
    arm = push_image(client, f"{repo}:arm", [simple_tar({"arm": b"64" * 1000})], platform=("linux", "arm64"),
                     tag=False)
    push_index(client, f"{repo}:v1", [amd, arm], attest=arm)


def manifests(client, ref: str) -> list[dict]:
    index = json.loads(client.get_manifest(parse(ref)).raw)
    repo = ref.rsplit(":", 1)[0]
    return [json.loads(client.get_manifest(parse(f"{repo}@{m['digest']}")).raw) for m in index["manifests"]]


def test_engine_writes_each_route_target_with_its_driver(hosts, tmp_path):
    a, b = hosts
    cfg = config_mod.from_dict({"provider": {"work_dir": str(tmp_path / "work"), "source": sources(a, b)},
                                "converter": {"driver": {"type": "estargz", "config": {"compression_level": 1}},
                                              "routes": routes_for(a, b)}})
    src = f"{a.host}/library/app:v1"
    with RegistryClient(cfg) as client:
        seed(client, f"{a.host}/library/app")
        for route in cfg.converter.routes:
            target = route.render(parse(src))
            result = convert(cfg, src, target=target, driver_config=route.driver or cfg.converter.driver,
                             client=client)
            assert not result.skipped and result.target == str(target)
        same_host = manifests(client, f"{a.host}/library-accel/app:v1-esgz")
        other_host = manifests(client, f"{b.host}/library/app:v1-zc")
    # each route's format: eStargz (gzip) in the accel project, zstd:chunked on the other host
    assert all(TOC_DIGEST in layer["annotations"] and layer["mediaType"] == oci.OCI_LAYER_GZIP
               for m in same_host[:2] for layer in m["layers"])
    assert all(TOC_DIGEST in layer["annotations"] and layer["mediaType"] == oci.OCI_LAYER_ZSTD
               for m in other_host[:2] for layer in m["layers"])
    # the attestation's unchanged blobs: mounted on the same host, uploaded to the other one
    att_blob = same_host[2]["layers"][0]["digest"]
    assert f"/v2/library-accel/app/blobs/uploads/?from=library%2Fapp&mount={att_blob.replace(':', '%3A')}" \
        in a.log() or f"mount={att_blob.replace(':', '%3A')}&from=library%2Fapp" in a.log()
    assert "mount=" not in b.log()
    # nothing was pushed to the source repository, and host B never saw host A's user (nor the reverse)
    assert '"PUT /v2/library/app/manifests/v1-' not in a.log()
    assert CREDS_A[0] not in b.log() and CREDS_B[0] not in a.log()


def test_accelctl_convert_route(hosts, tmp_path):
    a, b = hosts
    data = {"provider": {"work_dir": str(tmp_path / "work"), "source": sources(a, b)},
            "converter": {"routes": routes_for(a, b)}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    cfg = config_mod.from_dict(data)
    with RegistryClient(cfg) as client:
        push_image(client, f"{a.host}/library/cli:v2", [simple_tar({"f": b"x" * 5000})])

    def accelctl(*args):
        return subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", "convert", "-q", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)

    out = accelctl("--route", "mirror-zc", f"{a.host}/library/cli:v2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{b.host}/library/cli:v2-zc"
    with RegistryClient(cfg) as client:
        layer = json.loads(client.get_manifest(parse(f"{b.host}/library/cli:v2-zc")).raw)["layers"][0]
    assert layer["mediaType"] == oci.OCI_LAYER_ZSTD
    out = accelctl("--route", "nope", f"{a.host}/library/cli:v2")
    assert out.returncode == 2 and "--route: unknown route 'nope' (converter.routes: accel-project, mirror-zc)" \
        in out.stderr


@pytest.fixture(scope="module")
def stack(hosts, tmp_path_factory):
    a, b = hosts
    s = ServiceStack(tmp_path_factory.mktemp("stack"), a.host, public_list=True)

    def routed(cfg):
        cfg["provider"]["source"] = sources(a, b)
        cfg["converter"]["routes"] = routes_for(a, b)
        cfg["converter"].pop("rules")
    reconfigure(s, routed)
    s.start()
    yield s
    s.stop()


def ignored(stack) -> float:
    text = requests.get(stack.url + "/metrics", timeout=30).text
    return float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("acceld_pushes_ignored_total ")))


def test_service_one_task_per_route_and_outputs_never_trigger(hosts, stack, tmp_path):
    a, b = hosts
    cfg = config_mod.from_dict({"provider": {"source": sources(a, b)}})
    with RegistryClient(cfg) as client:
        seed(client, f"{a.host}/library/web")
    src = f"{a.host}/library/web:v1"
    resp = stack.post(src, sync=True)
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n'), stack.logs()
    tasks = {t["route"]: t for t in stack.tasks() if t["source"] == src}
    assert set(tasks) == {"accel-project", "mirror-zc"}
    assert all(t["status"] == "COMPLETED" for t in tasks.values()), tasks
    assert tasks["accel-project"]["target"] == f"{a.host}/library-accel/web:v1-esgz"
    assert tasks["mirror-zc"]["target"] == f"{b.host}/library/web:v1-zc"
    with RegistryClient(cfg) as client:
        assert client.head_manifest(parse(tasks["mirror-zc"]["target"])) is not None
        assert client.head_manifest(parse(tasks["accel-project"]["target"])) is not None

    # accelctl task list shows each task's route and target (STATUS stays the fourth field for awk)
    out = subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", "task", "list",
                          "--addr", stack.url.removeprefix("http://")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "STATUS", "SOURCE", "ROUTE", "TARGET", "REASON"]
    # ID, CREATED (date, time), STATUS, SOURCE, ROUTE, TARGET
    rows = {f[5]: f for f in (line.split() for line in lines[1:]) if f[4] == src}
    assert set(rows) == {"accel-project", "mirror-zc"}, out.stdout
    for name, fields in rows.items():
        assert fields[0] == str(tasks[name]["id"]) and fields[3] == "COMPLETED"
        assert fields[5:7] == [name, tasks[name]["target"]], out.stdout

    # Harbor fires the webhook for our own pushes: none of them converts, on either host
    before, count = ignored(stack), len(stack.tasks())
    resp = stack.post(tasks["accel-project"]["target"], tasks["mirror-zc"]["target"],
                      f"{a.host}/library-accel/web:handmade", f"{a.host}/team/web:v1")  # the last: no route
    assert resp.status_code == 200
    assert len(stack.tasks()) == count
    assert ignored(stack) == before + 4


def test_remote_cache_lives_in_the_route_target_repository(hosts, tmp_path):
    a, b = hosts
    data = {"provider": {"source": sources(a, b)},
            "converter": {"driver": {"type": "estargz", "config": {"compression_level": 1}},
                          "rules": [{"cache_tag": "accel-cache"}], "routes": routes_for(a, b)[:1]}}
    src = f"{a.host}/library/cached:v1"
    events = []
    for n in (1, 2):  # the second run: an empty work_dir, as another acceld host would have
        data["provider"]["work_dir"] = str(tmp_path / f"work{n}")
        cfg = config_mod.from_dict(data)
        route = cfg.converter.routes[0]
        with RegistryClient(cfg) as client:
            if n == 1:
                push_image(client, src, [simple_tar({"big": b"y" * 50000})])
            convert(cfg, src, target=route.render(parse(src)), client=client, progress=events.append)
            if n == 1:
                # the cache names converted blobs, so it sits where they are: the target repository
                assert client.head_manifest(parse(f"{a.host}/library-accel/cached:accel-cache")) is not None
                assert client.head_manifest(parse(f"{a.host}/library/cached:accel-cache")) is None
    assert [e.message for e in events if e.phase == "convert" and e.message in ("converted", "cached")] == [
        "converted", "cached"]
