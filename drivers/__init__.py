"""Format drivers shipped with acceld, one package per format.

Each registers under the entry-point group ``acceleration_sdk.drivers`` in ``pyproject.toml``, exactly as a
third-party driver would; the SDK finds them there and never imports this package by name.
"""
