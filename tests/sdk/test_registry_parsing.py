"""The registry client's pure parts: challenges, scopes, the token cache, credential lookup."""
from __future__ import annotations

import base64
import json

from acceleration_sdk.config import from_dict
from acceleration_sdk.registry import Credentials
from acceleration_sdk.registry.auth import TokenCache, merge_scopes, parse_challenges, pick_challenge
from acceleration_sdk.registry.credentials import CredentialStore, normalize_host
from acceleration_sdk.registry.transport import parse_retry_after


def test_bearer_challenge_with_quoted_scope_list():
    header = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
              'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"')
    c = pick_challenge(header)
    assert c.scheme == "bearer" and c.realm == "https://auth.example.com/token"
    assert c.service == "registry.example.com"
    assert c.scopes == ("repository:a/b:pull,push", "repository:c:pull")


def test_several_challenges_prefer_bearer():
    challenges = parse_challenges('Basic realm="x", Bearer realm="https://a/t",service=s')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert pick_challenge('Basic realm="x", Bearer realm="https://a/t",service=s').service == "s"
    assert pick_challenge('Basic realm="Harbor"').scheme == "basic"
    assert pick_challenge('Negotiate abc') is None and pick_challenge("") is None


def test_merge_scopes():
    assert merge_scopes(["repository:a:pull", "repository:a:push", "repository:b:pull",
                         "repository:a:pull", "registry:catalog:*"]) == (
        "repository:a:pull,push", "repository:b:pull", "registry:catalog:*")


def test_token_cache_expires_with_a_margin():
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put("h", ("s",), "tok", lifetime=60)
    assert cache.get("h", ("s",)) == "tok" and cache.get("h", ("other",)) is None
    assert "tok" not in repr(cache).replace("tokens", "")
    now[0] += 49
    assert cache.get("h", ("s",)) == "tok"
    now[0] += 2  # 51 s: within 10 s of expiry
    assert cache.get("h", ("s",)) is None


def test_credentials_repr_hides_the_password():
    creds = Credentials("alice", "hunter2")
    assert "hunter2" not in repr(creds) and "alice" in repr(creds)
    assert creds.basic() == "Basic " + base64.b64encode(b"alice:hunter2").decode()


def test_normalize_docker_config_keys():
    assert normalize_host("https://index.docker.io/v1/") == "index.docker.io"
    assert normalize_host("http://Reg.Example.com:5000/v1/") == "reg.example.com:5000"
    assert normalize_host("reg:5000") == "reg:5000"


def test_credential_lookup_order_and_docker_hub_aliases(tmp_path):
    path = tmp_path / "config.json"
    auth = base64.b64encode(b"hub-user:pa:ss").decode()  # split at the first colon
    path.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": auth},
                                          "broken.example.com": {"auth": "%%%"},
                                          "reg:5000": {"username": "u", "password": "p"}}}))
    store = CredentialStore(docker_config=str(path))
    assert store.for_host("docker.io") == Credentials("hub-user", "pa:ss")
    assert store.for_host("registry-1.docker.io") == Credentials("hub-user", "pa:ss")
    assert store.for_host("reg:5000") == Credentials("u", "p")
    assert store.for_host("reg") is None and store.for_host("broken.example.com") is None
    cfg = from_dict({"provider": {"source": {"reg:5000": {"auth": base64.b64encode(b"cfg:pw").decode(),
                                                          "insecure": True}}}})
    both = CredentialStore(cfg, docker_config=str(path))
    assert both.for_host("reg:5000") == Credentials("cfg", "pw") and both.insecure("reg:5000")
    assert not both.insecure("docker.io")


def test_unreadable_docker_config_means_anonymous(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    assert CredentialStore(docker_config=str(path)).for_host("reg:5000") is None
    assert CredentialStore(docker_config=str(tmp_path / "missing.json")).for_host("reg:5000") is None


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("99999") == 60.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
