"""Push many small images fast: the OCI layout of ``tests.service.images`` uploaded over plain HTTP.

skopeo takes ~0.3 s per image; a burst test needs fifty. Here each blob is a ``POST`` that opens an
upload and one ``PUT …?digest=`` with the whole blob, and the manifest one ``PUT``, over one keep-alive
session: a few milliseconds per image.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import requests

from tests.service.images import OCI_MANIFEST, build_layout


def push_small_image(registry_host: str, repo_tag: str, files: dict[str, bytes], *,
                     session: requests.Session | None = None, auth: tuple[str, str] | None = None,
                     bearer: str | None = None) -> str:
    """Build one single-layer image from ``files`` and push it as ``host/repo:tag``; returns its digest.

    ``auth`` is Basic credentials (an htpasswd registry), ``bearer`` a token with push scope (a token registry).
    """
    own = session is None
    session = session or requests.Session()
    repo, tag = repo_tag.rsplit(":", 1)
    base = f"http://{registry_host}/v2/{repo}"
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    try:
        with tempfile.TemporaryDirectory(prefix="quickpush-") as tmp:
            layout = Path(tmp)
            digest = build_layout(layout, files)
            manifest = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
            doc = json.loads(manifest)
            for desc in [doc["config"], *doc["layers"]]:
                data = (layout / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]).read_bytes()
                resp = session.post(f"{base}/blobs/uploads/", auth=auth, headers=headers, timeout=60)
                assert resp.status_code == 202, (resp.status_code, resp.text)
                location = urljoin(f"http://{registry_host}/", resp.headers["Location"])
                resp = session.put(location, params={"digest": desc["digest"]}, data=data, auth=auth, timeout=60,
                                   headers={**headers, "Content-Type": "application/octet-stream"})
                assert resp.status_code == 201, (resp.status_code, resp.text)
            resp = session.put(f"{base}/manifests/{tag}", data=manifest,
                               headers={**headers, "Content-Type": OCI_MANIFEST},
                               auth=auth, timeout=60)
            assert resp.status_code == 201, (resp.status_code, resp.text)
            return digest
    finally:
        if own:
            session.close()
