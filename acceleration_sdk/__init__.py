"""acceleration_sdk: convert container images to lazy-pulling formats (eStargz, zstd:chunked).

    from acceleration_sdk import load_config, convert
    result = convert(load_config("config.yaml"), "registry.example.com/library/nginx:latest")
    print(result.target, result.digest, result.target_size)

The public names are listed in ``__all__``; everything else is internal. This package never imports Django.
"""
from __future__ import annotations

import importlib

from .config import Config, load as load_config, loads as loads_config
from .errors import (AccelError, AuthError, ConfigError, ContentError, ConversionError, DigestMismatchError,
                     DriverError, LayerError, NotFoundError, ReferenceError_, RegistryError, StorageFullError,
                     UnreachableError, UnsupportedMediaTypeError)
from .reference import Reference, parse as parse_reference

# The one version string: pyproject.toml reads it ([tool.setuptools.dynamic]); accelctl --version, the
# registry User-Agent and the service's start-up line print it.
__version__ = "0.1.0"

# Names that pull in requests and the registry client are imported on first use.
_LAZY = {
    "convert": "acceleration_sdk.engine",
    "ConversionResult": "acceleration_sdk.engine",
    "check_image": "acceleration_sdk.check",
    "CheckResult": "acceleration_sdk.check",
    "ImageChecker": "acceleration_sdk.driver",
    "RegistryClient": "acceleration_sdk.registry",
    "ContentStore": "acceleration_sdk.content",
    "Driver": "acceleration_sdk.driver",
    "LayerDriver": "acceleration_sdk.driver",
    "ConvertedLayer": "acceleration_sdk.driver",
    "ProgressEvent": "acceleration_sdk.driver",
    "SourceManifest": "acceleration_sdk.driver",
    "load_driver": "acceleration_sdk.driver",
    "Option": "acceleration_sdk.options",
    "OptionSchema": "acceleration_sdk.options",
    "PushPlan": "acceleration_sdk.push",
}

__all__ = sorted([
    "AccelError", "AuthError", "CheckResult", "Config", "ConfigError", "ContentError", "ContentStore",
    "ConversionError", "ConversionResult", "ConvertedLayer", "DigestMismatchError", "Driver", "DriverError",
    "ImageChecker", "LayerDriver", "LayerError", "NotFoundError", "Option", "OptionSchema", "ProgressEvent",
    "PushPlan", "Reference", "ReferenceError_", "RegistryClient", "RegistryError", "SourceManifest",
    "StorageFullError", "UnreachableError", "UnsupportedMediaTypeError",
    "__version__", "check_image", "convert", "load_config", "load_driver", "loads_config", "parse_reference",
])


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'acceleration_sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
