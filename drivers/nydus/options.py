"""The ``nydus`` driver's ``converter.driver.config`` keys: acceld's names, with what this native builder does.

acceld (goharbor/acceleration-service ``pkg/driver/nydus``) reads these keys as strings; the schema takes the
same strings ("6", "0x100000", "true"). What cannot work yet is refused when the config is loaded, by name,
so a service never starts and then fails every task.
"""
from __future__ import annotations

import os
from typing import Any

from acceleration_sdk import reference
from acceleration_sdk.errors import ReferenceError_
from acceleration_sdk.options import Option, OptionSchema, option_error

from .blob import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

COMPRESSORS = ("zstd", "lz4_block", "none")
DIGESTERS = ("blake3", "sha256")
# acceld keys whose feature comes with the next nydus issue (issue 11): refused unless false/empty
NOT_YET = ()
BACKEND_KEYS = ("backend_type", "backend_config", "backend_force_push")


def _check(values: dict[str, Any], path: str) -> dict[str, Any]:
    """Rules the single options cannot express: refusals with their reason, and the chunk size's shape."""
    def fail(key: str, reason: str):
        return option_error(f"{path}.{key}", reason)

    # acceld's older names: fs_version falls back to rafs_version, compressor to rafs_compressor
    version_key = "fs_version" if values["fs_version"] is not None else "rafs_version"
    values["fs_version"] = values[version_key] if values[version_key] is not None else 6
    compressor_key = "compressor" if values["compressor"] is not None else "rafs_compressor"
    values["compressor"] = compressor = values[compressor_key] or "zstd"
    if values["fs_version"] == 5:
        raise fail(version_key, "RAFS v5 is not supported: only RAFS v6 is (set fs_version: 6 or leave it out)")
    if values["fs_version"] != 6:
        raise fail(version_key, f"expected 6 (RAFS v6, the only version supported), got {values['fs_version']}")
    if compressor == "gzip":
        raise fail(compressor_key, "gzip is not accepted for nydus blobs (nydus-image create refuses it too); "
                                   f"use one of {', '.join(COMPRESSORS)}")
    if compressor not in COMPRESSORS:
        raise fail(compressor_key, f"expected one of {', '.join(COMPRESSORS)}, got {compressor!r}")
    size = values["fs_chunk_size"]
    if size & (size - 1):
        raise fail("fs_chunk_size", f"expected a power of two in {MIN_CHUNK_SIZE:#x}..{MAX_CHUNK_SIZE:#x}, "
                                    f"got {size:#x}")
    for key in NOT_YET:
        if values[key]:
            raise fail(key, f"{key} is not supported yet by the nydus driver; remove it or set it to "
                            f"{'false' if isinstance(values[key], bool) else 'an empty string'}")
    for pattern in values["prefetch_patterns"]:
        if not pattern.startswith("/"):   # nydus-image skips it with a warning: refused here instead, by name
            raise fail("prefetch_patterns", f"{pattern!r} is relative; nydus prefetch patterns start at the root "
                                            f"(write /{pattern.lstrip('./')})")
    if values["chunk_dict_ref"]:
        try:
            reference.parse(values["chunk_dict_ref"])
        except ReferenceError_ as exc:
            raise fail("chunk_dict_ref", f"expected an image reference (a nydus image), {exc}") from None
    if values["oci_ref"] and values["chunk_dict_ref"]:
        # zran chunks are slices of the source gzip layers: there is nothing to look up in a dict
        raise fail("chunk_dict_ref", "cannot be combined with oci_ref: an OCI-ref image stores no chunk data "
                                     "to deduplicate; remove one of them")
    if values["batch_size"] not in ("", "0", "0x0"):
        raise fail("batch_size", "batched chunks are not supported yet; remove batch_size")
    if values["encrypt_recipients"]:
        raise fail("encrypt_recipients", "encrypted nydus images are not supported yet; remove encrypt_recipients")
    for key in BACKEND_KEYS:
        if values[key]:
            raise fail(key, "storage backends are not supported yet: nydus blobs are pushed to the target "
                            "registry as image layers; remove backend_type, backend_config and backend_force_push")
    return values


OPTIONS = OptionSchema(
    Option("fs_version", int, None, help="RAFS version; 6 (the default) is the only one supported, 5 is refused"),
    Option("rafs_version", int, None, help="acceld's older name of fs_version (read when fs_version is absent)"),
    Option("compressor", str, None,
           help="chunk compressor: zstd (default), lz4_block or none; gzip is refused as nydus-image does"),
    Option("rafs_compressor", str, None, help="acceld's older name of compressor (read when compressor is absent)"),
    Option("fs_chunk_size", int, DEFAULT_CHUNK_SIZE, range=(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
           help="bytes per chunk, a power of two in 0x1000..0x1000000 (default 0x100000); \"0x...\" accepted"),
    Option("digester", str, "blake3", choices=DIGESTERS, help="chunk digest: blake3 (default, as nydus-image) or sha256"),
    Option("docker2oci", bool, True, help="Docker media types become OCI ones"),
    Option("with_referrer", bool, False, help="point the converted manifest's subject at the source manifest"),
    Option("prefetch_patterns", list, (), lines=True,
           help="absolute paths, one a line (acceld's string), nydusd prefetches first: the merged bootstrap's "
                "prefetch table holds each one's inode (a directory: all below it); empty: \"/\", everything, "
                "as nydus-snapshotter writes it"),
    Option("prioritized_files", list, (),
           help="the eStargz key, also accepted here (accelctl convert --prefetch-from fills it): added to the "
                "prefetch table after prefetch_patterns"),
    Option("work_dir", str, "", help="accepted for acceld configs; blobs are built straight into the content "
                                     "store under provider.work_dir, so no scratch directory is used"),
    Option("fs_align_chunk", bool, True, help="accepted; RAFS v6 chunks are always 4 KiB-aligned"),
    Option("builder", str, "", help="accepted (a nydus-image path in acceld); the native builder is used"),
    Option("backend_type", str, "", help="not supported yet (blobs go to the registry as layers); refused"),
    Option("backend_config", str, "", help="not supported yet; refused"),
    Option("backend_force_push", bool, False, help="not supported yet; refused when true"),
    Option("merge_manifest", bool, False,
           help="the target is an OCI index of, per platform, the source image (an empty layer first) and the "
                "nydus image (artifactType application/vnd.nydus.image.manifest.v1+json): one tag for both runtimes"),
    Option("oci_ref", bool, False,
           help="OCI-referenced (zran) nydus: source gzip layers are not rewritten, each nydus blob layer holds "
                "gzip checkpoints into its source layer (annotation containerd.io/snapshot/nydus-ref); chunks are "
                "gzip/sha256 as nydus-image targz-ref forces (compressor and digester are not used); gzip layers "
                "only; manifests are OCI (docker2oci forced, as acceld does)"),
    Option("chunk_dict_ref", str, "",
           help="a nydus image (on a host in provider.source) used as chunk dict: chunks its blobs hold are "
                "referenced, not stored again, and its blobs used are added to the image's layers; it must use "
                "the same compressor, digester and fs_chunk_size"),
    Option("batch_size", str, "", help="not supported yet (batched chunks); refused when set"),
    Option("encrypt_recipients", str, "", help="not supported yet (encrypted images); refused when set"),
    Option("workers", int, lambda o: min(2, os.cpu_count() or 1), range=(1, 64),
           help="threads compressing the chunks of one layer (default 2, 1 on a one-CPU host); speed only"),
    check=_check,
)
