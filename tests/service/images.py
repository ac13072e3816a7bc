"""Small real images for the end-to-end tests: an OCI layout built here, pushed with Debian's skopeo.

``push_image(registry_host, "library/nginx:latest", tmp_path, files={...})`` builds one gzip layer
from ``files`` (name -> bytes), writes an OCI image layout and ``skopeo copy``s it to the registry.
``random_files(n, size)`` makes incompressible content, so a conversion takes measurable time.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}", len(data)


def _layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(uncompressed tar, gzip of it); fixed mtimes so the same files make the same digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(name).parent) for name in files if str(Path(name).parent) != "."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1680501800
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1680501800
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, compresslevel=1, mtime=0)


def build_layout(layout: Path, files: dict[str, bytes], tag: str = "latest") -> str:
    """Write an OCI image layout with one image under ``tag``; returns the manifest digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    tar_bytes, gz = _layer(files)
    layer_digest, layer_size = _blob(layout, gz)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]},
              "history": [{"created_by": "acceld e2e test"}]}
    config_digest, config_size = _blob(layout, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
                "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer_size}]}
    manifest_digest, manifest_size = _blob(layout, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest,
                                                 "size": manifest_size,
                                                 "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return manifest_digest


def push_image(registry_host: str, repo_tag: str, workdir: Path, files: dict[str, bytes] | None = None) -> str:
    """Build and push ``host/repo:tag``; returns the pushed manifest digest."""
    files = files or {"etc/hello.txt": b"hello from acceld's e2e tests\n", "bin/tool": os.urandom(64 * 1024)}
    layout = workdir / ("layout-" + repo_tag.replace("/", "_").replace(":", "_"))
    digest = build_layout(layout, files)
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:latest",
                    f"docker://{registry_host}/{repo_tag}"], check=True, capture_output=True, timeout=300)
    return digest


def random_files(count: int, size: int, prefix: str = "data") -> dict[str, bytes]:
    return {f"{prefix}/blob{i:03d}.bin": os.urandom(size) for i in range(count)}
