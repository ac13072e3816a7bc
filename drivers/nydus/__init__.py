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

The driver is ``driver.NydusDriver`` (entry point ``nydus``; options in ``options``: acceld's keys, refusals at
config load). Per source layer it streams the uncompressed tar into ``convert_layer`` and the blob through the
provider's writer (media type ``application/vnd.oci.image.layer.nydus.blob.v1``, diff_id = blob digest; the
cache key is compressor + digester + chunk size: a blob is reusable across images). ``finalize_manifest``
rebuilds each layer from its blob (``layer_from_blob``, also after a layer-cache hit), merges, holds the
bootstrap to nydusd's rules and appends it as the last layer (NYDUS.md section 3). ``entries.read_layer`` reads a
blob layer back for the conformance suite (tests/test_driver_contract.py); tests/e2e/test_nydus_convert.py
converts through a real registry and mounts the result with the kernel.

``merge_manifest`` (``merge.py``, through ``index_entries``): per platform, the source image with an empty layer
first beside the nydus image marked with its artifactType, in one OCI index (tests/e2e/test_nydus_merge.py).
``chunk_dict_ref`` (``chunkdict``): chunks a nydus image's blobs already hold are referenced there, not stored.
``oci_ref: true`` (OCI-ref, zran): ``refdriver`` / ``refblob`` / ``zran`` / ``zranctx`` -- the gzip layer is
referenced, not rewritten (checkpoints into it in blob.meta); ``refcheck`` is its ``accelctl check``.
Not yet: storage backends, ``batch_size``,
``encrypt_recipients``; refused by name at config load.
Speed: chunks are compressed on a bounded, order-keeping pool (``workers``); figures in bench/README.md (the
stdlib tar parser is the main remaining cost).
"""
from .builder import BuildOptions, LayerResult, convert_layer, layer_from_blob, merge_bootstrap

__all__ = ["BuildOptions", "LayerResult", "convert_layer", "layer_from_blob", "merge_bootstrap"]
