"""Registry credentials: the acceld config first, then docker's config.json, else anonymous.

Order (acceld's): ``provider.source.<host>.auth`` (base64 ``user:password``, split at the first colon),
then the ``auths`` map of a docker ``config.json`` (``$DOCKER_CONFIG/config.json``, then
``~/.docker/config.json``), else ``None``. ``credsStore``/``credHelpers`` are ignored on purpose: running
helper binaries from a server is not something acceld does.

A :class:`Credentials` never shows its password: not in ``repr``, not in any message.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os

from ..config import Config

log = logging.getLogger("acceleration_sdk.registry")

# Docker Hub is spelled many ways in config files; docker itself stores it as "https://index.docker.io/v1/".
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password for Basic auth or a token request. ``repr`` hides the password."""

    username: str
    password: str = dataclasses.field(repr=False)

    def basic(self) -> str:
        """The value of an ``Authorization: Basic …`` header."""
        pair = f"{self.username}:{self.password}".encode("utf-8")
        return "Basic " + base64.b64encode(pair).decode("ascii")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in a message: the password and the base64 of the pair."""
        pair = f"{self.username}:{self.password}".encode("utf-8")
        return tuple(s for s in (self.password, base64.b64encode(pair).decode("ascii")) if s)


def default_docker_config_path() -> str | None:
    """``$DOCKER_CONFIG/config.json`` when it exists, else ``~/.docker/config.json`` when it exists."""
    candidates = []
    if os.environ.get("DOCKER_CONFIG"):
        candidates.append(os.path.join(os.environ["DOCKER_CONFIG"], "config.json"))
    candidates.append(os.path.join(os.path.expanduser("~"), ".docker", "config.json"))
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def normalize_host(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000`` (docker's ConvertToHostname)."""
    key = key.strip()
    for prefix in ("http://", "https://"):
        if key.lower().startswith(prefix):
            key = key[len(prefix):]
            break
    return key.split("/", 1)[0].lower()


def _host_keys(host: str) -> tuple[str, ...]:
    host = host.lower()
    if host in _DOCKER_HUB_ALIASES:
        return (host,) + tuple(a for a in _DOCKER_HUB_ALIASES if a != host)
    return (host,)


def _decode_auth(value: str) -> Credentials | None:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.rstrip("\n").partition(":")
    if not sep:
        return None
    return Credentials(user, password)


class CredentialStore:
    """Looks credentials up per registry host; the docker config file is read once, lazily."""

    def __init__(self, config: Config | None = None, docker_config: str | None = None):
        self._config = config
        self._docker_config_path = docker_config
        self._docker_auths: dict[str, Credentials] | None = None

    def __repr__(self) -> str:
        return f"CredentialStore(docker_config={self._docker_config_path!r})"

    def for_host(self, host: str) -> Credentials | None:
        """Credentials for ``host`` (port included), or ``None`` for anonymous access."""
        keys = _host_keys(host)
        if self._config is not None:
            for key in keys:
                source = self._config.provider.source_for(key)
                if source is not None:
                    pair = source.credentials()
                    if pair is not None:
                        return Credentials(*pair)
        auths = self._docker()
        for key in keys:
            if key in auths:
                return auths[key]
        return None

    def insecure(self, host: str) -> bool:
        """``provider.source.<host>.insecure``: skip TLS verification, and allow plain HTTP if TLS is refused."""
        if self._config is None:
            return False
        source = self._config.provider.source_for(host)
        return bool(source and source.insecure)

    def token_realms(self, host: str) -> tuple[str, ...]:
        """``provider.source.<host>.token_realms``: other hosts whose token service ``host`` may send us to."""
        source = self._config.provider.source_for(host) if self._config is not None else None
        return source.token_realms if source is not None else ()

    def _docker(self) -> dict[str, Credentials]:
        if self._docker_auths is None:
            path = self._docker_config_path or default_docker_config_path()
            self._docker_auths = _load_docker_auths(path) if path else {}
        return self._docker_auths


def _load_docker_auths(path: str) -> dict[str, Credentials]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # The file holds secrets: name it, never echo its content.
        log.warning("ignoring unreadable docker config %s (%s)", path, type(exc).__name__)
        return {}
    auths = data.get("auths") if isinstance(data, dict) else None
    out: dict[str, Credentials] = {}
    if not isinstance(auths, dict):
        return out
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        creds = None
        if isinstance(entry.get("auth"), str) and entry["auth"].strip():
            creds = _decode_auth(entry["auth"])
        elif isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            creds = Credentials(entry["username"], entry["password"])
        if creds is not None:
            out.setdefault(normalize_host(str(key)), creds)
    return out
