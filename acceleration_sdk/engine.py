"""The engine: fetch the root -> walk index/manifest/config -> driver -> rewrite diff_ids -> push.

``convert(config, source)`` is the one-call API. The engine, not the driver, filters platforms, maps Docker
media types to OCI, rewrites ``rootfs.diff_ids``, sets ``subject`` and the Harbor annotations, sums sizes and
pushes: blobs, then configs, then manifests, then the index, each by digest; the tag is written last, so a
failed conversion never leaves a tag pointing at a half-pushed image. With ``converter.verify`` the pushed image
is checked by digest (``check``) before the tag: an image that fails never gets it.

The parts: ``session`` (one conversion's shared state), ``walk`` (what a LayerDriver gets), ``provider``
(the ContentProvider a driver sees; it verifies sources before a converted blob is committed),
``source_stream`` (pulling through a pipe), ``push`` (children before parents, the tag last; a driver may
return a ``PushPlan`` instead of its image: output attached to the source as referrers, no target tag).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Callable

from . import reference, routes
from .config import Config, DriverConfig
from .content import ContentStore
from .driver import Driver, LayerDriver, ProgressEvent, load_driver
from .errors import AccelError, ConversionError
from .oci import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Index, Manifest
from .provider import EngineProvider
from .push import PushPlan, push_plan
from .referrers import is_referrers_tag
from .registry import RegistryClient
from .remote_cache import RemoteCache
from .session import ConversionSession
from .walk import walk_image

log = logging.getLogger("acceleration_sdk.engine")


@dataclasses.dataclass(frozen=True, slots=True)
class ConversionResult:
    source: str
    target: str  # the target reference with its tag
    digest: str  # the pushed manifest/index digest ("" when skipped)
    source_size: int
    target_size: int
    skipped: bool  # True when the source needs no conversion (already converted, or the cache tag)
    durations: dict[str, float]  # seconds per phase: prepare, convert (includes pulling), push, total
    driver: str
    driver_version: str
    reason: str = ""  # why it was skipped


def store_for(cfg: Config) -> ContentStore:
    return ContentStore(os.path.join(cfg.provider.work_dir, "content"))


def skip_reason(cfg: Config, source: reference.Reference) -> str:
    """Why ``source`` needs no conversion ("" when it does): this stops the webhook loop."""
    suffix = cfg.converter.tag_suffix
    if is_referrers_tag(source.tag):  # pushed by a referrer's producer (us: SOCI v1), not an image to convert
        return f"tag {source.tag!r} is an OCI referrers tag (an index of referrers, not an image)"
    if reference.is_converted(source, suffix):
        return f"tag {source.tag!r} already ends with {suffix!r}: already converted"
    if cfg.converter.cache_tag and source.tag == cfg.converter.cache_tag:
        return f"tag {source.tag!r} is the remote cache tag"
    return ""


def route_skip_reason(cfg: Config, source: reference.Reference, target: reference.Reference) -> str:
    """Why ``source`` must not be converted to an explicit ``target`` ("" when it may)."""
    if source.name == target.name and (source.tag or reference.DEFAULT_TAG) == target.tag:
        return f"the target {target} is the source itself"
    if is_referrers_tag(source.tag):
        return f"tag {source.tag!r} is an OCI referrers tag (an index of referrers, not an image)"
    if cfg.converter.cache_tag and source.tag == cfg.converter.cache_tag:
        return f"tag {source.tag!r} is the remote cache tag"
    return routes.output_reason(cfg.converter.routes, source)


def convert(cfg: Config, source: str, *, progress: Callable[[ProgressEvent], None] | None = None,
            client: RegistryClient | None = None, store: ContentStore | None = None,
            driver: Driver | None = None, target: str | reference.Reference | None = None,
            driver_config: DriverConfig | None = None) -> ConversionResult:
    """Convert ``source`` and push the result.

    By default with ``converter.driver`` to ``<tag><suffix>`` next to it; a caller that routes conversions
    (``converter.routes``) passes the ``target`` reference and the route's ``driver_config`` instead.
    A ``client`` or ``store`` you pass stays open; the ones the engine makes are closed on every path.
    """
    started = time.monotonic()
    src = reference.parse(source)
    dcfg = driver_config or cfg.converter.driver
    driver = driver or load_driver(dcfg.type, dcfg.config)
    if target is None:
        target = reference.target_for(src, cfg.converter.tag_suffix)
        reason = skip_reason(cfg, src)
    else:
        target = reference.parse(target) if isinstance(target, str) else target
        reason = route_skip_reason(cfg, src, target)
    if reason:
        return ConversionResult(source=str(src), target=str(target), digest="", source_size=0, target_size=0,
                                skipped=True, durations={"total": time.monotonic() - started},
                                driver=driver.name(), driver_version=driver.version(), reason=reason)
    with contextlib.ExitStack() as owned:
        if client is None:
            client = owned.enter_context(RegistryClient(cfg))
        if store is None:
            store = store_for(cfg)
            owned.callback(store.close)
        session, converted, durations = _convert(cfg, src, target, client, store, driver, progress)
        try:
            store.gc(cfg.provider.gcpolicy.threshold, stale_after=2 * cfg.converter.timeout)
        except Exception as exc:  # housekeeping after success: GC trouble must not fail the conversion
            log.warning("content GC failed: %s", exc)
    durations["total"] = time.monotonic() - started
    if converted.tag is None:  # the output is attached to the image (referrers): that image is the target
        target = target.with_digest(converted.root.digest)
    session.progress(ProgressEvent("done", "", 1, 1, f"pushed {target}"))
    return ConversionResult(source=str(src), target=str(target), digest=converted.root.digest,
                            source_size=session.source_size, target_size=session.target_size,
                            skipped=False, durations=durations, driver=driver.name(),
                            driver_version=driver.version())


def _convert(cfg: Config, src: reference.Reference, target: reference.Reference, client: RegistryClient,
             store: ContentStore, driver: Driver, progress: Callable[[ProgressEvent], None] | None
             ) -> tuple[ConversionSession, PushPlan, dict[str, float]]:
    """Fetch the root, run the driver, push; the lease on what this conversion uses ends with it."""
    durations: dict[str, float] = {}
    with store.lease() as lease:
        t = time.monotonic()
        fetched = client.get_manifest(src)
        root = Descriptor(media_type=fetched.media_type, digest=fetched.digest, size=len(fetched.raw))
        store.write_bytes(fetched.raw, expected=fetched.digest)
        lease.add([fetched.digest])
        remote_cache = None
        if cfg.converter.cache_tag:
            # next to the converted blobs it names: the target repository (the source's, unless a route says)
            remote_cache = RemoteCache(client, target, cfg.converter.cache_tag, cfg.provider.cache_size,
                                       cfg.provider.cache_version).load()
        session = ConversionSession(cfg=cfg, source=src, target=target, client=client, store=store, lease=lease,
                                    root=root, on_progress=progress, remote_cache=remote_cache)
        durations["prepare"] = time.monotonic() - t

        t = time.monotonic()
        try:
            converted = _run_driver(session, driver)
        except AccelError:
            raise
        except Exception as exc:  # a driver bug must become a FAILED task with a reason, not a traceback
            log.exception("driver %s failed on %s", driver.name(), src)  # the details stay in the log
            raise ConversionError(f"driver {driver.name()} failed on {src} ({type(exc).__name__}); see the log",
                                  reference=str(src)) from exc
        durations["convert"] = time.monotonic() - t

        t = time.monotonic()
        push_plan(session, converted, before_tag=(lambda: _verify(session, converted, driver))
                  if cfg.converter.verify else None, referenced=driver.referenced_blobs)
        if remote_cache is not None:
            remote_cache.save()
        durations["push"] = time.monotonic() - t
    return session, converted, durations


def _verify(session: ConversionSession, plan: PushPlan, driver: Driver) -> None:
    """``converter.verify``: check the image pushed by digest with the driver's reader; FAIL -> no tag, and the
    layer-cache entries of the failed layers (of every layer, when the check names none) are forgotten.

    Output attached as referrers is checked with each image manifest it is attached to (only those: a
    platform left out by ``converter.platforms`` has none); its referrers are the plan's, since the referrers
    tags are not written yet."""
    from .check import check_image
    from .referrers import describe

    mine: dict[str, list[Descriptor]] = {}
    for desc in plan.referrers:
        ref = describe(session.store.read_bytes(desc.digest), desc)
        mine.setdefault(ref.subject, []).append(Descriptor.from_dict(ref.entry))
    checked = [plan.tag.digest] if plan.tag is not None else list(mine) or [plan.root.digest]
    for digest in checked:
        result = check_image(session.client, session.target.with_digest(digest), tmp_dir=session.store.tmp_dir,
                             driver=driver, referrers=(lambda subject: mine.get(subject, [])) if mine else None)
        if not result.ok:
            for line in result.lines:
                log.info("verify %s: %s", session.target, line)
            # a layer that fails here must not come back from the layer cache on the retry
            try:
                session.forget_conversions(result.failed_layers)
            except Exception as exc:  # the cache only costs time: the verify failure is the task's reason
                log.warning("layer cache not cleaned after the failed verify of %s: %s", session.target, exc)
            unwritten = f"tag {session.target.tag!r} not written" if plan.tag is not None else \
                "no referrers tag written"
            raise ConversionError(f"verification of the pushed image failed, {unwritten}: {result.verdict}",
                                  reference=str(session.source))


def _run_driver(session: ConversionSession, driver: Driver) -> PushPlan:
    """A LayerDriver gets the engine's walk (unless it converts whole images itself); a Driver converts alone,
    returning its image (tagged at the target) or a :class:`PushPlan`."""
    if isinstance(driver, LayerDriver) and type(driver).convert is LayerDriver.convert:
        return PushPlan.tagged(walk_image(session, driver))
    content = EngineProvider(session)
    try:
        converted = driver.convert(content, str(session.source))
        content.verify_sources()
    finally:
        content.close()
    plan = converted if isinstance(converted, PushPlan) else PushPlan.tagged(converted)
    # the walk counts sizes as it goes; a whole-image driver's are counted from the manifests afterwards
    try:
        session.source_size = _image_bytes(session, session.root)
        # output attached to the source image (no tag): the image plus what was added to it
        session.target_size = sum(_image_bytes(session, m) for m in plan.manifests) + \
            (session.source_size if plan.tag is None else 0)
    except (AccelError, ValueError, KeyError) as exc:  # sizes are a report: they never fail a conversion
        log.warning("sizes of %s not counted: %s", session.source, exc)
    return plan


def _image_bytes(session: ConversionSession, root: Descriptor) -> int:
    """Config + layer bytes of every manifest under ``root`` (the store's copy, else the source's)."""
    raw = session.read_manifest(root)
    if root.media_type in INDEX_TYPES:
        return sum(_image_bytes(session, child) for child in Index.from_json(raw, root.media_type).manifests
                   if child.media_type in INDEX_TYPES + MANIFEST_TYPES)
    manifest = Manifest.from_json(raw, root.media_type)
    return manifest.config.size + sum(layer.size for layer in manifest.layers)
