"""A failed converter.verify forgets layer-cache entries: the layers it names, else every one of the conversion.

The end-to-end case (a corrupted cache record fails verify, the retry converts afresh and passes) is in
tests/e2e/test_remote_cache.py; here the fallback when the check names no layer, on a real content store.
"""
from acceleration_sdk import config as config_mod
from acceleration_sdk.check import CheckResult
from acceleration_sdk.content import ContentStore
from acceleration_sdk.oci import OCI_LAYER_GZIP, Descriptor
from acceleration_sdk.reference import parse
from acceleration_sdk.session import ConversionSession

A, B, C = ("sha256:" + c * 64 for c in "abc")  # source layers
CA, CB = ("sha256:" + c * 64 for c in "de")  # their converted blobs


def session(store, lease):
    src = parse("registry.example.com/app:v1")
    s = ConversionSession(cfg=config_mod.from_dict({}), source=src, target=src.with_tag("v1-esgz"), client=None,
                          store=store, lease=lease, root=None)
    for source, converted in ((A, CA), (B, CB)):
        s.remember_conversion({}, "key", Descriptor(OCI_LAYER_GZIP, source, 1),
                              Descriptor(OCI_LAYER_GZIP, converted, 1), "sha256:" + "0" * 64)
    store.cache_put(f"key@{C}", Descriptor(OCI_LAYER_GZIP, CA, 1).to_dict(), "n")  # another conversion's
    return s


def test_forgets_the_named_layer_only(tmp_path):
    store = ContentStore(tmp_path)
    with store.lease() as lease:
        assert session(store, lease).forget_conversions([CB]) == [CB]
    assert store.cache_get(f"key@{B}") is None and store.cache_get(f"key@{A}") is not None
    assert store.cache_get(f"key@{C}") is not None


def test_forgets_every_layer_of_the_conversion_when_none_is_named(tmp_path):
    store = ContentStore(tmp_path)
    with store.lease() as lease:
        # an image-level failure, or a failed layer no cache entry made (nydus' bootstrap)
        assert sorted(session(store, lease).forget_conversions(["sha256:" + "f" * 64])) == [CA, CB]
    assert store.cache_get(f"key@{A}") is None and store.cache_get(f"key@{B}") is None
    assert store.cache_get(f"key@{C}") is not None  # not this conversion's


def test_check_result_names_failed_layers_not_images():
    layer = "sha256:" + "1" * 64
    result = CheckResult(False, [f"check host/app@{layer}: estargz, 2 layer(s)", f"FAIL {layer}: bad chunk",
                                 f"FAIL host/app@{layer}: the manifest has no layers", f"FAIL {layer}: bad chunk"])
    assert result.failed_layers == [layer]
    assert CheckResult(False, ["FAIL host/app:v1: no installed driver recognises the image's layers"]
                       ).failed_layers == []
