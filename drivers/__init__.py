"""Format drivers, registered by name: a dict of dotted paths, imported lazily by
``acceleration_sdk.driver.load_driver``. Third-party drivers register through the entry-point group
``acceleration_sdk.drivers`` instead."""

BUILTIN = {
    "estargz": "drivers.estargz.driver:EStargzDriver",
}
