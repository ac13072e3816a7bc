"""The ``soci`` driver: a SOCI index next to the image; every layer stays byte for byte as pushed.

``index_version: v2`` (default, ``soci convert``): a new OCI index, the target tag, holds the re-serialised
image manifest(s) annotated with their SOCI index and the SOCI index descriptors. ``v1`` (``soci create`` +
``soci push``): the image is not touched and nothing is tagged; one SOCI index per image manifest, its
``subject`` that manifest, pushed by digest and listed as a referrer (the engine keeps the referrers tag on a
registry without the referrers API): the driver returns a ``PushPlan`` with no tag.

One pass per indexed layer (inflate with checkpoints + tar headers, drivers/soci/ztoc.py), layers in
parallel (zlib runs outside the GIL through ctypes). The driver writes only the ztocs, the ``{}`` config, the
SOCI index, the re-serialised image manifest(s) and the new OCI index; the engine's push finds the layers
already in the repository (the target tag is in the source's repository) and never uploads them.
"""
from __future__ import annotations

import concurrent.futures
import json
import threading
from typing import Any

from acceleration_sdk import oci
from acceleration_sdk.driver import ContentProvider, Driver, ProgressEvent
from acceleration_sdk.errors import ConversionError, LayerError
from acceleration_sdk.oci import Descriptor
from acceleration_sdk.options import Option, OptionSchema, option_error
from acceleration_sdk.push import PushPlan
from acceleration_sdk.session import HARBOR_DRIVER_NAME

from . import layout, ztoc
from .gzindex import GzipIndexError
from .tartoc import TarTocError
from .writes import Writes

# containerd's images.DiffCompression: what upstream indexes (ztoc_builder.go:44-46) and skips (zstd)
GZIP_TYPES = (oci.OCI_LAYER_GZIP, oci.DOCKER_LAYER_GZIP)
TAR_TYPES = (oci.OCI_LAYER, oci.DOCKER_LAYER)
WORKERS = 2  # layers indexed at once; inflate is the cost, and it runs outside the GIL
# in the layer caches, whether a cached ztoc's layer has xattrs or opaque dirs (the xattr optimization's input)
CACHE_XATTRS = "io.goharbor.acceleration.soci.has-xattrs"


def _check(values: dict[str, Any], path: str) -> dict[str, Any]:
    opts = [str(o) for o in values["optimizations"]]
    for o in opts:
        if o != "xattr":
            raise option_error(f"{path}.optimizations", f"unknown optimization {o!r} (known: xattr)")
    values["optimizations"] = tuple(opts)
    return values


OPTIONS = OptionSchema(
    Option("span_size", int, 1 << 22, range=(1 << 16, 1 << 30),
           help="bytes of uncompressed data between gzip checkpoints (default 4194304, as upstream)"),
    Option("min_layer_size", int, 10 << 20, range=(0, 1 << 50),
           help="layers smaller than this many bytes (compressed) get no ztoc (default 10485760, as upstream)"),
    Option("optimizations", list, (),
           help="upstream's optimizations; xattr marks layers without xattrs or opaque dirs "
                "com.amazon.soci.disable-xattrs"),
    Option("index_version", str, "v2", choices=("v2", "v1"),
           help="v2 (default): a new OCI index at the target tag binds image and SOCI index, as current "
                "soci-snapshotter reads it; v1: the legacy index, a referrer of each source image manifest "
                "(no new tag; the referrers tag sha256-<hex> where the registry has no referrers API)"),
    check=_check,
)


class SociDriver(Driver):
    options_schema = OPTIONS
    default_tag_suffix = "-soci"

    @classmethod
    def image_checker(cls, manifest, claim: bool = True):
        """SOCI v2 output: recognised by the image manifest's SOCI index annotation (``.check``)."""
        from .check import SociChecker, claims

        return SociChecker(manifest) if not claim or claims(manifest) else None

    def name(self) -> str:
        return "soci"

    def version(self) -> str:
        return f"{self.options['index_version']}/ztoc-{ztoc.VERSION}"

    # ------------------------------------------------------------------ the image
    def convert(self, content: ContentProvider, source: str) -> Descriptor | PushPlan:
        writes = Writes(content)
        try:
            if self.options["index_version"] == "v1":
                result = self._convert_v1(content, source, writes)
            else:
                result = self._convert_v2(content, source, writes)
        except BaseException:
            writes.close()
            raise
        writes.finish()  # every blob and manifest committed; only then the layer-cache entries
        return result

    def _convert_v2(self, content: ContentProvider, source: str, writes: Writes) -> Descriptor:
        root: Descriptor = content.root
        raw = content.store.read_bytes(root.digest)
        top = json.loads(raw)
        if root.media_type in oci.INDEX_TYPES:
            index_src = top
            children = [dict(d) for d in top.get("manifests") or ()]
        else:
            index_src = None
            config = json.loads(content.read_blob(Descriptor.from_dict(top["config"])))
            platform = {"architecture": config.get("architecture", ""), "os": config.get("os", "")}
            if config.get("variant"):
                platform["variant"] = config["variant"]
            children = [{"mediaType": root.media_type, "digest": root.digest, "size": root.size,
                         "platform": platform}]
        out_manifests: list[dict] = []
        soci_descs: list[dict] = []
        renamed: dict[str, str] = {}  # source image manifest digest -> its re-serialised digest
        attestations: list[dict] = []
        for child in children:
            desc = Descriptor.from_dict(child)
            if child.get("artifactType") == layout.SOCI_INDEX_V2:
                continue  # an older SOCI index of a converted source: replaced below (addSociIndexes)
            if desc.is_attestation:
                attestations.append(child)
                continue
            if desc.media_type not in oci.MANIFEST_TYPES:
                out_manifests.append(child)  # other artifacts stay as they were
                continue
            if index_src is not None and not content.wants_platform(desc):
                continue  # converter.platforms: the converted image holds the selected platforms only
            manifest = json.loads(raw if index_src is None else content.read_manifest(desc))
            index_desc = self._soci_index(content, writes, manifest, dict(child.get("platform") or {}))
            new = layout.image_manifest(manifest, index_desc["digest"] if index_desc else None)
            new_desc = writes.manifest(new)
            entry = dict(child, mediaType=oci.OCI_MANIFEST, digest=new_desc.digest, size=new_desc.size)
            entry["annotations"] = new.get("annotations")  # upstream: md.Annotations = manifest.annotations
            out_manifests.append(layout.descriptor(entry))
            renamed[desc.digest] = new_desc.digest
            if index_desc is not None:
                soci_descs.append(layout.descriptor(dict(index_desc, platform=child.get("platform"),
                                                         annotations={layout.ANN_MANIFEST_DIGEST: new_desc.digest})))
        for att in attestations:  # kept while the manifest they describe is, pointing at its new digest
            described = (att.get("annotations") or {}).get(oci.ANNOTATION_REFERENCE_DIGEST, "")
            if described in renamed:
                ann = dict(att["annotations"], **{oci.ANNOTATION_REFERENCE_DIGEST: renamed[described]})
                out_manifests.append(dict(att, annotations=ann))
        if not soci_descs:
            raise ConversionError(f"{source}: no layer to index: SOCI indexes gzip or uncompressed tar layers of at "
                                  f"least min_layer_size ({self.options['min_layer_size']} bytes); upstream refuses "
                                  "an empty index too", reference=source)
        top = layout.oci_index(index_src, out_manifests + soci_descs, content.harbor_annotations(self))
        top_desc = writes.manifest(top)
        return top_desc.replace(media_type=oci.OCI_INDEX)

    def _convert_v1(self, content: ContentProvider, source: str, writes: Writes) -> PushPlan:
        """One SOCI index v1 per image manifest of the source (the selected platforms), each a referrer of it;
        the source is not rewritten (soci_index.go:614-626: ``refers`` = the image manifest's descriptor)."""
        root: Descriptor = content.root
        if root.media_type in oci.INDEX_TYPES:
            children = [Descriptor.from_dict(d) for d in json.loads(content.store.read_bytes(root.digest))
                        .get("manifests") or ()]
            images = [d for d in children if d.media_type in oci.MANIFEST_TYPES and not d.is_attestation
                      and not d.artifact_type and content.wants_platform(d)]
        else:
            images = [root]
        harbor = content.harbor_annotations(self)  # on the SOCI index itself: nothing else is new
        indexes = []
        for desc in images:
            manifest = json.loads(content.read_manifest(desc) if desc is not root
                                  else content.store.read_bytes(root.digest))
            index_desc = self._soci_index(content, writes, manifest, dict(desc.platform or {}),
                                          subject=desc.to_dict(), annotations=harbor)
            if index_desc is not None:
                indexes.append(Descriptor.from_dict(index_desc))
        if not indexes:
            raise ConversionError(f"{source}: no layer to index: SOCI indexes gzip or uncompressed tar layers of at "
                                  f"least min_layer_size ({self.options['min_layer_size']} bytes); upstream refuses "
                                  "an empty index too", reference=source)
        # an earlier index of ours (Harbor's driver annotation) is replaced in the list, others stay
        replaces = {HARBOR_DRIVER_NAME: harbor[HARBOR_DRIVER_NAME]} if HARBOR_DRIVER_NAME in harbor else {}
        return PushPlan(manifests=tuple(indexes), tag=None, referrers=tuple(indexes), replaces=replaces,
                        attached_to=root)

    # ------------------------------------------------------------------ one platform
    def _soci_index(self, content: ContentProvider, writes: Writes, manifest: dict, platform: dict,
                    subject: dict | None = None, annotations: dict | None = None) -> dict | None:
        """Build, write (started on ``writes``) and describe the SOCI index of one image manifest; None when no
        layer qualifies. With ``subject`` (v1) the index refers to that image manifest and carries ``annotations``."""
        span, minimum = self.options["span_size"], self.options["min_layer_size"]
        layers = [dict(x) for x in manifest.get("layers") or ()]
        todo = [x for x in layers if x["mediaType"] in GZIP_TYPES + TAR_TYPES and x["size"] >= minimum]
        if not todo:
            return None
        # a ztoc depends on the layer and the span size only: reusable across images, hosts, the other options
        # and both index versions (the key predates v1: kept, so caches stay valid)
        key = f"{self.name()}/v2/ztoc-{ztoc.VERSION}/span_size={span}"
        cached = {}
        for x in todo:
            mine = writes.known(key, Descriptor.from_dict(x))  # another platform of this image shares the layer
            cached[x["digest"]] = (mine,) if mine is not None else content.cached_conversion(key,
                                                                                              Descriptor.from_dict(x))
        missing = [x for x in todo if cached[x["digest"]] is None]
        built = {}
        if missing:
            writes.settle()  # the last platform's writes commit before this one's layers are opened
            built = self._build_all(content, missing)
        ztocs = []
        for layer in todo:  # image-layer order (soci_index.go:561-563)
            source = Descriptor.from_dict(layer)
            hit = cached[layer["digest"]]
            if hit is not None:
                desc, has_xattrs = hit[0], hit[0].annotations.get(CACHE_XATTRS) != "false"
                content.progress(ProgressEvent("convert", source.digest, source.size, source.size, "cached"))
            else:
                z = built[layer["digest"]]
                data = ztoc.marshal(z)
                has_xattrs = z.has_xattrs()
                desc = Descriptor(media_type=layout.SOCI_LAYER, digest=writes.blob(data),
                                  size=len(data), annotations={CACHE_XATTRS: str(has_xattrs).lower()})
            # the remote cache records per platform; recorded once the ztoc (every write) has committed
            writes.remember(platform, key, source, desc)
            disable = "xattr" in self.options["optimizations"] and not has_xattrs
            ztocs.append(layout.ztoc_descriptor(desc.digest, desc.size, layer, span, disable))
        writes.blob(layout.EMPTY_CONFIG)
        version = layout.SOCI_INDEX_V1 if subject is not None else layout.SOCI_INDEX_V2
        desc = writes.manifest(layout.soci_index(ztocs, ztoc.BUILD_TOOL, version, subject, annotations))
        return dict(desc.to_dict(), artifactType=version)

    def _build_all(self, content: ContentProvider, layers: list[dict]) -> dict[str, ztoc.Ztoc]:
        """The ztocs of ``layers``, WORKERS at once; the first failure stops the others at their next read."""
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(min(WORKERS, len(layers)), thread_name_prefix="soci") as pool:
            futures = {x["digest"]: pool.submit(self._ztoc, content, x, stop) for x in layers}
            concurrent.futures.wait(futures.values(), return_when=concurrent.futures.FIRST_EXCEPTION)
            failed = next((f for f in futures.values() if f.done() and not f.cancelled() and f.exception()), None)
            if failed is not None:
                stop.set()
                for f in futures.values():
                    f.cancel()
                raise failed.exception()
            return {d: f.result() for d, f in futures.items()}

    def _ztoc(self, content: ContentProvider, layer: dict, stop: threading.Event) -> ztoc.Ztoc:
        desc = Descriptor.from_dict(layer)
        span = self.options["span_size"]
        content.progress(ProgressEvent("convert", desc.digest, 0, desc.size, "indexing"))
        try:
            with content.open_blob(desc) as blob:
                raw = _Stoppable(blob, stop, desc.digest)
                if layer["mediaType"] in GZIP_TYPES:
                    z = ztoc.build_gzip(raw, span)
                else:
                    z = ztoc.build_tar(raw, span)
        except (GzipIndexError, TarTocError) as exc:
            kind = "gzip-compressed tar" if layer["mediaType"] in GZIP_TYPES else "tar"
            raise LayerError(f"layer {desc.digest} ({layer['mediaType']}): {exc}; the blob is not the {kind} its "
                             "media type says: push the image again with an intact layer (SOCI indexes layers "
                             "as they are, it cannot repair one)", digest=desc.digest) from None
        if z.compressed_size != desc.size:
            raise LayerError(f"layer {desc.digest}: read {z.compressed_size} bytes, the manifest says {desc.size}",
                             digest=desc.digest)
        content.progress(ProgressEvent("convert", desc.digest, desc.size, desc.size, "indexed"))
        return z


class _Stoppable:
    """A layer stream that stops when another layer of the image has failed (nothing will be pushed anyway)."""

    def __init__(self, raw, stop: threading.Event, digest: str):
        self._raw, self._stop, self._digest = raw, stop, digest

    def read(self, n: int = -1) -> bytes:
        if self._stop.is_set():
            raise ConversionError(f"layer {self._digest}: stopped, another layer of the image failed")
        return self._raw.read(n)
