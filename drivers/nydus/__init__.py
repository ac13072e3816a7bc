"""nydus RAFS v6, natively: the format core of the ``nydus`` driver (issue 9). Imports acceleration_sdk and PyPI only.

    opts = BuildOptions(compressor="zstd", digester="blake3", chunk_size=0x100000, prefetch=("/usr/bin",))
    layer = convert_layer(uncompressed_tar_stream, blob_sink, opts, position)  # a nydus blob per source layer
    layer = layer_from_blob(cached_blob_path, position, opts, digest)           # ... or one converted earlier
    boot = merge_bootstrap(layers, opts)                                        # bytes of image/image.boot

Modules: ``layout`` (on-disk structures), ``codec`` (chunk compressors, digests), ``tree`` (layer tar -> file
tree, merge), ``blob`` (blob writer), ``bootstrap`` (EROFS/RAFS writer), ``builder`` (the calls above),
``reader`` / ``blobfile`` / ``validate`` (a RAFS reader and the rules nydusd applies when it loads a bootstrap).
Facts and their nydus source lines: /work/shared/NYDUS.md. Proven by tests/drivers/test_nydus_*.py: the kernel
mounts every bootstrap with a loop device per blob, fsck.erofs extracts it, nydus-image's own output parses.

What the driver wiring (on top of issue 8's plugin contract) still has to do:
- options: ``fs_version`` 6 (5 refused: "only RAFS v6 is supported"); ``compressor`` zstd | lz4_block | none
  (gzip refused by BuildOptions, as ``nydus-image create`` refuses it); ``fs_chunk_size`` -> ``chunk_size``
  (BuildOptions checks power of two in 0x1000..0x1000000); ``digester`` blake3 | sha256; ``prefetch_patterns``
  (newline-separated paths) -> ``prefetch``; ``fs_align_chunk`` accepted (v6 is always aligned); ``builder``
  accepted, log once that the native builder is used; ``backend_*``, ``merge_manifest``, ``oci_ref``,
  ``chunk_dict_ref`` refused at start-up by name; ``docker2oci``, ``with_referrer``, ``work_dir`` are engine keys.
  Refusals raise RafsError/LayerError (acceleration_sdk ``ERR_LAYER``) or should become DriverError at start-up.
- per source layer: decompress (gzip/zstd/none) into ``convert_layer``; the sink is the content-store writer
  (``result.blob.digest`` is sha256 of what was written = the layer digest = the blob id). Layer descriptor:
  ``application/vnd.oci.image.layer.nydus.blob.v1``, annotation ``containerd.io/snapshot/nydus-blob: "true"``,
  diff_id = the blob digest. ``position`` = the layer's index in the source manifest.
- layer cache key: source layer digest + compressor + digester + chunk size (prefetch does not enter the blob);
  on a hit call ``layer_from_blob`` (it rebuilds the tree from the blob's own image.boot: no source needed).
- bootstrap layer (last): tar of ``image/`` (dir 0755), ``image/image.boot`` (0444, = ``merge_bootstrap``),
  and ``image/<hex>.blob.meta`` (= ``LayerResult.blob.blob_meta``) for each blob the bootstrap names, gzip'd;
  OCI or Docker gzip media type by manifest type; annotations ``containerd.io/snapshot/nydus-bootstrap: "true"``
  and ``containerd.io/snapshot/nydus-fs-version: "6"``; diff_id = sha256 of the uncompressed tar; history gets
  ``{created_by: "Nydus Converter", comment: "Nydus Bootstrap Layer"}`` (NYDUS.md section 3).
- conformance reader: ``Rafs(boot)`` + ``validate(rafs, {id: BlobFile(path)}, strict=True)``, and
  ``BlobFile.write_device`` + tests/support/erofs.mounted for a kernel view of the image.
- speed: chunks are compressed on the converting thread (~240 MiB/s zstd here); a bounded pool that keeps
  chunk order is the next step for the issue's bench goals. pyproject needs blake3, lz4, crc32c as dependencies.
"""
from .builder import BuildOptions, LayerResult, convert_layer, layer_from_blob, merge_bootstrap

__all__ = ["BuildOptions", "LayerResult", "convert_layer", "layer_from_blob", "merge_bootstrap"]
