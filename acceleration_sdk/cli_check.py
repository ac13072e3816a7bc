"""``accelctl check REF``: is this image really accelerated? (like nydusify's ``check``)

``add_parser(subparsers)`` registers the command on accelctl's parser; :mod:`acceleration_sdk.check` does the
work. One line per layer on stdout, then the verdict: exit 0 with ``PASS ...``, exit 1 with
``FAIL <layer>: <why>``.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable

DESCRIPTION = """\
Fetch REF (a tag or a digest; every platform of an index) and verify it with the reader of the driver whose
format it is (recognised from media types and annotations; else the config's converter.driver.type):
  estargz   every layer's media type, toc.digest / uncompressed-size (and zstd:chunked manifest-checksum,
            manifest-position) annotations, the TOC against its digest, every chunk against its chunkDigest
  nydus     the bootstrap is the last layer (nydusify's manifest rule); every blob layer's media type, RAFS
            bootstrap and chunks by nydusd's rules; the merged bootstrap against the blobs' tables and against
            the blob layers' trees merged (every file's attributes and chunk digests)
  soci      the SOCI index (v2: named by the manifest's annotation; v1: the manifest's first SOCI v1 referrer,
            found through the referrers API or tag, with converter.driver.type soci in the config) and every
            ztoc derived again from its layer and compared (TOC entries, span digests, checkpoints)
and every layer's diff_id against the sha256 of the uncompressed layer. With --source, every entry's metadata
and file bytes (by digest) against the same layer of the source image, and the image config's config (Env, Cmd,
...; ArgsEscaped ignored, as nydusify) against the source's. Layers stream through a temp dir under
provider.work_dir; registry credentials come from the config (provider.source / docker config.json).
Prints one line per layer, then the verdict: exit 0 and "PASS ...", or exit 1 and "FAIL <layer>: <why>"."""

EXAMPLES = """examples:
  accelctl check localhost:5000/library/app:v1-esgz
  accelctl check --config config.yaml --source localhost:5000/library/app:v1 localhost:5000/library/app:v1-esgz
"""


def _cmd_check(args: argparse.Namespace, config_file: Callable[[str | None], str]) -> int:
    from . import config as config_mod
    from . import reference
    from .check import check_image
    from .registry import RegistryClient

    cfg = config_mod.load(config_file(args.config))
    target = reference.parse(args.ref)
    source = reference.parse(args.source) if args.source else None
    tmp_root = os.path.join(cfg.provider.work_dir, "check")
    os.makedirs(tmp_root, exist_ok=True)
    with RegistryClient(cfg) as client:
        result = check_image(client, target, tmp_dir=tmp_root, source=source, fallback=cfg.converter.driver.type,
                             emit=lambda line: print(line, flush=True))
    return 0 if result.ok else 1


def add_parser(subparsers, config_file: Callable[[str | None], str]) -> argparse.ArgumentParser:
    """Register ``check`` on accelctl's sub-command parsers; ``config_file`` finds the config as ``convert`` does."""
    check = subparsers.add_parser("check", help="verify a converted image with its format's reader (PASS/FAIL)",
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  description=DESCRIPTION, epilog=EXAMPLES)
    check.add_argument("--config", "-c", metavar="FILE",
                       help="acceld YAML config for registry credentials, work_dir and the fallback driver; "
                            "default: $ACCELD_CONFIG, else config.yaml, else config.example.yaml")
    check.add_argument("--source", metavar="REF",
                       help="the source image: compare every entry's metadata and bytes with it")
    check.add_argument("ref", metavar="REF", help="the converted image, e.g. localhost:5000/library/app:v1-esgz")
    check.set_defaults(func=lambda args: _cmd_check(args, config_file))
    return check
