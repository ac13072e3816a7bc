"""Benchmark inputs, built once and cached: a Debian bookworm minbase rootfs layer and a 1 GiB layer."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import subprocess
import tarfile
import zlib

from acceleration_sdk import oci
from acceleration_sdk.reference import parse

SUITE = "bookworm"


def apt_mirror() -> str:
    """The Debian mirror apt already uses (deb822 .sources or one-line sources.list); never hard-coded."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in open(path).read().split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#"))
            suites = fields.get("Suites", "").split()
            if SUITE in suites:
                return fields["URIs"].split()[0].strip()
    for path in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.list")]:
        if os.path.exists(path):
            for line in open(path):
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    return parts[1]
    raise SystemExit(f"no apt source for Debian {SUITE} found; cannot run debootstrap")


def _gzip_file(tar_path: str, out_path: str, level: int) -> None:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    with open(tar_path, "rb") as src, open(out_path + ".tmp", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(comp.compress(chunk))
        dst.write(comp.flush())
    os.replace(out_path + ".tmp", out_path)


def _sidecar(tar_path: str, gz_path: str) -> str:
    h = hashlib.sha256()
    with open(tar_path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    with open(gz_path + ".json", "w") as fh:
        json.dump({"diff_id": "sha256:" + h.hexdigest(), "uncompressed": os.path.getsize(tar_path)}, fh)
    os.unlink(tar_path)
    return gz_path


def build_rootfs(cache: str) -> str:
    gz = os.path.join(cache, "rootfs.tar.gz")
    if os.path.exists(gz) and os.path.exists(gz + ".json"):
        return gz
    rootfs = os.path.join(cache, "rootfs")
    if not os.path.exists(os.path.join(rootfs, "etc", "os-release")):
        print(f"debootstrap --variant=minbase {SUITE} (once; cached in bench/cache)", flush=True)
        subprocess.run(["debootstrap", "--variant=minbase", SUITE, rootfs, apt_mirror()], check=True,
                       stdout=subprocess.DEVNULL)
    tar = os.path.join(cache, "rootfs.tar")
    subprocess.run(["tar", "--sort=name", "--numeric-owner", "--xattrs", "--mtime=2024-01-01", "-C", rootfs,
                    "-cf", tar, "."], check=True)
    _gzip_file(tar, gz, 6)  # level 6: what docker/buildkit push
    return _sidecar(tar, gz)


def build_big_layer(cache: str, size: int = 1 << 30) -> str:
    gz = os.path.join(cache, "big.tar.gz")
    if os.path.exists(gz) and os.path.exists(gz + ".json"):
        return gz
    tar = os.path.join(cache, "big.tar")
    piece = 16 << 20
    print("building a 1 GiB layer (once; cached in bench/cache)", flush=True)
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(size // piece):
            # half random, half text-like: compresses like real binaries and data
            data = os.urandom(piece // 2) + (b"acceld benchmark line %d\n" % i) * (piece // 2 // 25)
            data = data[:piece].ljust(piece, b"\0")
            info = tarfile.TarInfo(f"data/file-{i:03d}.bin")
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tf.addfile(info, io.BytesIO(data))
    _gzip_file(tar, gz, 1)
    return _sidecar(tar, gz)


def push_layer_image(client, ref: str, layer_gz: str) -> str:
    """A one-layer OCI image from a cached .tar.gz; returns the reference."""
    target = parse(ref)
    meta = json.load(open(layer_gz + ".json"))
    h = hashlib.sha256()
    with open(layer_gz, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    layer = {"mediaType": oci.OCI_LAYER_GZIP, "digest": "sha256:" + h.hexdigest(), "size": os.path.getsize(layer_gz)}
    client.push_blob(target, layer["digest"], layer["size"], layer_gz)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [meta["diff_id"]]}}).encode()
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    client.push_blob(target, cdigest, len(config), io.BytesIO(config))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                           "config": {"mediaType": oci.OCI_CONFIG, "digest": cdigest, "size": len(config)},
                           "layers": [layer]}).encode()
    client.put_manifest(target, manifest, oci.OCI_MANIFEST)
    return ref
