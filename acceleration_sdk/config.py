"""The acceld YAML as frozen dataclasses: one loader, unknown keys rejected with the key's path.

The keys are those of goharbor/acceleration-service's ``misc/config`` files, plus a few of ours
(``server.public_list``, ``server.database``, ``server.redis``, ``converter.timeout``) documented in
``config.example.yaml``.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import types
from typing import Any, Mapping

import yaml

from .errors import ConfigError, DriverError

DEFAULT_PORT = 2077  # acceld's default
DEFAULT_CACHE_SIZE = 200  # acceld documents 200 remote cache records
DEFAULT_GC_THRESHOLD = 1000 * 10**6  # "1000MB", acceld's example value
DEFAULT_TIMEOUT = 3600  # seconds one conversion may take before the worker gives up

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}


def parse_size(value: Any, path: str = "") -> int:
    """``1000MB`` -> 10**9, ``512MiB`` -> 512 * 2**20, ``42`` -> 42."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a size such as 1000MB, got {value!r}", path)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError("a size cannot be negative", path)
        return value
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"expected a size such as 1000MB or 512MiB, got {value!r}", path)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


@dataclasses.dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, os_: str, arch: str, variant: str = "") -> bool:
        return self.os == os_ and self.architecture == arch and (not self.variant or self.variant == (variant or ""))


def parse_platforms(value: Any, path: str = "converter.platforms") -> tuple[Platform, ...]:
    if value in (None, ""):
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    out = []
    for item in items:
        parts = str(item).strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"expected os/arch[/variant], got {item!r}", path)
        out.append(Platform(*parts))
    return tuple(out)


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    name: str = "API"
    uds: str = ""
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    public_list: bool = False  # ours: GET /api/v1/conversions without credentials
    database: str = ""  # ours: a database URL; empty = SQLite under work_dir
    redis: str = ""  # ours: a redis:// URL for the django-q2 broker; empty = the ORM broker
    allowed_hosts: tuple[str, ...] = ()  # ours: Host names answered besides loopback and server.host
    tls_proxy: bool = False  # ours: a TLS proxy is in front: secure cookies, HSTS


@dataclasses.dataclass(frozen=True, slots=True)
class MetricConfig:
    enabled: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookConfig:
    auth_header: str = dataclasses.field(default="", repr=False)  # a shared secret: never in a repr


@dataclasses.dataclass(frozen=True, slots=True)
class SourceConfig:
    """One registry host: ``auth`` is base64 ``user:password`` (never logged), ``insecure`` skips TLS verify,
    ``token_realms`` (ours) the other hosts (``host`` or ``host:port``) whose token service it may send us to."""

    auth: str = dataclasses.field(default="", repr=False)
    insecure: bool = False
    webhook: WebhookConfig = WebhookConfig()
    token_realms: tuple[str, ...] = ()

    def credentials(self) -> tuple[str, str] | None:
        """``(user, password)`` from ``auth`` split at the first colon, or None when there is none."""
        if not self.auth.strip():
            return None
        decoded = base64.b64decode(self.auth.strip(), validate=True).decode("utf-8")
        user, _, password = decoded.rstrip("\n").partition(":")
        return user, password


@dataclasses.dataclass(frozen=True, slots=True)
class GCPolicy:
    threshold: int = DEFAULT_GC_THRESHOLD


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerdConfig:
    """Accepted for compatibility with acceld's files; we do not need a containerd."""

    address: str = ""
    snapshotter: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderConfig:
    source: Mapping[str, SourceConfig] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    work_dir: str = "./work"
    gcpolicy: GCPolicy = GCPolicy()
    cache_size: int = DEFAULT_CACHE_SIZE
    cache_version: str = ""
    containerd: ContainerdConfig = ContainerdConfig()

    def source_for(self, host: str) -> SourceConfig | None:
        return self.source.get(host)


@dataclasses.dataclass(frozen=True, slots=True)
class DriverConfig:
    type: str = "estargz"
    config: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    tag_suffix: str = ""
    cache_tag: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ConverterConfig:
    worker: int = 5
    harbor_annotation: bool = True
    platforms: tuple[Platform, ...] = ()
    driver: DriverConfig = DriverConfig()
    rules: tuple[Rule, ...] = ()
    timeout: int = DEFAULT_TIMEOUT  # ours: seconds; the queue's retry is set longer than this

    @property
    def tag_suffix(self) -> str:
        """The first rule's ``tag_suffix`` (acceld uses the first one), else the driver's ``default_tag_suffix``."""
        for rule in self.rules:
            if rule.tag_suffix:
                return rule.tag_suffix
        from .driver import default_tag_suffix  # the driver registry: only when no rule names a suffix

        return default_tag_suffix(self.driver.type)

    @property
    def cache_tag(self) -> str:
        for rule in self.rules:
            if rule.cache_tag:
                return rule.cache_tag
        return ""


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    metric: MetricConfig = MetricConfig()
    provider: ProviderConfig = ProviderConfig()
    converter: ConverterConfig = ConverterConfig()


# ---------------------------------------------------------------- loading

def _mapping(value: Any, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {type(value).__name__}", path)
    return value


def _check_keys(data: dict, allowed: set[str], path: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key (allowed: {', '.join(sorted(allowed))})", where)


def _scalar(data: dict, key: str, kind: type, default: Any, path: str) -> Any:
    where = f"{path}.{key}" if path else key
    if key not in data or data[key] is None:
        return default
    value = data[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"expected true or false, got {value!r}", where)
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"expected a number, got {value!r}", where)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"expected a number, got {value!r}", where) from None
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"expected a string, got {type(value).__name__}", where)
        return str(value)
    raise AssertionError(kind)


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _default(cls, key: str) -> Any:
    """The dataclass field's default: each default is written once, on the dataclass."""
    field = next(f for f in dataclasses.fields(cls) if f.name == key)
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _field(data: dict, cls, key: str, kind: type, path: str) -> Any:
    """``data[key]`` as ``kind``, or ``cls``'s default for ``key`` when absent."""
    return _scalar(data, key, kind, _default(cls, key), path)


def validate_driver(driver: DriverConfig, path: str = "converter.driver") -> DriverConfig:
    """Check ``type`` names a registered driver and ``config`` suits it (the driver's own option schema);
    ConfigError with the key's path otherwise. Builds the driver once, which imports only that driver."""
    from .driver import load_driver  # the driver registry: config stays importable without it

    try:
        load_driver(driver.type, driver.config)
    except DriverError as exc:
        where = getattr(exc, "path", "")
        if where:  # an option: the schema named the key
            raise ConfigError(getattr(exc, "reason", str(exc)), where) from None
        if str(exc).startswith(f"{path}."):  # a driver without a schema that still names the key
            raise ConfigError(str(exc)) from None
        raise ConfigError(str(exc), f"{path}.type") from None
    return driver


# host or host:port, as it appears in a URL's authority (an IPv6 literal in brackets); no scheme, no path.
_REALM_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _realm_hosts(value: Any, path: str) -> tuple[str, ...]:
    """``token_realms``: a list of ``auth.example.com`` or ``auth.example.com:8443``, lower-cased."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("expected a list of hosts such as [auth.example.com]", path)
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _REALM_HOST.fullmatch(item.strip()):
            raise ConfigError(f"expected a host or host:port (no scheme, no path), got {item!r}", f"{path}[{i}]")
        out.append(item.strip().lower())
    return tuple(out)


def _host_list(value: Any, path: str) -> tuple[str, ...]:
    """``server.allowed_hosts``: Django's patterns (``acceld.example.com``, ``.example.com`` for subdomains)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError("expected a list of host names such as [acceld.example.com]", path)
    return tuple(v.strip().lower() for v in value)


def _load_source(host: str, data: Any, path: str) -> SourceConfig:
    data = _mapping(data, path)
    _check_keys(data, _fields(SourceConfig), path)
    webhook = _mapping(data.get("webhook"), f"{path}.webhook")
    _check_keys(webhook, _fields(WebhookConfig), f"{path}.webhook")
    src = SourceConfig(
        auth=_field(data, SourceConfig, "auth", str, path),
        insecure=_field(data, SourceConfig, "insecure", bool, path),
        webhook=WebhookConfig(auth_header=_field(webhook, WebhookConfig, "auth_header", str, f"{path}.webhook")),
        token_realms=_realm_hosts(data.get("token_realms"), f"{path}.token_realms"),
    )
    try:
        src.credentials()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        # The value itself is a secret: name the key, never echo it.
        raise ConfigError("expected base64 of user:password", f"{path}.auth") from None
    return src


def from_dict(data: Any) -> Config:
    """Build a :class:`Config` from parsed YAML; raise :class:`ConfigError` with the key's path."""
    data = _mapping(data, "")
    _check_keys(data, _fields(Config), "")

    server = _mapping(data.get("server"), "server")
    _check_keys(server, _fields(ServerConfig), "server")
    port = _field(server, ServerConfig, "port", int, "server")
    if not 0 <= port <= 65535:
        raise ConfigError(f"expected a port 0..65535, got {port}", "server.port")
    server_cfg = ServerConfig(
        name=_field(server, ServerConfig, "name", str, "server"),
        uds=_field(server, ServerConfig, "uds", str, "server"),
        host=_field(server, ServerConfig, "host", str, "server"),
        port=port,
        public_list=_field(server, ServerConfig, "public_list", bool, "server"),
        database=_field(server, ServerConfig, "database", str, "server"),
        redis=_field(server, ServerConfig, "redis", str, "server"),
        allowed_hosts=_host_list(server.get("allowed_hosts"), "server.allowed_hosts"),
        tls_proxy=_field(server, ServerConfig, "tls_proxy", bool, "server"),
    )

    metric = _mapping(data.get("metric"), "metric")
    _check_keys(metric, _fields(MetricConfig), "metric")
    metric_cfg = MetricConfig(enabled=_field(metric, MetricConfig, "enabled", bool, "metric"))

    provider = _mapping(data.get("provider"), "provider")
    _check_keys(provider, _fields(ProviderConfig), "provider")
    sources = _mapping(provider.get("source"), "provider.source")
    gc = _mapping(provider.get("gcpolicy"), "provider.gcpolicy")
    _check_keys(gc, _fields(GCPolicy), "provider.gcpolicy")
    containerd = _mapping(provider.get("containerd"), "provider.containerd")
    _check_keys(containerd, _fields(ContainerdConfig), "provider.containerd")
    cache_size = _field(provider, ProviderConfig, "cache_size", int, "provider")
    if cache_size < 0:
        raise ConfigError("cannot be negative", "provider.cache_size")
    provider_cfg = ProviderConfig(
        source=types.MappingProxyType({str(h): _load_source(str(h), v, f"provider.source.{h}")
                                       for h, v in sources.items()}),
        work_dir=_field(provider, ProviderConfig, "work_dir", str, "provider"),
        gcpolicy=GCPolicy(threshold=parse_size(gc.get("threshold", _default(GCPolicy, "threshold")),
                                               "provider.gcpolicy.threshold")),
        cache_size=cache_size,
        cache_version=_field(provider, ProviderConfig, "cache_version", str, "provider"),
        containerd=ContainerdConfig(
            address=_field(containerd, ContainerdConfig, "address", str, "provider.containerd"),
            snapshotter=_field(containerd, ContainerdConfig, "snapshotter", str, "provider.containerd")),
    )

    conv = _mapping(data.get("converter"), "converter")
    _check_keys(conv, _fields(ConverterConfig), "converter")
    driver = _mapping(conv.get("driver"), "converter.driver")
    _check_keys(driver, _fields(DriverConfig), "converter.driver")
    driver_opts = _mapping(driver.get("config"), "converter.driver.config")
    rules_raw = conv.get("rules") or []
    if not isinstance(rules_raw, list):
        raise ConfigError("expected a list", "converter.rules")
    rules = []
    for i, rule in enumerate(rules_raw):
        rule = _mapping(rule, f"converter.rules[{i}]")
        _check_keys(rule, _fields(Rule), f"converter.rules[{i}]")
        rules.append(Rule(tag_suffix=_field(rule, Rule, "tag_suffix", str, f"converter.rules[{i}]"),
                          cache_tag=_field(rule, Rule, "cache_tag", str, f"converter.rules[{i}]")))
    worker = _field(conv, ConverterConfig, "worker", int, "converter")
    if worker < 1:
        raise ConfigError(f"expected at least 1, got {worker}", "converter.worker")
    timeout = _field(conv, ConverterConfig, "timeout", int, "converter")
    if timeout < 1:
        raise ConfigError(f"expected at least 1 second, got {timeout}", "converter.timeout")
    driver_cfg = validate_driver(DriverConfig(type=_field(driver, DriverConfig, "type", str, "converter.driver"),
                                              config=types.MappingProxyType(dict(driver_opts))))
    converter_cfg = ConverterConfig(
        worker=worker,
        harbor_annotation=_field(conv, ConverterConfig, "harbor_annotation", bool, "converter"),
        platforms=parse_platforms(conv.get("platforms")),
        driver=driver_cfg,
        rules=tuple(rules),
        timeout=timeout,
    )
    return Config(server=server_cfg, metric=metric_cfg, provider=provider_cfg, converter=converter_cfg)


CONFIG_NAMES = ("config.yaml", "config.example.yaml")  # what `make run` and accelctl look for, in this order


def find(dirs: "list[str | os.PathLike]", env: Mapping[str, str] | None = None) -> str | None:
    """``$ACCELD_CONFIG``, else the first ``config.yaml`` / ``config.example.yaml`` in ``dirs``; None if none."""
    env = os.environ if env is None else env
    explicit = env.get("ACCELD_CONFIG", "").strip()
    if explicit:
        return explicit
    for base in dirs:
        for name in CONFIG_NAMES:
            candidate = os.path.join(os.fspath(base), name)
            if os.path.isfile(candidate):
                return candidate
    return None


def loads(text: str, origin: str = "<config>") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{origin}: not valid YAML{where}") from exc
    return from_dict(data)


def load(path: str | os.PathLike) -> Config:
    """Read and validate the YAML file at ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)} is not UTF-8 text") from exc
    return loads(text, origin=os.fspath(path))
