"""Source layers stream from a download thread: a failing conversion stops the download at once."""
import time

import pytest

from acceleration_sdk import config as config_mod
from acceleration_sdk.content import ContentStore
from acceleration_sdk.errors import LayerError, StorageFullError
from acceleration_sdk.oci import OCI_LAYER_GZIP, Descriptor
from acceleration_sdk.provider import EngineProvider
from acceleration_sdk.reference import parse
from acceleration_sdk.session import ConversionSession


class SlowFakeRegistryClient:
    """A fake (no registry can be made this slow on purpose): sends a 3 s blob in small pieces."""

    def __init__(self):
        self.sent = 0

    def download_blob(self, ref, digest, dst, size=None, progress=None):
        for _ in range(300):
            dst.write(b"x" * 1000)
            self.sent += 1000
            time.sleep(0.01)


def provider(tmp_path, client, lease):
    src = parse("registry.example.com/app:v1")
    return EngineProvider(ConversionSession(
        cfg=config_mod.from_dict({}), source=src, target=src.with_tag("v1-esgz"), client=client,
        store=ContentStore(tmp_path), lease=lease, root=Descriptor(OCI_LAYER_GZIP, "sha256:" + "1" * 64, 1)))


LAYER = Descriptor(OCI_LAYER_GZIP, "sha256:" + "0" * 64, 300_000)


def test_a_failure_other_than_a_broken_layer_stops_the_download(tmp_path):
    client = SlowFakeRegistryClient()
    with ContentStore(tmp_path).lease() as lease:
        started = time.monotonic()
        with pytest.raises(StorageFullError):
            with provider(tmp_path, client, lease).open_blob(LAYER) as fh:
                fh.read(10)
                raise StorageFullError("no space left on the device under work_dir")
        assert time.monotonic() - started < 1.0
    assert client.sent < 100_000


def test_a_broken_layer_lets_the_download_finish_to_learn_the_cause(tmp_path):
    client = SlowFakeRegistryClient()
    with ContentStore(tmp_path).lease() as lease:
        with pytest.raises(LayerError):
            with provider(tmp_path, client, lease).open_blob(LAYER) as fh:
                fh.read(10)
                raise LayerError("corrupt gzip stream")
    assert client.sent == 300_000
