import base64
import os

import pytest

from acceleration_sdk import config
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
