import base64
import os
from importlib.metadata import EntryPoint

import pytest

from acceleration_sdk import config
from acceleration_sdk import driver as driver_mod
from acceleration_sdk.driver import Driver
from acceleration_sdk.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_example_config_loads():
    cfg = config.load(os.path.join(ROOT, "config.example.yaml"))
    assert cfg.server.port == 2077
    assert cfg.converter.driver.type == "estargz"
    assert cfg.converter.tag_suffix == "-esgz"
    assert cfg.provider.gcpolicy.threshold == 10**9


def test_acceld_style_config_loads():
    text = """
server: {name: API, host: 0.0.0.0, port: 2077}
metric: {enabled: true}
provider:
  source:
    hub.harbor.com: {auth: YTpiCg==, insecure: false, webhook: {auth_header: header}}
    localhost: {}
  containerd: {address: /run/containerd/containerd.sock, snapshotter: overlayfs}
  work_dir: /tmp
  gcpolicy: {threshold: 512MiB}
  cache_size: 200
converter:
  worker: 5
  harbor_annotation: true
  platforms: linux/amd64,linux/arm64/v8
  driver: {type: estargz, config: {docker2oci: true}}
  rules: [{tag_suffix: -esgz}, {cache_tag: esgz-cache}]
"""
    cfg = config.loads(text)
    assert cfg.provider.gcpolicy.threshold == 512 * 2**20
    assert cfg.provider.source["hub.harbor.com"].credentials() == ("a", "b")
    assert cfg.provider.source["hub.harbor.com"].webhook.auth_header == "header"
    assert [str(p) for p in cfg.converter.platforms] == ["linux/amd64", "linux/arm64/v8"]
    assert cfg.converter.cache_tag == "esgz-cache"


def test_credentials_split_at_first_colon():
    auth = base64.b64encode(b"robot$acc:pa:ss:word").decode()
    cfg = config.loads(f"provider: {{source: {{h.io: {{auth: '{auth}'}}}}}}")
    assert cfg.provider.source["h.io"].credentials() == ("robot$acc", "pa:ss:word")


@pytest.mark.parametrize("text, path", [
    ("servr: {}", "servr"),
    ("server: {prot: 1}", "server.prot"),
    ("server: {port: abc}", "server.port"),
    ("server: {port: 70000}", "server.port"),
    ("metric: {enabled: maybe}", "metric.enabled"),
    ("provider: {gcpolicy: {threshold: 12parsecs}}", "provider.gcpolicy.threshold"),
    ("provider: {source: {h.io: {auth: '%%%not-base64'}}}", "provider.source.h.io.auth"),
    ("provider: {source: {h.io: {webhook: {header: x}}}}", "provider.source.h.io.webhook.header"),
    ("converter: {worker: 0}", "converter.worker"),
    ("converter: {platforms: linux}", "converter.platforms"),
    ("converter: {rules: [{suffix: x}]}", "converter.rules[0].suffix"),
    ("converter: {driver: {kind: estargz}}", "converter.driver.kind"),
])
def test_bad_key_or_value_names_the_path(text, path):
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    assert str(info.value).startswith(path + ":"), str(info.value)
    assert "\n" not in str(info.value)


def test_bad_auth_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        config.loads("provider: {source: {h.io: {auth: 'S3cretNotB64!'}}}")
    assert "S3cretNotB64" not in str(info.value)


def test_secrets_not_in_repr():
    auth = base64.b64encode(b"u:topsecret").decode()
    cfg = config.loads(f"provider: {{source: {{h.io: {{auth: '{auth}', webhook: {{auth_header: hook-secret}}}}}}}}")
    assert auth not in repr(cfg) and "hook-secret" not in repr(cfg)


def test_invalid_yaml_and_missing_file():
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.loads("server: [")
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load("/nonexistent/acceld.yaml")


@pytest.mark.parametrize("value, expected", [("1000MB", 10**9), ("1GiB", 2**30), ("42", 42), (7, 7),
                                             ("1.5kb", 1500)])
def test_parse_size(value, expected):
    assert config.parse_size(value) == expected


# ------------------------------------------------------------ the driver section, checked against the driver

@pytest.mark.parametrize("text, path, words", [
    ("converter: {driver: {type: nydusx}}", "converter.driver.type", "unknown driver 'nydusx' (available: "),
    ("converter: {driver: {config: {compresion: zstd}}}", "converter.driver.config.compresion",
     "unknown option for estargz (allowed: compression, "),
    ("converter: {driver: {config: {compression: lz4}}}", "converter.driver.config.compression",
     "expected one of estargz, zstdchunked, got 'lz4'"),
    ("converter: {driver: {config: {chunk_size: 12}}}", "converter.driver.config.chunk_size", "expected 4096.."),
    ("converter: {driver: {config: {compression_level: 10}}}", "converter.driver.config.compression_level",
     "expected 1..9, got 10"),
    ("converter: {driver: {config: {compression: zstdchunked, compression_level: 23}}}",
     "converter.driver.config.compression_level", "expected 1..22, got 23"),
    ("converter: {driver: {config: {docker2oci: maybe}}}", "converter.driver.config.docker2oci", "true or false"),
])
def test_driver_type_and_options_are_checked_at_load(text, path, words):
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value), str(info.value)


def test_option_range_follows_compression():
    cfg = config.loads("converter: {driver: {config: {compression: zstdchunked, compression_level: 19}}}")
    assert cfg.converter.driver.config["compression_level"] == 19  # the YAML as written; the driver fills defaults


def test_tag_suffix_is_the_rules_else_the_drivers_own():
    assert config.loads("converter: {driver: {type: estargz}}").converter.tag_suffix == "-esgz"
    assert config.loads("converter: {rules: [{tag_suffix: -lazy}]}").converter.tag_suffix == "-lazy"


def test_defaults_live_on_the_dataclasses_only():
    # An empty file and no file at all (runtime's Config()) must mean the same thing.
    assert config.from_dict({}) == config.Config()
    assert config.loads("server: {}\nprovider: {gcpolicy: {}}\nconverter: {driver: {}, rules: [{}]}").server == \
        config.ServerConfig()


def test_example_config_restates_the_driver_defaults_it_shows():
    # config.example.yaml shows some estargz options for documentation; each must be the driver's default,
    # so the default stays written once (in the driver's schema) and the example cannot drift from it.
    from acceleration_sdk.driver import driver_class

    schema = driver_class("estargz").options_schema
    shown = config.load(os.path.join(ROOT, "config.example.yaml")).converter.driver.config
    defaults = schema.validate({})
    assert shown and all(schema.validate({k: v})[k] == defaults[k] for k, v in shown.items()), dict(shown)
    example = open(os.path.join(ROOT, "config.example.yaml"), encoding="utf-8").read()
    assert all(option.name in example for option in schema), "document every option"


def test_find_config_like_the_service(tmp_path):
    assert config.find([tmp_path], env={}) is None
    (tmp_path / "config.example.yaml").write_text("{}")
    assert config.find([tmp_path], env={}) == str(tmp_path / "config.example.yaml")
    (tmp_path / "config.yaml").write_text("{}")
    assert config.find([tmp_path], env={}) == str(tmp_path / "config.yaml")
    assert config.find([tmp_path], env={"ACCELD_CONFIG": "/etc/acceld.yaml"}) == "/etc/acceld.yaml"


class FakeUncheckedDriver(Driver):
    """A fake plugin: a driver written without an image_checker (every installed driver has one)."""

    def name(self) -> str:
        return "unchecked"

    def version(self) -> str:
        return "0"

    def convert(self, content, source):
        raise NotImplementedError


def test_verify_needs_a_driver_that_can_check_its_output(monkeypatch):
    installed = dict(driver_mod._entry_points())
    installed["unchecked"] = EntryPoint("unchecked", f"{__name__}:FakeUncheckedDriver", driver_mod.ENTRY_POINT_GROUP)
    monkeypatch.setattr(driver_mod, "_entry_points", lambda: installed)
    # no image_checker: every verifying conversion would FAIL, so the config is refused at load
    with pytest.raises(ConfigError, match="driver 'unchecked' cannot check its output") as info:
        config.loads("converter: {verify: true, driver: {type: unchecked}}\n")
    assert info.value.path == "converter.verify"
    assert not config.loads("converter: {verify: false, driver: {type: unchecked}}\n").converter.verify
    for name in ("estargz", "nydus", "soci"):  # every driver this project ships can check its output
        assert config.loads(f"converter: {{verify: true, driver: {{type: {name}}}}}\n").converter.verify


