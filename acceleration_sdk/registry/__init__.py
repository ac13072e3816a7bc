"""The distribution-spec registry client: :class:`RegistryClient` on one ``requests.Session``.

Modules, one noun each: ``client`` (the calls), ``blobs`` (streamed download, chunked upload, mount),
``transport`` (scheme per host, retries, error translation), ``auth`` (challenges, tokens),
``credentials`` (acceld config, docker config.json).
"""
from .client import FetchedManifest, RegistryClient
from .credentials import Credentials

__all__ = ["Credentials", "FetchedManifest", "RegistryClient"]
