"""The engine's ContentProvider: source blobs as verified streams, the walk that LayerDrivers use, pushes.

Source layers are streamed registry -> (pipe) -> decompressor -> driver: a download thread writes into an
OS pipe while the driver reads the other end, so pulling overlaps converting and no source layer is ever
written to disk or held in memory. The digest is checked when the stream ends; a mismatch fails the layer.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import fcntl
import json
import logging
import os
import threading
from typing import Any, BinaryIO, Callable, Iterator

from . import oci
from .compression import open_decompressed
from .config import Config
from .content import ContentStore, Lease
from .driver import ConvertedLayer, LayerDriver, ProgressEvent
from .errors import AccelError, ConversionError, DriverError, LayerError
from .oci import Descriptor, Index, Manifest
from .reference import Reference
from .registry import RegistryClient
from .remote_cache import RemoteCache

log = logging.getLogger("acceleration_sdk.engine")

PIPE_SIZE = 1 << 20  # 1 MiB pipe buffer between the download thread and the converter
HARBOR_DRIVER_NAME = "io.goharbor.artifact.v1alpha1.acceleration.driver.name"
HARBOR_DRIVER_VERSION = "io.goharbor.artifact.v1alpha1.acceleration.driver.version"
HARBOR_SOURCE_DIGEST = "io.goharbor.artifact.v1alpha1.acceleration.source.digest"
LAYER_CONCURRENCY = 2  # layers converted at once; each layer's compressor may use threads of its own


class _PipeReader:
    """Reads the pipe; at EOF waits for the download thread and re-raises its error (e.g. digest mismatch)."""

    def __init__(self, fd: int, thread: threading.Thread, errors: list):
        self._fh = os.fdopen(fd, "rb", buffering=0)
        self._thread, self._errors = thread, errors

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n if n and n > 0 else PIPE_SIZE)
        if not data:
            self._thread.join()
            if self._errors:
                raise self._errors[0]
        return data

    def close(self) -> None:
        self._fh.close()
        self._thread.join()


class _PipeWriter:
    def __init__(self, fd: int):
        self._fh = os.fdopen(fd, "wb", buffering=0)

    broken = False  # the reader stopped: keep downloading (and hashing) to learn whether the blob was bad
    cancelled = False  # the conversion failed for another reason: stop the download at once

    def write(self, data) -> int:
        if self.cancelled:
            raise BrokenPipeError("the conversion stopped reading this layer")
        view = memoryview(data)
        while view and not self.broken:
            try:
                n = self._fh.write(view)
            except BrokenPipeError:
                self.broken = True
                break
            view = view[n:]
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


class _Counting:
    def __init__(self, src, on_bytes: Callable[[int], None]):
        self._src, self._on = src, on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            self._on(len(data))
        return data


@dataclasses.dataclass
class EngineProvider:
    cfg: Config
    source: Reference
    target: Reference
    client: RegistryClient
    store: ContentStore
    lease: Lease
    root: Descriptor
    on_progress: Callable[[ProgressEvent], None] | None = None
    source_size: int = 0
    target_size: int = 0
    stream_uploads: bool = True  # push converted blobs while they are written (see UploadingIngest)
    remote_cache: RemoteCache | None = None  # converted layers remembered under the cache tag

    # ------------------------------------------------------------------ reading
    def progress(self, event: ProgressEvent) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(event)
            except Exception:  # a broken progress sink must not fail the conversion
                log.exception("progress callback failed")

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[BinaryIO]:
        """A stream of a source blob, verified against its digest when read to the end."""
        done = [0]

        def on_bytes(n: int) -> None:
            done[0] += n
            self.progress(ProgressEvent("pull", desc.digest, done[0], desc.size))

        if self.store.has(desc.digest):
            fh = self.store.open(desc.digest)
            try:
                yield _Counting(fh, on_bytes)
            finally:
                fh.close()
            return
        rfd, wfd = os.pipe()
        with contextlib.suppress(OSError):  # a bigger pipe means fewer context switches
            fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        errors: list[BaseException] = []
        writer = _PipeWriter(wfd)

        def download() -> None:
            try:
                self.client.download_blob(self.source, desc.digest, writer, size=desc.size)
            except BaseException as exc:  # handed to the reader, raised there
                errors.append(exc)
            finally:
                writer.close()

        thread = threading.Thread(target=download, name=f"pull-{desc.digest[7:19]}", daemon=True)
        reader = _PipeReader(rfd, thread, errors)
        thread.start()
        try:
            yield _Counting(reader, on_bytes)
        except BaseException as exc:
            # A broken layer may be a bad download: let it run on to the end so a bad blob is named as the
            # cause. Anything else (disk full, Ctrl-C, a driver failure) stops the download at once.
            if not isinstance(exc, LayerError):
                writer.cancelled = True
            reader.close()
            if isinstance(exc, Exception) and errors and isinstance(errors[0], AccelError) and errors[0] is not exc:
                raise errors[0] from exc
            raise
        reader.close()
        if errors:
            raise errors[0]

    @contextlib.contextmanager
    def open_uncompressed(self, desc: Descriptor) -> Iterator[BinaryIO]:
        with self.open_blob(desc) as raw:
            tar = open_decompressed(raw)
            yield tar
            # A tar ends before its compressed stream does: read to the end so the digest gets checked.
            while tar.read(PIPE_SIZE):
                pass

    def read_blob(self, desc: Descriptor, limit: int = 16 << 20) -> bytes:
        """A small blob (manifest, config), fetched into the store once and verified."""
        if desc.size > limit:
            raise ConversionError(f"blob {desc.digest} of {desc.size} bytes is too large for a manifest or config")
        self.lease.add([desc.digest])  # before has(): a GC elsewhere may run between the two
        if not self.store.has(desc.digest):
            with self.store.writer(expected=desc.digest) as w:
                self.client.download_blob(self.source, desc.digest, w, size=desc.size)
                w.commit()
        return self.store.read_bytes(desc.digest, limit)

    def blob_writer(self) -> "UploadingIngest":
        """Where a driver writes a converted blob: the content store, and the target repository as it goes."""
        return UploadingIngest(self.store.writer(), self.client.start_upload(self.target) if self.stream_uploads
                               else None)

    def read_manifest(self, desc: Descriptor) -> bytes:
        """A child manifest of an index: fetched by digest from /manifests/ (registries do not serve it as a blob)."""
        self.lease.add([desc.digest])  # before has(): a GC elsewhere may run between the two
        if not self.store.has(desc.digest):
            fetched = self.client.get_manifest(self.source.with_digest(desc.digest))
            self.store.write_bytes(fetched.raw, expected=desc.digest)
        return self.store.read_bytes(desc.digest)

    def put_json(self, obj: Any) -> tuple[str, int]:
        raw = oci.canonical_json(obj)
        digest = self.store.write_bytes(raw)
        self.lease.add([digest])
        return digest, len(raw)

    # ------------------------------------------------------------------ the walk
    def walk(self, driver: LayerDriver) -> Descriptor:
        raw = self.store.read_bytes(self.root.digest)
        if self.root.media_type in oci.INDEX_TYPES:
            return self._convert_index(driver, Index.from_json(raw, self.root.media_type, str(self.source)))
        manifest = Manifest.from_json(raw, self.root.media_type, str(self.source))
        return self._convert_manifest(driver, self.root, manifest, check_platform=True)

    def _platform_wanted(self, os_: str, arch: str, variant: str) -> bool:
        wanted = self.cfg.converter.platforms
        return not wanted or any(p.matches(os_, arch, variant) for p in wanted)

    def _convert_index(self, driver: LayerDriver, index: Index) -> Descriptor:
        converted: dict[str, Descriptor] = {}
        attestations: list[Descriptor] = []
        for child in index.manifests:
            if child.is_attestation:
                attestations.append(child)
            elif child.media_type in oci.INDEX_TYPES:
                raise ConversionError(f"{self.source}: nested indexes are not supported", reference=str(self.source))
            elif self._platform_wanted(*child.platform_tuple):
                raw = self.read_manifest(child)
                manifest = Manifest.from_json(raw, child.media_type, f"{self.source}@{child.digest}")
                converted[child.digest] = self._convert_manifest(driver, child, manifest, check_platform=False)
        if not converted:
            wanted = ", ".join(str(p) for p in self.cfg.converter.platforms)
            raise ConversionError(f"{self.source}: no manifest in the index matches converter.platforms ({wanted})",
                                  reference=str(self.source))
        children = [converted[c.digest] for c in index.manifests if c.digest in converted]
        for att in attestations:  # keep attestations only while the manifest they describe is kept
            described = att.annotations.get(oci.ANNOTATION_REFERENCE_DIGEST, "")
            if described in converted:
                children.append(att.replace(annotations={**att.annotations,
                                                         oci.ANNOTATION_REFERENCE_DIGEST: converted[described].digest}))
        out = copy.deepcopy(dict(index.raw))
        media_type = oci.docker_to_oci(index.media_type) if driver.docker2oci() else index.media_type
        if "mediaType" in out or media_type == oci.OCI_INDEX:
            out["mediaType"] = media_type
        out["manifests"] = [c.to_dict() for c in children]
        out["annotations"] = {**out.get("annotations", {}), **self._harbor_annotations(driver, self.root)}
        if not out["annotations"]:
            del out["annotations"]
        digest, size = self.put_json(out)
        return Descriptor(media_type=media_type, digest=digest, size=size)

    def _harbor_annotations(self, driver: LayerDriver, source: Descriptor) -> dict[str, str]:
        if not self.cfg.converter.harbor_annotation:
            return {}
        return {HARBOR_DRIVER_NAME: driver.name(), HARBOR_DRIVER_VERSION: driver.version(),
                HARBOR_SOURCE_DIGEST: source.digest}

    def _convert_manifest(self, driver: LayerDriver, desc: Descriptor, manifest: Manifest,
                          check_platform: bool) -> Descriptor:
        config = json.loads(self.read_blob(manifest.config))
        if check_platform and not self._platform_wanted(config.get("os", ""), config.get("architecture", ""),
                                                        config.get("variant", "")):
            got = "/".join(x for x in (config.get("os"), config.get("architecture"), config.get("variant")) if x)
            raise ConversionError(f"{self.source} is for {got}, which is not in converter.platforms",
                                  reference=str(self.source))
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(manifest.layers):
            raise ConversionError(f"{self.source}: the config lists {len(diff_ids)} diff_ids for "
                                  f"{len(manifest.layers)} layers", reference=str(self.source))
        self.source_size += manifest.config.size + sum(layer.size for layer in manifest.layers)
        docker2oci = driver.docker2oci()
        keep_docker = oci.is_docker(manifest.media_type) and not docker2oci

        platform = dict(desc.platform or {}) or {k: config[k] for k in ("os", "architecture", "variant")
                                                  if config.get(k)}

        def one(layer: Descriptor) -> ConvertedLayer | None:
            if layer.media_type in oci.FOREIGN_LAYER_TYPES or layer.media_type not in oci.LAYER_TYPES:
                return None
            return self._convert_layer(driver, layer, platform)

        with concurrent.futures.ThreadPoolExecutor(LAYER_CONCURRENCY, thread_name_prefix="layer") as pool:
            results = list(pool.map(one, manifest.layers))
        layers = []
        for i, (layer, result) in enumerate(zip(manifest.layers, results)):
            new = layer if result is None else result.descriptor
            if result is not None:
                diff_ids[i] = result.diff_id
            media_type = new.media_type
            if keep_docker:
                media_type = {oci.OCI_LAYER_GZIP: oci.DOCKER_LAYER_GZIP, oci.OCI_LAYER: oci.DOCKER_LAYER}.get(
                    media_type, media_type)
                if not oci.is_docker(media_type):
                    raise DriverError(f"{driver.name()} output ({media_type}) has no Docker media type; "
                                      "set converter.driver.config.docker2oci: true")
            elif docker2oci:
                media_type = oci.docker_to_oci(media_type)
            layers.append(new.replace(media_type=media_type))
        config.setdefault("rootfs", {"type": "layers"})["diff_ids"] = diff_ids
        out = copy.deepcopy(dict(manifest.raw))
        out, config = driver.finalize_manifest(self, out, config)
        config_digest, config_size = self.put_json(config)
        media_type = manifest.media_type if keep_docker or not docker2oci else oci.docker_to_oci(manifest.media_type)
        config_type = manifest.config.media_type if keep_docker or not docker2oci else \
            oci.docker_to_oci(manifest.config.media_type)
        out["mediaType"] = media_type
        out["config"] = manifest.config.replace(media_type=config_type, digest=config_digest,
                                                size=config_size).to_dict()
        out["layers"] = [layer.to_dict() for layer in layers] + out.get("layers", [])[len(manifest.layers):]
        annotations = {**out.get("annotations", {}), **self._harbor_annotations(driver, desc)}
        if annotations and media_type == oci.OCI_MANIFEST:
            out["annotations"] = annotations
        if driver.with_referrer() and media_type == oci.OCI_MANIFEST:
            out["subject"] = Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size).to_dict()
        digest, size = self.put_json(out)
        self.target_size += config_size + sum(layer["size"] for layer in out["layers"])
        return Descriptor(media_type=media_type, digest=digest, size=size, platform=desc.platform)

    def _cached_layer(self, driver: LayerDriver, layer: Descriptor, key: str) -> ConvertedLayer | None:
        """A conversion done before: in the local layer cache, else in the remote cache."""
        hit = self.store.cache_get(key)
        if hit is not None:
            desc = Descriptor.from_dict(hit[0])
            self.lease.add([desc.digest])  # lease before looking: a GC in another worker must not take it after
            if self.store.has(desc.digest) or self.client.blob_exists(self.target, desc.digest):
                return ConvertedLayer(desc, hit[1])
        remote = self.remote_cache.get(driver.cache_key(), layer.digest) if self.remote_cache else None
        if remote is not None and self.client.blob_exists(self.target, remote[0].digest):
            self.store.cache_put(key, remote[0].to_dict(), remote[1])
            return ConvertedLayer(*remote)
        return None

    def _convert_layer(self, driver: LayerDriver, layer: Descriptor, platform: dict) -> ConvertedLayer | None:
        key = f"{driver.cache_key()}@{layer.digest}"
        cached = self._cached_layer(driver, layer, key)
        if cached is not None:
            self.progress(ProgressEvent("convert", layer.digest, layer.size, layer.size, "cached"))
            if self.remote_cache is not None:
                self.remote_cache.add(platform, driver.cache_key(), layer.digest, cached.descriptor, cached.diff_id)
            return cached
        self.progress(ProgressEvent("convert", layer.digest, 0, layer.size, "converting"))
        try:
            result = driver.convert_layer(self, layer)
        except AccelError as exc:
            if not getattr(exc, "digest", ""):
                exc.digest = layer.digest
            if isinstance(exc, LayerError) and layer.digest not in exc.message:
                exc.message = f"layer {layer.digest}: {exc.message}"  # which layer, for whoever reads the reason
                exc.args = (exc.message,)
            raise
        if result is None:
            return None
        self.lease.add([result.descriptor.digest])
        self.store.cache_put(key, result.descriptor.to_dict(), result.diff_id)
        if self.remote_cache is not None:
            self.remote_cache.add(platform, driver.cache_key(), layer.digest, result.descriptor, result.diff_id)
        self.progress(ProgressEvent("convert", layer.digest, layer.size, layer.size, "converted"))
        return result

    # ------------------------------------------------------------------ pushing
    def push_blobs(self, blobs: list[Descriptor]) -> None:
        def one(desc: Descriptor) -> None:
            done = [0]

            def on_bytes(n: int) -> None:
                done[0] += n
                self.progress(ProgressEvent("push", desc.digest, done[0], desc.size))

            if self.store.has(desc.digest):
                how = self.client.push_blob(self.target, desc.digest, desc.size, self.store.path(desc.digest),
                                            mount_from=None, progress=on_bytes)
            elif self.client.blob_exists(self.target, desc.digest):
                how = "exists"
            else:  # unchanged source blob we never pulled: mount it from the source repository
                how = self.client.push_blob(self.target, desc.digest, desc.size, _Missing(desc.digest),
                                            mount_from=self.source, progress=on_bytes)
            self.progress(ProgressEvent("push", desc.digest, desc.size, desc.size, how))

        with concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="push") as pool:
            list(pool.map(one, blobs))


class _Missing:
    """Stands for a blob we do not have; reading it means the mount failed."""

    def __init__(self, digest: str):
        self.digest = digest

    def read(self, n: int = -1) -> bytes:
        raise ConversionError(f"blob {self.digest} is neither in the target repository nor in the content store")


class UploadingIngest:
    """A content-store ingest that also streams the same bytes to the target repository.

    The upload is best effort: when it fails, the blob is still committed to the store and the push phase
    uploads it from there (its HEAD finds it missing). When it succeeds, the push phase finds it present.
    """

    def __init__(self, ingest, upload):
        self._ingest, self._upload = ingest, upload

    @property
    def size(self) -> int:
        return self._ingest.size

    def write(self, data) -> int:
        n = self._ingest.write(data)
        if self._upload is not None:
            self._upload.write(data)
        return n

    def commit(self, expected: str | None = None) -> str:
        digest = self._ingest.commit(expected)
        if self._upload is not None:
            self._upload.finish(digest)
            self._upload = None
        return digest

    def abort(self) -> None:
        self._ingest.abort()
        if self._upload is not None:
            self._upload.abort()
            self._upload = None

    def __enter__(self) -> "UploadingIngest":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None or self._upload is not None:
            self.abort()
