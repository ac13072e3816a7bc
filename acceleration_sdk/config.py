"""The acceld YAML as frozen dataclasses: one loader, unknown keys rejected with the key's path.

The keys are those of goharbor/acceleration-service's ``misc/config`` files, plus a few of ours
(``server.public_list``, ``server.database``, ``server.redis``, ``converter.timeout``) documented in
``config.example.yaml``. How one field is read (types, sizes, host lists, unknown keys) is
:mod:`acceleration_sdk.config_fields`; this module says which fields each section has.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import types
from typing import Any, Mapping

import yaml

from .config_fields import (as_mapping, check_keys, field_default, field_names, host_list, parse_size,
                            read_field, realm_hosts)
from .errors import AccelError, ConfigError, DriverError
from .routes import Route, load_routes

DEFAULT_PORT = 2077  # acceld's default
DEFAULT_CACHE_SIZE = 200  # acceld documents 200 remote cache records
DEFAULT_GC_THRESHOLD = 1000 * 10**6  # "1000MB", acceld's example value
DEFAULT_TIMEOUT = 3600  # seconds one conversion may take before the worker gives up

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
    routes: tuple[Route, ...] = ()  # empty: acceld's behaviour (driver + rules); see acceleration_sdk.routes
    platforms: tuple[Platform, ...] = ()
    driver: DriverConfig = DriverConfig()
    rules: tuple[Rule, ...] = ()
    timeout: int = DEFAULT_TIMEOUT  # ours: seconds; the queue's retry is set longer than this
    verify: bool = False  # ours: check the pushed image (acceleration_sdk.check) before the tag is written

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

def validate_driver(driver: DriverConfig, path: str = "converter.driver") -> DriverConfig:
    """Check ``type`` names a registered driver and ``config`` suits it (the driver's own option schema);
    ConfigError with the key's path otherwise. Builds the driver once, which imports only that driver."""
    from .driver import load_driver, validate_options  # the driver registry: config stays importable without it

    try:
        validate_options(driver.type, driver.config, f"{path}.config")  # first: errors name this key path
        load_driver(driver.type, driver.config)
    except DriverError as exc:
        where = getattr(exc, "path", "")
        if where:  # an option: the schema named the key
            raise ConfigError(getattr(exc, "reason", str(exc)), where) from None
        if str(exc).startswith(f"{path}."):  # a driver without a schema that still names the key
            raise ConfigError(str(exc)) from None
        raise ConfigError(str(exc), f"{path}.type") from None
    return driver


def _route_driver(data: Any, path: str) -> DriverConfig:
    """A route's own ``driver``: read and checked like ``converter.driver``."""
    data = as_mapping(data, path)
    check_keys(data, field_names(DriverConfig), path)
    opts = as_mapping(data.get("config"), f"{path}.config")
    return validate_driver(DriverConfig(type=read_field(data, DriverConfig, "type", str, path),
                                        config=types.MappingProxyType(dict(opts))), path)


def _load_source(host: str, data: Any, path: str) -> SourceConfig:
    data = as_mapping(data, path)
    check_keys(data, field_names(SourceConfig), path)
    webhook = as_mapping(data.get("webhook"), f"{path}.webhook")
    check_keys(webhook, field_names(WebhookConfig), f"{path}.webhook")
    src = SourceConfig(
        auth=read_field(data, SourceConfig, "auth", str, path),
        insecure=read_field(data, SourceConfig, "insecure", bool, path),
        webhook=WebhookConfig(auth_header=read_field(webhook, WebhookConfig, "auth_header", str, f"{path}.webhook")),
        token_realms=realm_hosts(data.get("token_realms"), f"{path}.token_realms"),
    )
    try:
        src.credentials()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        # The value itself is a secret: name the key, never echo it.
        raise ConfigError("expected base64 of user:password", f"{path}.auth") from None
    return src


def from_dict(data: Any) -> Config:
    """Build a :class:`Config` from parsed YAML; raise :class:`ConfigError` with the key's path."""
    data = as_mapping(data, "")
    check_keys(data, field_names(Config), "")

    server = as_mapping(data.get("server"), "server")
    check_keys(server, field_names(ServerConfig), "server")
    port = read_field(server, ServerConfig, "port", int, "server")
    if not 0 <= port <= 65535:
        raise ConfigError(f"expected a port 0..65535, got {port}", "server.port")
    server_cfg = ServerConfig(
        name=read_field(server, ServerConfig, "name", str, "server"),
        uds=read_field(server, ServerConfig, "uds", str, "server"),
        host=read_field(server, ServerConfig, "host", str, "server"),
        port=port,
        public_list=read_field(server, ServerConfig, "public_list", bool, "server"),
        database=read_field(server, ServerConfig, "database", str, "server"),
        redis=read_field(server, ServerConfig, "redis", str, "server"),
        allowed_hosts=host_list(server.get("allowed_hosts"), "server.allowed_hosts"),
        tls_proxy=read_field(server, ServerConfig, "tls_proxy", bool, "server"),
    )

    metric = as_mapping(data.get("metric"), "metric")
    check_keys(metric, field_names(MetricConfig), "metric")
    metric_cfg = MetricConfig(enabled=read_field(metric, MetricConfig, "enabled", bool, "metric"))

    provider = as_mapping(data.get("provider"), "provider")
    check_keys(provider, field_names(ProviderConfig), "provider")
    sources = as_mapping(provider.get("source"), "provider.source")
    gc = as_mapping(provider.get("gcpolicy"), "provider.gcpolicy")
    check_keys(gc, field_names(GCPolicy), "provider.gcpolicy")
    containerd = as_mapping(provider.get("containerd"), "provider.containerd")
    check_keys(containerd, field_names(ContainerdConfig), "provider.containerd")
    cache_size = read_field(provider, ProviderConfig, "cache_size", int, "provider")
    if cache_size < 0:
        raise ConfigError("cannot be negative", "provider.cache_size")
    provider_cfg = ProviderConfig(
        source=types.MappingProxyType({str(h): _load_source(str(h), v, f"provider.source.{h}")
                                       for h, v in sources.items()}),
        work_dir=read_field(provider, ProviderConfig, "work_dir", str, "provider"),
        gcpolicy=GCPolicy(threshold=parse_size(gc.get("threshold", field_default(GCPolicy, "threshold")),
                                               "provider.gcpolicy.threshold")),
        cache_size=cache_size,
        cache_version=read_field(provider, ProviderConfig, "cache_version", str, "provider"),
        containerd=ContainerdConfig(
            address=read_field(containerd, ContainerdConfig, "address", str, "provider.containerd"),
            snapshotter=read_field(containerd, ContainerdConfig, "snapshotter", str, "provider.containerd")),
    )

    conv = as_mapping(data.get("converter"), "converter")
    check_keys(conv, field_names(ConverterConfig), "converter")
    driver = as_mapping(conv.get("driver"), "converter.driver")
    check_keys(driver, field_names(DriverConfig), "converter.driver")
    driver_opts = as_mapping(driver.get("config"), "converter.driver.config")
    rules_raw = conv.get("rules") or []
    if not isinstance(rules_raw, list):
        raise ConfigError("expected a list", "converter.rules")
    rules = []
    for i, rule in enumerate(rules_raw):
        rule = as_mapping(rule, f"converter.rules[{i}]")
        check_keys(rule, field_names(Rule), f"converter.rules[{i}]")
        rules.append(Rule(tag_suffix=read_field(rule, Rule, "tag_suffix", str, f"converter.rules[{i}]"),
                          cache_tag=read_field(rule, Rule, "cache_tag", str, f"converter.rules[{i}]")))
    worker = read_field(conv, ConverterConfig, "worker", int, "converter")
    if worker < 1:
        raise ConfigError(f"expected at least 1, got {worker}", "converter.worker")
    timeout = read_field(conv, ConverterConfig, "timeout", int, "converter")
    if timeout < 1:
        raise ConfigError(f"expected at least 1 second, got {timeout}", "converter.timeout")
    driver_cfg = validate_driver(DriverConfig(type=read_field(driver, DriverConfig, "type", str, "converter.driver"),
                                              config=types.MappingProxyType(dict(driver_opts))))
    converter_cfg = ConverterConfig(
        routes=load_routes(conv.get("routes"), "converter.routes", hosts=provider_cfg.source.keys(),
                           load_driver=_route_driver),
        worker=worker,
        harbor_annotation=read_field(conv, ConverterConfig, "harbor_annotation", bool, "converter"),
        platforms=parse_platforms(conv.get("platforms")),
        driver=driver_cfg,
        rules=tuple(rules),
        timeout=timeout,
        verify=read_field(conv, ConverterConfig, "verify", bool, "converter"),
    )
    if converter_cfg.verify:
        _check_verifiable(converter_cfg)
    hosts = set(provider_cfg.source)
    _check_image_refs(driver_cfg, "converter.driver", hosts)
    for i, route in enumerate(converter_cfg.routes):
        if route.driver is not None:
            _check_image_refs(route.driver, f"converter.routes[{i}].driver", hosts)
    return Config(server=server_cfg, metric=metric_cfg, provider=provider_cfg, converter=converter_cfg)


def _check_verifiable(converter: ConverterConfig) -> None:
    """``converter.verify: true`` needs a driver that can check its output (``Driver.image_checker``): else
    every conversion would FAIL at the check, so the config is refused at load instead."""
    from .driver import Driver, driver_class  # the driver registry: config stays importable without it

    for driver in (converter.driver, *(r.driver for r in converter.routes if r.driver is not None)):
        if driver_class(driver.type).image_checker.__func__ is Driver.image_checker.__func__:
            raise ConfigError(f"driver {driver.type!r} cannot check its output (it has no image_checker); "
                              "set converter.verify: false", "converter.verify")


def _check_image_refs(driver: DriverConfig, path: str, hosts: set[str]) -> None:
    """Driver options that name an image the driver reads while converting (a driver class's
    ``image_ref_options``, e.g. nydus's ``chunk_dict_ref``) must name a host in ``provider.source``: acceld never
    reads a registry it is not configured for. Refused here at load; the engine refuses it again at run time."""
    from . import reference
    from .driver import driver_class  # the driver registry: config stays importable without it

    for key in getattr(driver_class(driver.type), "image_ref_options", ()):
        value = driver.config.get(key)
        if not value:
            continue
        try:
            host = reference.parse(str(value)).host
        except AccelError as exc:
            raise ConfigError(f"expected an image reference: {exc}", f"{path}.config.{key}") from None
        if host not in hosts:
            raise ConfigError(f"{host} is not a configured registry (provider.source): acceld reads images only "
                              "from the registries it is configured for; add it there or use another image",
                              f"{path}.config.{key}")


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
