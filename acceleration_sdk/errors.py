"""The one exception tree of acceleration_sdk.

Every error the SDK raises is an :class:`AccelError`; third-party errors (requests, zlib, zstandard,
tarfile, yaml) are translated at one boundary with ``raise X(...) from exc``. Each class has a stable
``code`` that the service maps to its JSON error body.

    AccelError                         ERR_ACCEL
    ├── ConfigError                    ERR_CONFIG            bad YAML, unknown key, wrong value (.path)
    ├── ReferenceError_                ERR_ILLEGAL_PARAMETER an image reference that does not parse (.reference)
    ├── RegistryError                  ERR_REGISTRY          a registry said no (.reference, .status, .registry_code)
    │   ├── AuthError                  ERR_UNAUTHORIZED      401/403 after the auth flow
    │   │   └── TokenRealmError        ERR_TOKEN_REALM       a token realm we refuse to call (.realm_host)
    │   ├── NotFoundError              ERR_NOT_FOUND         manifest, tag or blob unknown
    │   ├── UnreachableError           ERR_UNREACHABLE       DNS, refused connection, TLS failure, timeouts
    │   └── UnsupportedMediaTypeError  ERR_UNSUPPORTED       schema1 and other media types we cannot convert
    ├── ContentError                   ERR_CONTENT           a store problem (.digest)
    │   ├── DigestMismatchError        ERR_DIGEST_MISMATCH   bytes do not hash to the digest they claim
    │   └── StorageFullError           ERR_STORAGE_FULL      ENOSPC under work_dir
    ├── LayerError                     ERR_LAYER             a layer that cannot be read (.digest): bad tar, bad gzip, hostile names
    ├── DriverError                    ERR_DRIVER            unknown driver, bad driver option, driver failure
    └── ConversionError                ERR_CONVERT_FAILED    anything else that makes a conversion fail (.reference)

Messages are one line, name the thing that failed, and never carry a credential.
"""
from __future__ import annotations


class AccelError(Exception):
    """Base of every error acceleration_sdk raises."""

    code = "ERR_ACCEL"

    def __init__(self, message: str, **context):
        super().__init__(message)
        self.message = message
        for key, value in context.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class ConfigError(AccelError):
    """The acceld YAML is malformed or holds an unknown key or wrong value; ``.path`` is the key path."""

    code = "ERR_CONFIG"

    def __init__(self, message: str, path: str = ""):
        super().__init__(f"{path}: {message}" if path else message, path=path)


class ReferenceError_(AccelError):
    """An image reference that does not parse; ``.reference`` is the input."""

    code = "ERR_ILLEGAL_PARAMETER"

    def __init__(self, message: str, reference: str = ""):
        super().__init__(message, reference=reference)


class RegistryError(AccelError):
    """A registry answered with an error; ``.status`` is the HTTP status, ``.registry_code`` its error code."""

    code = "ERR_REGISTRY"

    def __init__(self, message: str, reference: str = "", status: int | None = None, registry_code: str = ""):
        super().__init__(message, reference=reference, status=status, registry_code=registry_code)


class AuthError(RegistryError):
    """The registry refused our credentials (or we had none) after the token/basic flow."""

    code = "ERR_UNAUTHORIZED"


class TokenRealmError(AuthError):
    """A registry pointed us at a token service we refuse to call: on a host that is neither the registry's
    nor listed in its ``token_realms``, or on plain HTTP while we hold credentials. ``.realm_host`` names it."""

    code = "ERR_TOKEN_REALM"

    def __init__(self, message: str, reference: str = "", realm_host: str = ""):
        super().__init__(message, reference=reference)
        self.realm_host = realm_host


class NotFoundError(RegistryError):
    """A manifest, tag or blob the registry does not know."""

    code = "ERR_NOT_FOUND"


class UnreachableError(RegistryError):
    """The registry could not be reached: DNS, refused connection, TLS failure or timeout."""

    code = "ERR_UNREACHABLE"


class UnsupportedMediaTypeError(RegistryError):
    """A manifest media type we cannot convert (Docker schema1, unknown artifacts)."""

    code = "ERR_UNSUPPORTED"


class ContentError(AccelError):
    """A problem in the content store; ``.digest`` names the blob."""

    code = "ERR_CONTENT"

    def __init__(self, message: str, digest: str = ""):
        super().__init__(message, digest=digest)


class DigestMismatchError(ContentError):
    """Bytes that do not hash to the digest they were fetched or announced under."""

    code = "ERR_DIGEST_MISMATCH"

    def __init__(self, message: str, digest: str = "", actual: str = ""):
        super().__init__(message, digest=digest)
        self.actual = actual


class StorageFullError(ContentError):
    """The file system under work_dir is full (ENOSPC)."""

    code = "ERR_STORAGE_FULL"


class LayerError(AccelError):
    """A layer that cannot be converted: broken compression, broken tar, hostile entries. ``.digest`` names it."""

    code = "ERR_LAYER"

    def __init__(self, message: str, digest: str = ""):
        super().__init__(message, digest=digest)


class DriverError(AccelError):
    """An unknown driver, a bad driver option, or a driver failure."""

    code = "ERR_DRIVER"


class ConversionError(AccelError):
    """A conversion failed for a reason none of the other classes names."""

    code = "ERR_CONVERT_FAILED"

    def __init__(self, message: str, reference: str = ""):
        super().__init__(message, reference=reference)
