"""Is this image really accelerated? Fetch a converted image and verify it with its driver's own reader.

    result = check_image(client, parse("host/app:v1-esgz"), tmp_dir="/tmp", source=parse("host/app:v1"))
    result.ok, result.lines   # one line per layer, then the verdict ("PASS ..." or "FAIL <layer>: <why>")

``accelctl check`` prints the lines; the engine runs it on the pushed manifest (by digest) before it writes the
tag when ``converter.verify`` is on. Per image manifest (each platform of an index; attestations skipped):

- the format: the driver that converted it (the engine), else the first installed driver whose
  ``Driver.image_checker(manifest)`` recognises it, else the configured driver (which then says what is missing);
- per layer, blob spooled to a temp file (digest verified by the download, never held in memory): the
  driver's :class:`~acceleration_sdk.driver.ImageChecker` (media type, annotations, every chunk), then the
  diff_id: the sha256 of the decompressed blob against the config's ``rootfs.diff_ids``;
- with ``source``: the same platform's source layer, read as a tar, against the layer's entries (metadata
  and file digests, the format's ``Allowances``: :func:`acceleration_sdk.testing.entries.compare`); and the
  image config's ``config`` (Env, Cmd, ...) against the source's, as ``nydusify check`` compares them (the OCI
  fields, ``ArgsEscaped`` ignored: contrib/nydusify/pkg/checker/rule/manifest.go).

A checker may also have ``check_manifest(manifest, config)``: rules about the whole manifest (a nydus image's
bootstrap is its last layer), run before the layers; a problem is one ``FAIL <manifest>: <why>`` line. A checker
that reads blobs besides the layer at hand takes them from ``bind``, by keyword, as disk files (streamed to the
work dir, digest and size verified, never in memory): ``spool(descriptor)`` any blob of the checked repository
(nydus OCI-ref: the gzip layers the manifest does not list; the caller removes the file), and ``get_layer(i)``
the manifest's layer ``i`` ahead of its turn, spooled once through the same download and kept until the manifest
is checked (nydus ``chunk_dict_ref``: the dict's blobs come after the layers pointing into them); its own turn
reuses that file.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import os
import re
import tempfile
from typing import Callable

from . import oci
from .compression import open_decompressed
from .driver import Driver, ImageChecker, available, driver_class
from .errors import AccelError, LayerError
from .reference import Reference
from .registry import RegistryClient
from .testing.entries import Sha256, compare, tar_entries

READ_SIZE = 1 << 20
COMPRESSED_SUFFIXES = ("+gzip", "+zstd", ".gzip", ".zstd")  # OCI "+gzip"; Docker's rootfs.diff.tar.gzip
MAX_CONFIG = 16 << 20  # an image config is JSON metadata; bigger is refused, not read into memory
MAX_INDEX_BLOB = 256 << 20  # a blob a checker fetches through bind(): a ztoc holds 32 KiB per span of its layer
SHOWN_PROBLEMS = 3  # differences from the source named on a FAIL line; the count says how many more
# The OCI ImageConfig fields nydusify compares by marshalling both configs into that Go struct (Docker-only keys
# drop out, empty ones are omitted); ArgsEscaped is skipped, as nydusify skips it.
_LAYER_FAIL = re.compile(r"FAIL ([a-z0-9]+:[0-9a-f]{32,}): ")  # a layer's line; an image's names a reference
CONFIG_FIELDS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels", "StopSignal")


@dataclasses.dataclass
class CheckResult:
    ok: bool
    lines: list[str]

    @property
    def verdict(self) -> str:
        return self.lines[-1] if self.lines else ""

    @property
    def failed_layers(self) -> list[str]:
        """The digests of the layers that failed (``FAIL <layer digest>: <why>``), in order; empty when the
        failure is the image's (a ``FAIL <reference>: ...`` line) or there is none."""
        found = (_LAYER_FAIL.match(line) for line in self.lines)
        return list(dict.fromkeys(m.group(1) for m in found if m))


class _Failed(Exception):
    """One image-level problem: ends the check of a manifest with ``FAIL <what>: <why>``."""


def check_image(client: RegistryClient, ref: Reference, *, tmp_dir: str | None = None,
                source: Reference | None = None, driver: Driver | str | None = None,
                fallback: str = "", emit: Callable[[str], None] | None = None,
                referrers: Callable[[str], list[oci.Descriptor]] | None = None) -> CheckResult:
    """Check ``ref`` (tag or digest); ``driver`` forces the format, ``fallback`` names one when none claims it.

    ``emit`` gets each line as soon as it is known (accelctl prints them while big layers download).
    ``referrers(subject_digest)`` lists what refers to an image manifest (for a format kept as referrers,
    SOCI index v1); by default the registry's (referrers API, else the referrers tag).
    """
    if referrers is None:
        from .referrers import list_referrers

        def referrers(subject: str) -> list[oci.Descriptor]:
            return list_referrers(client, ref, subject)

    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if emit is not None:
            emit(line)

    failures: list[str] = []
    checked = 0
    try:
        fetched = client.get_manifest(ref)
        if fetched.media_type in oci.INDEX_TYPES:
            index = oci.Index.from_json(fetched.raw, fetched.media_type, str(ref))
            # an artifact beside the images (a SOCI index) is checked by its image's checker, not as an image;
            # an artifactType a driver declares marks an image of its format (nydus merge_manifest)
            marked = _image_artifact_types(driver)
            children = [d for d in index.manifests if not d.is_attestation
                        and (not d.artifact_type or d.artifact_type in marked)]
            children = _beside_marked(children, ref, say)
            if not children:
                raise _Failed(f"{ref}: the index lists no image manifest")
        else:
            children = [fetched.descriptor]
        with tempfile.TemporaryDirectory(prefix="check-", dir=tmp_dir) as work:
            for child in children:
                raw = fetched.raw if child.digest == fetched.digest else \
                    client.get_manifest(ref.with_digest(child.digest)).raw
                label = "/".join(p for p in child.platform_tuple if p) if len(children) > 1 else ""
                checked += _check_manifest(client, ref, raw, child, label, work, source, driver, fallback,
                                           say, failures, referrers)
    except _Failed as exc:
        failures.append(str(exc))
    except (AccelError, ValueError) as exc:  # the registry said no, a manifest or config does not parse
        failures.append(f"{ref}: {exc}")
    if failures:
        verdict = failures[0] if failures[0].startswith("FAIL ") else f"FAIL {failures[0]}"
        say(verdict + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
        return CheckResult(False, lines)
    say(f"PASS {ref}: {checked} layer(s) verified")
    return CheckResult(True, lines)


def _image_artifact_types(driver: Driver | str | None) -> frozenset[str]:
    """Every ``Driver.image_artifact_types`` (the forced driver's, else all installed drivers')."""
    if isinstance(driver, Driver):
        return frozenset(type(driver).image_artifact_types)
    found: set[str] = set()
    for name in ([driver] if driver else available()):
        try:
            found.update(getattr(driver_class(name), "image_artifact_types", ()))
        except AccelError:  # a broken plugin must not stop the others
            continue
    return frozenset(found)


def _beside_marked(children: list, ref: Reference, say: Callable[[str], None]) -> list:
    """Drop the plain images that share a platform with a marked one: the source image kept for runtimes
    without the format (nydus merge_manifest), which is not the format's to check."""
    marked = {d.platform_tuple: d.artifact_type for d in children if d.artifact_type}
    kept = []
    for d in children:
        if not d.artifact_type and d.platform_tuple in marked:
            label = "/".join(p for p in d.platform_tuple if p)
            say(f"skip {ref}@{d.digest} ({label}): the plain image beside the {marked[d.platform_tuple]} one")
        else:
            kept.append(d)
    return kept


def _checker(manifest: oci.Manifest, driver: Driver | str | None, fallback: str) -> tuple[str, ImageChecker]:
    if isinstance(driver, Driver):
        found = type(driver).image_checker(manifest, claim=False)
        name = driver.name()
    elif driver:
        found, name = driver_class(driver).image_checker(manifest, claim=False), driver
    else:
        for name in available():
            try:
                found = driver_class(name).image_checker(manifest)
            except AccelError:  # a broken plugin must not stop the others from recognising the image
                continue
            if found is not None:
                return name, found
        name = fallback
        found = driver_class(fallback).image_checker(manifest, claim=False) if fallback else None
        if found is None and not fallback:
            raise _Failed("no installed driver recognises the image's layers")
    if found is None:
        raise _Failed(f"driver {name} cannot check images (it declares no image_checker)")
    return name, found


def _check_manifest(client, ref, raw, desc, label, work, source, driver, fallback, say, failures,
                    referrers) -> int:
    where = (str(ref) if ref.digest == desc.digest else f"{ref}@{desc.digest}") + (f" ({label})" if label else "")
    manifest = oci.Manifest.from_json(raw, desc.media_type, str(ref))
    if not manifest.layers:
        raise _Failed(f"{where}: the manifest has no layers")
    try:
        name, checker = _checker(manifest, driver, fallback)
    except _Failed as exc:
        raise _Failed(f"{where}: {exc}") from None
    spooler = _Spooler(client, ref, manifest.layers, work)
    try:
        return _check_layers(client, ref, desc, manifest, name, checker, spooler, where, work, source, say, failures,
                             referrers)
    finally:
        spooler.close()


def _check_layers(client, ref, desc, manifest, name, checker, spooler, where, work, source, say, failures,
                  referrers) -> int:
    bind = getattr(checker, "bind", None)
    if bind is not None:  # the checker reads more than the layer at hand (SOCI's ztocs, nydus's other blobs)
        extra = {"image": desc, "get_referrers": lambda: referrers(desc.digest),  # for SOCI v1's lookup
                 "get_layer": spooler.get,  # nydus chunk_dict_ref: a later layer, kept for its own turn
                 "spool": spooler.spool}    # nydus OCI-ref: the gzip layers its manifest does not list
        wanted = inspect.signature(bind).parameters
        try:
            bind(lambda digest: client.get_manifest(ref.with_digest(digest)).raw,
                 lambda d: _small_blob(client, ref, d, MAX_INDEX_BLOB, "blob"),
                 **{k: v for k, v in extra.items() if k in wanted})
        except AccelError as exc:
            raise _Failed(f"{where}: {name}: {exc}") from None
        except ValueError as exc:
            raise _Failed(f"{where}: {name}: unreadable ({exc})") from None
    config = json.loads(_small_blob(client, ref, manifest.config))
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(manifest.layers):
        raise _Failed(f"{where}: the config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers")
    check_manifest = getattr(checker, "check_manifest", None)
    if check_manifest is not None:
        try:
            check_manifest(manifest, config)
        except AccelError as exc:
            raise _Failed(f"{where}: {name}: {exc}") from None
    source_layers = source_config = None
    if source is not None:
        source_manifest = _source_manifest(client, source, desc)
        source_layers = list(source_manifest.layers)
        source_config = json.loads(_small_blob(client, source, source_manifest.config))
    say(f"check {where}: {name}, {len(manifest.layers)} layer(s)")
    if source_config is not None and (problem := config_difference(config, source_config)):
        line = f"FAIL {where}: the image config differs from the source's: {problem}"
        failures.append(line)
        say(line)
    for i, layer in enumerate(manifest.layers):
        head = layer.digest
        try:
            detail = _check_layer(client, ref, i, layer, diff_ids[i], checker, work, source, source_layers, spooler)
        except Exception as exc:  # a hostile blob may break a parser anywhere: a FAIL line, not a traceback
            why = str(exc) if isinstance(exc, AccelError) else f"unreadable ({type(exc).__name__}: {exc})"
            line = f"FAIL {head}: {why}"
            failures.append(line)
            say(line)
            continue
        say(f"ok   {head}: {layer.media_type}, {detail}")
    return len(manifest.layers)


def _spool(client: RegistryClient, ref: Reference, desc: oci.Descriptor, work: str, prefix: str = "") -> str:
    path = os.path.join(work, prefix + desc.digest.replace(":", "-"))
    try:
        with open(path, "wb") as fh:
            client.download_blob(ref, desc.digest, fh, desc.size)  # verifies the digest and the size
    except BaseException:
        os.unlink(path)  # never left half-written
        raise
    return path


class _Spooler:
    """The blobs a checker reads besides the layer at hand (``bind``'s ``spool`` and ``get_layer``), on disk,
    never in memory (a nydus chunk-dict blob or gzip layer may be bigger than any bound we would set).

    ``spool(descriptor)``: any blob of the checked repository; the caller removes the file. ``get(index)``: the
    manifest's layer ``index`` through the same download, once, kept until :meth:`close` (the manifest is
    checked): its own turn reuses the file (``paths``)."""

    def __init__(self, client: RegistryClient, ref: Reference, layers: list[oci.Descriptor], work: str):
        self._client, self._ref, self._layers, self._work = client, ref, layers, work
        self.paths: dict[int, str] = {}

    def spool(self, desc: oci.Descriptor, prefix: str = "ref-") -> str:
        return _spool(self._client, self._ref, desc, self._work, prefix)

    def get(self, index: int) -> str:
        if not 0 <= index < len(self._layers):
            raise LayerError(f"layer {index} asked for: the manifest has {len(self._layers)} layer(s)")
        path = self.paths.get(index)
        if path is None:  # a download that fails leaves no file and no entry: the next ask tries again
            path = self.spool(self._layers[index], prefix=f"ahead{index}-")
            self.paths[index] = path
        return path

    def close(self) -> None:
        for path in self.paths.values():
            os.unlink(path)
        self.paths.clear()


def _check_layer(client, ref, i, layer, diff_id, checker, work, source, source_layers, spooler: _Spooler) -> str:
    """One layer, spooled and removed again: the disk holds at most a layer and its source at a time, besides
    the layers the checker asked for ahead (kept, and not fetched again here)."""
    if i in spooler.paths:
        return _check_spooled(client, spooler.paths[i], i, layer, diff_id, checker, work, source, source_layers)
    path = _spool(client, ref, layer, work)
    try:
        return _check_spooled(client, path, i, layer, diff_id, checker, work, source, source_layers)
    finally:
        os.unlink(path)


def _check_spooled(client, path, i, layer, diff_id, checker, work, source, source_layers) -> str:
    entries = checker.check_layer(i, layer, path)
    # metadata and a file digest per entry (never file bytes); every chunk is read and verified here
    seen = list(entries) if entries is not None else None
    h = Sha256()
    with open(path, "rb") as fh:
        # the OCI rule: a diff_id hashes the layer with its declared compression taken off; a type that
        # declares none (a plain tar, a nydus blob) is its own diff_id
        stream = open_decompressed(fh) if layer.media_type.endswith(COMPRESSED_SUFFIXES) else fh
        while piece := stream.read(READ_SIZE):
            h.update(piece)
    if h.digest != diff_id:
        raise LayerError(f"diff_id {diff_id} in the config, but the uncompressed layer is {h.digest}")
    if seen is None:  # the checker words what it verified of a layer with no source counterpart
        unpaired = getattr(checker, "unpaired_detail", None)
        return unpaired(i) if unpaired is not None else "verified, no source layer"
    detail = f"{len(seen)} entries, chunks verified"
    if source_layers is None:
        return detail
    if i >= len(source_layers):
        raise LayerError(f"the source {source} has only {len(source_layers)} layer(s)")
    src_path = _spool(client, source, source_layers[i], work, prefix="source-")  # may be the same blob
    try:
        with open(src_path, "rb") as fh:
            want = list(tar_entries(open_decompressed(fh), keep_data=False))
    finally:
        os.unlink(src_path)
    problems = compare(want, seen, checker.allowances)
    if problems:
        more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
        raise LayerError(f"differs from source layer {source_layers[i].digest}: "
                         + "; ".join(problems[:SHOWN_PROBLEMS]) + more)
    return detail + f", same as source layer {source_layers[i].digest[:19]}"


def _small_blob(client: RegistryClient, ref: Reference, desc: oci.Descriptor, limit: int = MAX_CONFIG,
                what: str = "config") -> bytes:
    """A blob read into memory to be parsed (a config, a ztoc): bounded, the bigger refused unread."""
    if desc.size > limit:
        raise LayerError(f"{what} {desc.digest} is {desc.size} bytes, more than {limit}")
    buf = io.BytesIO()
    client.download_blob(ref, desc.digest, buf, desc.size)
    return buf.getvalue()


def config_difference(config: dict, source_config: dict) -> str:
    """The first OCI ``config`` field where ``config`` differs from ``source_config``; "" when none does."""
    mine, theirs = config.get("config") or {}, source_config.get("config") or {}
    for key in CONFIG_FIELDS:
        if (mine.get(key) or None) != (theirs.get(key) or None):  # empty and absent are one (Go's omitempty)
            return f"config.{key} is {json.dumps(mine.get(key))}, the source has {json.dumps(theirs.get(key))}"
    return ""


def _source_manifest(client: RegistryClient, source: Reference, converted: oci.Descriptor) -> oci.Manifest:
    """The source image's manifest for the converted manifest's platform."""
    fetched = client.get_manifest(source)
    raw, media_type = fetched.raw, fetched.media_type
    if media_type in oci.INDEX_TYPES:
        index = oci.Index.from_json(raw, media_type, str(source))
        want = converted.platform_tuple
        match = [d for d in index.manifests if not d.is_attestation and (d.platform_tuple == want or not any(want))]
        if not match:
            raise _Failed(f"the source {source} has no manifest for platform {'/'.join(p for p in want if p)}")
        child = client.get_manifest(source.with_digest(match[0].digest))
        raw, media_type = child.raw, child.media_type
    return oci.Manifest.from_json(raw, media_type, str(source))
