"""Shared fixtures: a real registry (Debian's docker-registry) on a free loopback port."""
import pytest

from tests.support.registry import RegistryServer


@pytest.fixture
def registry(tmp_path_factory):
    """A fresh, empty registry for one test (starts in ~0.2 s)."""
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.stop()
