"""Driver lookup through the entry-point group: names, errors, suffixes, schemas."""
from importlib.metadata import EntryPoint

import pytest

from acceleration_sdk import driver
from acceleration_sdk.errors import DriverError


@pytest.fixture
def entry_points(monkeypatch):
    """Replace the installed group with the given EntryPoints (real ones, pointing wherever the test says)."""
    def use(*eps):
        monkeypatch.setattr(driver, "_entry_points", lambda: {ep.name: ep for ep in eps})
    return use


def ep(name, value):
    return EntryPoint(name, value, driver.ENTRY_POINT_GROUP)


def test_nothing_installed_says_so(entry_points):
    entry_points()
    with pytest.raises(DriverError, match=r"unknown driver 'estargz' \(available: none in entry-point group "
                                          r"acceleration_sdk.drivers; is acceld installed\?\)"):
        driver.load_driver("estargz")


def test_a_broken_plugin_is_a_driver_error_naming_it(entry_points):
    entry_points(ep("broken", "no_such_module_xyz:Driver"), ep("estargz", "drivers.estargz.driver:EStargzDriver"))
    assert driver.available() == {"broken": "no_such_module_xyz:Driver",
                                  "estargz": "drivers.estargz.driver:EStargzDriver"}
    with pytest.raises(DriverError, match=r"driver 'broken' cannot be loaded from no_such_module_xyz:Driver: "
                                          r"ModuleNotFoundError"):
        driver.load_driver("broken")
    assert driver.load_driver("estargz").name() == "estargz"  # one broken plugin does not hide the others


def test_suffix_is_declared_or_dash_name(entry_points):
    # A driver without a declared suffix or schema (e.g. written before either existed): "-<name>", options as given.
    entry_points(ep("plain", "tests.sdk.test_driver_lookup:PlainDriver"),
                 ep("estargz", "drivers.estargz.driver:EStargzDriver"))
    assert driver.default_tag_suffix("plain") == "-plain"
    assert driver.default_tag_suffix("estargz") == "-esgz"
    assert driver.validate_options("plain", {"anything": 1}) == {"anything": 1}
    assert driver.load_driver("plain", {"anything": 1}).options == {"anything": 1}
    assert driver.validate_options("estargz", {})["chunk_size"] == 4 << 20


class PlainDriver(driver.LayerDriver):
    def name(self):
        return "plain"

    def version(self):
        return "v0"

    def convert_layer(self, content, desc):
        return None
