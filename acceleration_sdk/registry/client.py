"""RegistryClient: the distribution-spec calls acceld needs, on one requests.Session.

Reads ask for ``pull`` on the repository, writes for ``pull,push``, a cross-repository mount also for
``pull`` on the source, deletes for ``delete``. Every error is an :mod:`acceleration_sdk.errors` class
whose message names the host and repository and never a credential.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import BinaryIO, Callable

import requests

from .. import oci
from ..config import Config
from ..errors import DigestMismatchError, RegistryError, UnreachableError
from ..reference import Reference
from . import blobs
from .auth import repository_scope
from .credentials import CredentialStore
from .stream_upload import StreamingUpload
from .transport import WIRE_ERRORS, Transport, new_session, wire_reason

log = logging.getLogger("acceleration_sdk.registry")

MAX_MANIFEST = 4 << 20  # 4 MiB: the manifest size limit of distribution and containerd
MAX_TAG_PAGES = 1000  # tags/list pages followed before we assume a registry is looping
TAGS_PAGE = 1000  # tags asked for per page


@dataclasses.dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest or index as the registry sent it: the exact bytes, their media type and digest."""

    raw: bytes = dataclasses.field(repr=False)
    media_type: str
    digest: str

    @property
    def descriptor(self) -> oci.Descriptor:
        return oci.Descriptor(media_type=self.media_type, digest=self.digest, size=len(self.raw))


def _repo_ref(ref: Reference) -> Reference:
    return dataclasses.replace(ref, tag="", digest="")


class RegistryClient:
    """A distribution-spec client; see :mod:`.transport` for policies. Thread-safe for concurrent calls.

    Without ``session`` the client makes one with urllib3 ``Retry`` mounted (``retries``, ``backoff``;
    connection errors, 429 with ``Retry-After``, 5xx, for idempotent methods). A ``session`` you pass is
    used as it is: mount your own adapters (``transport.new_session`` builds ours). Whole-operation
    retries of uploads and manifest PUTs use ``retries``/``backoff`` either way.
    """

    def __init__(self, config: Config | None = None, *, session: requests.Session | None = None,
                 docker_config: str | None = None, timeout: float = 60.0, retries: int = 5,
                 backoff: float = 0.5, chunk_size: int = 16 << 20, monolithic_max: int = 8 << 20):
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("retries and backoff cannot be negative, timeout must be positive")
        self._owns_session = session is None
        self.session = session if session is not None else new_session(retries, backoff)
        self.chunk_size = chunk_size
        self.monolithic_max = monolithic_max
        self._transport = Transport(self.session, CredentialStore(config, docker_config), timeout=timeout,
                                    retries=retries, backoff=backoff)

    def __repr__(self) -> str:
        return f"RegistryClient(chunk_size={self.chunk_size}, monolithic_max={self.monolithic_max})"

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ manifests

    def get_manifest(self, ref: Reference) -> FetchedManifest:
        """GET the manifest or index ``ref`` names; verify it against ``ref.digest`` when there is one."""
        t = self._transport
        what = f"pull manifest {ref}"
        scopes = (repository_scope(ref.repository, "pull"),)

        broken: BaseException | None = None
        for attempt in range(t.retries + 1):
            if attempt:
                time.sleep(t.delay(attempt))
            resp = t.request("GET", ref, f"/v2/{ref.repository}/manifests/{ref.object}", scopes=scopes,
                             what=what, headers={"Accept": oci.ACCEPT})
            with resp:
                if resp.status_code != 200:
                    raise t.error(resp, ref, what, unknown="manifest unknown")
                declared = resp.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > MAX_MANIFEST:
                    raise RegistryError(f"{what}: the manifest is {declared} bytes, more than the "
                                        f"{MAX_MANIFEST} allowed", reference=str(ref))
                try:
                    raw = resp.raw.read(MAX_MANIFEST + 1, decode_content=True)
                except WIRE_ERRORS as exc:
                    # urllib3 retries only until the headers arrive; a body that broke off is read again.
                    broken = exc
                    log.debug("%s: %s; reading it again", what, wire_reason(exc))
                    continue
                header_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            break
        else:
            raise UnreachableError(f"{what}: {ref.api_host}: {wire_reason(broken)}", reference=str(ref)) from broken
        if len(raw) > MAX_MANIFEST:
            raise RegistryError(f"{what}: the manifest is more than {MAX_MANIFEST} bytes", reference=str(ref))
        media_type = oci.sniff_media_type(raw, header_type)
        oci.check_media_type(media_type, str(ref))
        digest = self._digest(raw, ref.digest or "sha256:")
        if ref.digest and digest != ref.digest:
            raise DigestMismatchError(f"manifest {ref}: the registry sent content that hashes to {digest}",
                                      digest=ref.digest, actual=digest)
        return FetchedManifest(raw=raw, media_type=media_type, digest=digest)

    def head_manifest(self, ref: Reference) -> oci.Descriptor | None:
        """The descriptor of ``ref`` from a HEAD, or ``None`` when the registry does not know it."""
        t = self._transport
        what = f"check manifest {ref}"
        resp = t.request("HEAD", ref, f"/v2/{ref.repository}/manifests/{ref.object}",
                         scopes=(repository_scope(ref.repository, "pull"),), what=what,
                         headers={"Accept": oci.ACCEPT})
        with resp:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise t.error(resp, ref, what, unknown="manifest unknown")
            digest = resp.headers.get("Docker-Content-Digest", "")
            size = resp.headers.get("Content-Length", "")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest or not size.isdigit() or not media_type:
            # Some registries leave headers out of HEAD answers; the manifest itself tells all.
            return self.get_manifest(ref).descriptor
        return oci.Descriptor(media_type=media_type, digest=digest, size=int(size))

    def put_manifest(self, ref: Reference, raw: bytes, media_type: str) -> str:
        """PUT ``raw`` at ``ref.object`` (tag or digest); returns its digest."""
        t = self._transport
        what = f"push manifest {ref}"
        digest = self._digest(raw, ref.digest or "sha256:")
        if ref.digest and digest != ref.digest:
            raise DigestMismatchError(f"manifest {ref}: the content to push hashes to {digest}",
                                      digest=ref.digest, actual=digest)
        scopes = (repository_scope(ref.repository, "pull,push"),)

        def attempt(_n: int) -> str:
            resp = t.request("PUT", ref, f"/v2/{ref.repository}/manifests/{ref.object}", scopes=scopes,
                             what=what, headers={"Content-Type": media_type}, body=bytes(raw))
            with resp:
                if resp.status_code not in (200, 201, 202):
                    raise t.error(resp, ref, what, unknown="manifest unknown")
                return resp.headers.get("Docker-Content-Digest", "")

        echoed = t.retrying(attempt, what)
        if echoed and echoed.split(":", 1)[0] == digest.split(":", 1)[0] and echoed != digest:
            raise DigestMismatchError(f"manifest {ref}: {ref.api_host} stored it as {echoed}",
                                      digest=digest, actual=echoed)
        return digest

    def delete_manifest(self, ref: Reference, digest: str) -> None:
        """DELETE the manifest ``digest`` from ``ref``'s repository (tags pointing at it go with it)."""
        t = self._transport
        target = ref.with_digest(digest)
        what = f"delete manifest {target}"
        resp = t.request("DELETE", ref, f"/v2/{ref.repository}/manifests/{digest}",
                         scopes=(repository_scope(ref.repository, "delete"),), what=what)
        with resp:
            if resp.status_code not in (200, 202, 204):
                raise t.error(resp, target, what, unknown="manifest unknown")

    def referrers(self, ref: Reference, subject: str) -> list[oci.Descriptor] | None:
        """The OCI 1.1 referrers API: the manifests whose ``subject`` is ``subject`` in ``ref``'s repository,
        or ``None`` when the registry has no referrers API (a 404: distribution 2.8, Harbor < 2.8; an API
        registry answers an unknown subject with 200 and an empty index). :mod:`acceleration_sdk.referrers`
        falls back to the referrers tag then."""
        t = self._transport
        repo = _repo_ref(ref)
        what = f"list referrers of {repo.with_digest(subject)}"
        resp = t.request("GET", ref, f"/v2/{ref.repository}/referrers/{subject}",
                         scopes=(repository_scope(ref.repository, "pull"),), what=what,
                         headers={"Accept": oci.OCI_INDEX})
        with resp:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise t.error(resp, repo, what)
            try:
                raw = resp.raw.read(MAX_MANIFEST + 1, decode_content=True)
                listed = json.loads(raw).get("manifests") or []
                return [oci.Descriptor.from_dict(d) for d in listed]
            except (ValueError, AttributeError, *WIRE_ERRORS) as exc:
                raise RegistryError(f"{what}: {ref.api_host} sent an unreadable referrers list",
                                    reference=str(repo)) from exc

    def list_tags(self, ref: Reference) -> list[str]:
        """All tags of ``ref``'s repository, following ``Link: <…>; rel="next"`` pages."""
        t = self._transport
        repo = _repo_ref(ref)
        what = f"list tags of {repo}"
        scopes = (repository_scope(ref.repository, "pull"),)
        tags: list[str] = []
        path = f"/v2/{ref.repository}/tags/list?n={TAGS_PAGE}"
        for _ in range(MAX_TAG_PAGES):
            resp = t.request("GET", ref, path, scopes=scopes, what=what)
            with resp:
                if resp.status_code != 200:
                    raise t.error(resp, repo, what, unknown="repository name not known to registry")
                try:
                    data = resp.json()
                except (ValueError, *WIRE_ERRORS) as exc:
                    raise RegistryError(f"{what}: {ref.api_host} sent an unreadable tag list",
                                        reference=str(repo)) from exc
                page = data.get("tags") if isinstance(data, dict) else None
                tags.extend(str(x) for x in (page or ()))
                nxt = resp.links.get("next", {}).get("url", "")
            if not nxt:
                return tags
            path = nxt if nxt.startswith(("/", "http://", "https://")) else "/" + nxt
        raise RegistryError(f"{what}: more than {MAX_TAG_PAGES} pages of tags", reference=str(repo))

    # ------------------------------------------------------------------ blobs

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        """HEAD the blob: True when ``ref``'s repository has it."""
        return self._blob_exists(ref, digest, (repository_scope(ref.repository, "pull"),))

    def _blob_exists(self, ref: Reference, digest: str, scopes: tuple[str, ...]) -> bool:
        t = self._transport
        blob = ref.with_digest(digest)
        what = f"check blob {blob}"
        resp = t.request("HEAD", ref, f"/v2/{ref.repository}/blobs/{digest}", scopes=scopes, what=what)
        with resp:
            if resp.status_code == 200:
                return True
            if resp.status_code == 404:
                return False
            raise t.error(resp, blob, what, unknown="blob unknown")

    def download_blob(self, ref: Reference, digest: str, dst: BinaryIO, size: int | None = None,
                      progress: Callable[[int], None] | None = None) -> int:
        """Stream the blob into ``dst.write`` (1 MiB at a time), hashing while copying; returns the byte count.

        ``progress`` gets the number of bytes just written. A broken connection is resumed with ``Range``
        (or restarted when ``dst`` can seek). Raises :class:`DigestMismatchError` naming the expected and
        the actual digest when the bytes or their count are wrong.
        """
        return blobs.download(self._transport, ref, digest, dst, size, progress)

    def push_blob(self, ref: Reference, digest: str, size: int, src: str | os.PathLike | BinaryIO,
                  mount_from: Reference | None = None, progress: Callable[[int], None] | None = None) -> str:
        """Push a blob to ``ref``'s repository: ``"exists"``, ``"mounted"`` or ``"uploaded"``.

        HEAD first; then a cross-repository mount from ``mount_from`` when it is another repository on
        the same host; else a monolithic POST+PUT up to ``monolithic_max`` bytes, chunked PATCHes of
        ``chunk_size`` then PUT above. A failed upload is retried whole (a path is reopened, a seekable
        file rewound). ``progress`` gets the number of bytes just read for sending.
        """
        scopes = (repository_scope(ref.repository, "pull,push"),)
        if mount_from is not None and mount_from.api_host == ref.api_host and mount_from.repository != ref.repository:
            scopes += (repository_scope(mount_from.repository, "pull"),)
        return blobs.push(self._transport, ref, digest, size, src, mount_from, progress, self.chunk_size,
                          self.monolithic_max, lambda: self._blob_exists(ref, digest, scopes))

    def start_upload(self, ref: Reference) -> StreamingUpload:
        """Begin uploading a blob whose bytes are still being produced (see :mod:`.stream_upload`)."""
        return StreamingUpload(self._transport, ref)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _digest(raw: bytes, like: str) -> str:
        algo = like.split(":", 1)[0] or "sha256"
        if algo not in ("sha256", "sha384", "sha512"):
            raise DigestMismatchError(f"unsupported digest algorithm {algo!r}", digest=like)
        return f"{algo}:{hashlib.new(algo, raw).hexdigest()}"
