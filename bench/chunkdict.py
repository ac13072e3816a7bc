"""The nydus ``chunk_dict_ref`` saving on two Debian root file systems that share most files.

    .venv/bin/python bench/chunkdict.py [--chunk-size 0x100000] [--cache DIR]

A is ``make bench``'s bookworm minbase rootfs (bench/cache/rootfs.tar.gz); B is minbase plus curl,
ca-certificates and less (debootstrap once, cached as bench/cache/rootfs-curl.tar.gz). Both are pushed to a
loopback registry as one-layer images; A is converted to nydus, then B twice: without a dict, and with A's
nydus image as ``chunk_dict_ref``. Prints B's own blob sizes, the dict blob bytes B's manifest lists, the
times, and the bytes a runtime that already has A pulls for B; writes the JSON under bench/results/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from acceleration_sdk import config as config_mod  # noqa: E402
from acceleration_sdk.engine import convert  # noqa: E402
from acceleration_sdk.reference import parse  # noqa: E402
from acceleration_sdk.registry import RegistryClient  # noqa: E402
from bench.images import SUITE, _gzip_file, _sidecar, apt_mirror, build_rootfs, push_layer_image  # noqa: E402
from tests.support.registry import RegistryServer  # noqa: E402

EXTRA = ("curl", "ca-certificates", "less")   # what variant B adds to minbase


def build_variant(cache: str) -> str:
    gz = os.path.join(cache, "rootfs-curl.tar.gz")
    if os.path.exists(gz) and os.path.exists(gz + ".json"):
        return gz
    rootfs = os.path.join(cache, "rootfs-curl")
    if not os.path.exists(os.path.join(rootfs, "etc", "os-release")):
        print(f"debootstrap --variant=minbase --include={','.join(EXTRA)} {SUITE} (once)", flush=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(EXTRA)}", SUITE, rootfs,
                        apt_mirror()], check=True, stdout=subprocess.DEVNULL)
    tar = os.path.join(cache, "rootfs-curl.tar")
    subprocess.run(["tar", "--sort=name", "--numeric-owner", "--xattrs", "--mtime=2024-01-01", "-C", rootfs,
                    "-cf", tar, "."], check=True)
    _gzip_file(tar, gz, 6)
    return _sidecar(tar, gz)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-size", default="0x100000")
    parser.add_argument("--cache", default=os.path.join(ROOT, "bench", "cache"))
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    rootfs_a, rootfs_b = build_rootfs(args.cache), build_variant(args.cache)
    with tempfile.TemporaryDirectory(prefix="chunkdict-bench-") as tmp, \
            RegistryServer(os.path.join(tmp, "registry")) as registry, RegistryClient() as client:
        host = registry.host

        def cfg(work: str, suffix: str, **opts):
            return config_mod.from_dict({
                "provider": {"work_dir": os.path.join(tmp, work), "source": {host: {}}},
                "converter": {"driver": {"type": "nydus", "config": {"fs_chunk_size": args.chunk_size, **opts}},
                              "rules": [{"tag_suffix": suffix}]}})

        push_layer_image(client, f"{host}/debian/minbase:v1", rootfs_a)
        push_layer_image(client, f"{host}/debian/curl:v1", rootfs_b)
        dict_image = convert(cfg("a", "-nydus"), f"{host}/debian/minbase:v1")
        started = time.monotonic()
        plain = convert(cfg("plain", "-nydus"), f"{host}/debian/curl:v1")
        plain_s = time.monotonic() - started
        started = time.monotonic()
        deduped = convert(cfg("dict", "-dict", chunk_dict_ref=dict_image.target), f"{host}/debian/curl:v1")
        dict_s = time.monotonic() - started

        def layers(ref: str) -> list[dict]:
            return json.loads(client.get_manifest(parse(ref)).raw)["layers"]

        a_blobs = {layer["digest"] for layer in layers(dict_image.target)[:-1]}
        plain_layers, dict_layers = layers(plain.target), layers(deduped.target)
        own = [layer for layer in dict_layers[:-1] if layer["digest"] not in a_blobs]
        linked = [layer for layer in dict_layers[:-1] if layer["digest"] in a_blobs]
        out = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "chunk_size": args.chunk_size,
            "source_gz": {"a": os.path.getsize(rootfs_a), "b": os.path.getsize(rootfs_b)},
            "a_blobs": sum(layer["size"] for layer in layers(dict_image.target)[:-1]),
            "b_plain_blobs": sum(layer["size"] for layer in plain_layers[:-1]),
            "b_plain_bootstrap_layer": plain_layers[-1]["size"],
            "b_dict_own_blobs": sum(layer["size"] for layer in own),
            "b_dict_linked_blobs": sum(layer["size"] for layer in linked),
            "b_dict_bootstrap_layer": dict_layers[-1]["size"],
            "seconds": {"b_plain": round(plain_s, 2), "b_dict": round(dict_s, 2)},
        }
        print(json.dumps(out, indent=2))
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        stamp = datetime.datetime.fromisoformat(out["date"]).strftime("%Y%m%dT%H%M%SZ")
        name = f"chunkdict-{stamp}.json"
        with open(os.path.join(ROOT, "bench", "results", name), "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
