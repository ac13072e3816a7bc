"""Registry auth against the real docker-registry: token auth (with the test issuer), htpasswd Basic,
credentials from the acceld config and docker's config.json, and secrets that never leak."""
from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import io
import json
import logging
import socket
import time

import pytest

from acceleration_sdk import oci
from acceleration_sdk.config import from_dict
from acceleration_sdk.errors import AuthError, ConfigError, TokenRealmError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support.realm_trap import ChallengingRegistry, ConnectionWitness, Redirector
from tests.support.registry import RegistryServer
from tests.support.token_issuer import TokenIssuer

PASSWORD = "pw-Secr3t-do-not-leak"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def config_for(host: str, user: str = "alice", password: str = PASSWORD, **extra):
    return from_dict({"provider": {"source": {host: {"auth": b64(user, password), **extra}}}})


@pytest.fixture
def issuer(tmp_path):
    with TokenIssuer(tmp_path / "issuer", users={"alice": PASSWORD, "bob": "bobs-password"},
                     grants={"alice": "*", "bob": {"shared/app": "pull"}}) as iss:
        yield iss


@pytest.fixture
def token_registry(tmp_path, issuer):
    with RegistryServer(tmp_path / "registry", token=issuer) as server:
        yield server


@pytest.fixture
def basic_registry(tmp_path):
    with RegistryServer(tmp_path / "registry", htpasswd={"alice": PASSWORD}) as server:
        yield server


def push_and_pull(client, ref, data: bytes) -> None:
    assert client.push_blob(ref, sha(data), len(data), io.BytesIO(data)) in ("uploaded", "exists")
    out = io.BytesIO()
    client.download_blob(ref, sha(data), out)
    assert out.getvalue() == data


# ------------------------------------------------------------------------------------------------ token auth

def test_token_auth_push_pull_and_tokens_are_cached_per_scope(token_registry, issuer):
    client = RegistryClient(config_for(token_registry.host))
    ref = parse(f"{token_registry.host}/team/app:v1")
    for i in range(3):
        data = f"blob {i}".encode()
        assert client.push_blob(ref, sha(data), len(data), io.BytesIO(data)) == "uploaded"
    config = b"{}"
    client.push_blob(ref, sha(config), len(config), io.BytesIO(config))
    manifest = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                                   "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(config), "size": 2},
                                   "layers": []})
    client.put_manifest(ref, manifest, oci.OCI_MANIFEST)
    # Four pushes (HEAD, POST, PUT each) and a manifest PUT: one token for pull,push.
    assert issuer.count("repository:team/app:pull,push") == 1
    for _ in range(3):
        assert client.get_manifest(ref).raw == manifest
        client.download_blob(ref, sha(b"blob 0"), io.BytesIO())
    assert issuer.count() == 2  # and one for pull
    assert issuer.requests[-1] == ("alice", ("repository:team/app:pull",))
    # Another repository is another scope: another token.
    push_and_pull(client, parse(f"{token_registry.host}/team/other:v1"), b"other")
    assert issuer.count("repository:team/other:") == 2


def test_concurrent_pushes_share_one_token(token_registry, issuer):
    client = RegistryClient(config_for(token_registry.host))
    ref = parse(f"{token_registry.host}/team/conc:v1")
    blobs = [f"concurrent {i}".encode() for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: client.push_blob(ref, sha(b), len(b), io.BytesIO(b)), blobs))
    assert results == ["uploaded"] * 8
    assert issuer.count("repository:team/conc:pull,push") == 1


def test_expired_token_is_fetched_again(token_registry, issuer):
    client = RegistryClient(config_for(token_registry.host))
    ref = parse(f"{token_registry.host}/team/exp:v1")
    push_and_pull(client, ref, b"data")
    before = issuer.count()
    cache = client._transport.auth.tokens
    real_clock = cache._clock
    cache._clock = lambda: real_clock() + issuer.lifetime  # the issuer's tokens have just expired
    assert client.blob_exists(ref, sha(b"data"))
    assert issuer.count() == before + 1


def test_mount_asks_for_pull_on_the_source_repository(token_registry, issuer):
    client = RegistryClient(config_for(token_registry.host))
    src = parse(f"{token_registry.host}/team/src:v1")
    dst = parse(f"{token_registry.host}/team/dst:v1")
    data = b"mount me" * 1000
    client.push_blob(src, sha(data), len(data), io.BytesIO(data))
    assert client.push_blob(dst, sha(data), len(data), io.BytesIO(data), mount_from=src) == "mounted"
    assert ("alice", ("repository:team/dst:pull,push", "repository:team/src:pull")) in issuer.requests


def test_access_token_field_is_accepted(tmp_path):
    with TokenIssuer(tmp_path / "iss", users={"alice": PASSWORD}, field="access_token") as iss, \
            RegistryServer(tmp_path / "reg", token=iss) as server:
        push_and_pull(RegistryClient(config_for(server.host)), parse(f"{server.host}/a/b:v1"), b"x")
        assert iss.count() >= 1


def test_wrong_password_is_an_auth_error_naming_host_and_repository(token_registry, issuer):
    client = RegistryClient(config_for(token_registry.host, password="wrong-password"))
    ref = parse(f"{token_registry.host}/team/app:v1")
    with pytest.raises(AuthError) as info:
        client.get_manifest(ref)
    msg = str(info.value)
    assert token_registry.host in msg and "team/app" in msg and "'alice'" in msg
    assert "wrong-password" not in msg and b64("alice", "wrong-password") not in msg


def test_anonymous_without_grants_is_denied(token_registry, issuer):
    ref = parse(f"{token_registry.host}/team/app:v1")
    with pytest.raises(AuthError) as info:
        RegistryClient().get_manifest(ref)
    assert f"{token_registry.host} denied access to team/app" in str(info.value)
    assert f"no credentials are configured for {token_registry.host}" in str(info.value)
    assert issuer.requests[-1] == ("", ("repository:team/app:pull",))


def test_a_user_gets_only_the_scopes_granted(token_registry, issuer):
    alice = RegistryClient(config_for(token_registry.host))
    bob = RegistryClient(config_for(token_registry.host, user="bob", password="bobs-password"))
    shared = parse(f"{token_registry.host}/shared/app:v1")
    push_and_pull(alice, shared, b"shared")
    out = io.BytesIO()
    bob.download_blob(shared, sha(b"shared"), out)  # bob may pull shared/app ...
    assert out.getvalue() == b"shared"
    with pytest.raises(AuthError):  # ... but not push to it
        bob.push_blob(shared, sha(b"bob's"), 5, io.BytesIO(b"bob's"))
    with pytest.raises(AuthError):  # ... nor pull anything else
        bob.get_manifest(parse(f"{token_registry.host}/team/app:v1"))


# ------------------------------------------------------------------------------------------------ basic auth

def test_basic_auth_against_htpasswd(basic_registry):
    client = RegistryClient(config_for(basic_registry.host))
    push_and_pull(client, parse(f"{basic_registry.host}/b/app:v1"), b"basic")
    assert '"GET /v2/b/app/blobs/' in basic_registry.log()


def test_basic_auth_wrong_password_and_no_credentials(basic_registry):
    ref = parse(f"{basic_registry.host}/b/app:v1")
    with pytest.raises(AuthError) as info:
        RegistryClient(config_for(basic_registry.host, password="nope-nope")).blob_exists(ref, sha(b"x"))
    assert basic_registry.host in str(info.value) and "b/app" in str(info.value)
    assert "nope-nope" not in str(info.value)
    with pytest.raises(AuthError, match="no credentials are configured"):
        RegistryClient().blob_exists(ref, sha(b"x"))


# ------------------------------------------------------------------------------------------------ docker config.json

@pytest.mark.parametrize("key_form", ["{host}", "http://{host}/v1/", "https://{host}"])
def test_docker_config_json_credentials(basic_registry, tmp_path, key_form):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credsStore": "desktop", "auths": {
        "other.example.com": {"auth": b64("mallory", "x")},
        key_form.format(host=basic_registry.host): {"auth": b64("alice", PASSWORD)},
    }}))
    push_and_pull(RegistryClient(docker_config=str(path)), parse(f"{basic_registry.host}/d/app:v1"), b"dc")


def test_docker_config_username_password_and_default_location(basic_registry, tmp_path, monkeypatch):
    conf_dir = tmp_path / "dockercfg"
    conf_dir.mkdir()
    (conf_dir / "config.json").write_text(json.dumps({"auths": {
        basic_registry.host: {"username": "alice", "password": PASSWORD}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(conf_dir))
    push_and_pull(RegistryClient(), parse(f"{basic_registry.host}/d/env:v1"), b"env")
    # ~/.docker/config.json when $DOCKER_CONFIG has none
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text((conf_dir / "config.json").read_text())
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(home))
    push_and_pull(RegistryClient(), parse(f"{basic_registry.host}/d/home:v1"), b"home")


def test_acceld_config_wins_over_docker_config(basic_registry, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {basic_registry.host: {"auth": b64("alice", "stale")}}}))
    client = RegistryClient(config_for(basic_registry.host), docker_config=str(path))
    push_and_pull(client, parse(f"{basic_registry.host}/d/cfg:v1"), b"cfg")


# ------------------------------------------------------------------------------------------------ secrets

def test_secrets_never_appear_in_messages_logs_or_reprs(token_registry, basic_registry, issuer, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's included
    seen: list[str] = []

    def record(exc: BaseException) -> None:
        while exc is not None:
            seen.extend((str(exc), repr(exc), repr(exc.args)))
            exc = exc.__cause__ or exc.__context__

    for server in (token_registry, basic_registry):
        good = RegistryClient(config_for(server.host))
        ref = parse(f"{server.host}/s/app:v1")
        push_and_pull(good, ref, b"secret test")
        seen.extend((repr(good), repr(good._transport), repr(good._transport.auth),
                     repr(good._transport.auth.tokens), repr(good._transport.credentials.for_host(server.host))))
        for client in (RegistryClient(config_for(server.host, password=PASSWORD[::-1])), RegistryClient()):
            for call in (lambda: client.get_manifest(ref), lambda: client.push_blob(ref, sha(b"z"), 1, io.BytesIO(b"z"))):
                with pytest.raises(AuthError) as info:
                    call()
                record(info.value)
    assert issuer.issued, "the token flow ran"
    text = "\n".join(seen) + "\n" + caplog.text
    assert "denied access" in text or "refused" in text
    for secret in (PASSWORD, PASSWORD[::-1], b64("alice", PASSWORD), b64("alice", PASSWORD[::-1]), *issuer.issued):
        assert secret not in text


# ------------------------------------------------------------------------------------------------ token realms

METADATA_PATH = "/latest/meta-data/iam/security-credentials/?anything=1"


def test_a_realm_on_another_host_is_never_contacted():
    """The cloud-metadata SSRF: a registry names a realm on 127.0.0.2; nobody connects there, the error names it."""
    with ConnectionWitness("127.0.0.2", 8080) as witness, \
            ChallengingRegistry(f"http://{witness.host}{METADATA_PATH}") as trap:
        for client in (RegistryClient(config_for(trap.host), retries=0), RegistryClient(retries=0)):
            with pytest.raises(TokenRealmError) as info:
                client.get_manifest(parse(f"{trap.host}/library/app:1"))
            msg = str(info.value)
            assert info.value.code == "ERR_TOKEN_REALM" and info.value.realm_host == witness.host
            assert f"token service on {witness.host}" in msg and trap.host in msg
            assert f"provider.source.{trap.host}.token_realms" in msg
            assert PASSWORD not in msg and b64("alice", PASSWORD) not in msg
        assert trap.requests, "the registry was asked"
        time.sleep(0.3)  # a connection in flight would have been accepted by now
        assert witness.connections == 0 and witness.received == b""


def test_a_redirect_from_the_token_service_to_another_host_is_not_followed():
    """The realm is on the registry's own host name and redirects to 127.0.0.2: the hop is checked like a realm."""
    with ConnectionWitness("127.0.0.2") as witness, \
            Redirector(f"http://{witness.host}{METADATA_PATH}") as redirector, \
            ChallengingRegistry(f"http://{redirector.host}/token") as trap:
        with pytest.raises(TokenRealmError, match=witness.host.replace(".", r"\.")):
            RegistryClient(retries=0).get_manifest(parse(f"{trap.host}/library/app:1"))
        assert redirector.hits == 1 and witness.connections == 0


def test_a_listed_realm_host_works_and_an_unlisted_one_is_refused(tmp_path):
    """The issuer on a host of its own (127.0.0.3): refused until it is in token_realms, then the real flow works."""
    with TokenIssuer(tmp_path / "iss", users={"alice": PASSWORD}, bind="127.0.0.3") as iss, \
            RegistryServer(tmp_path / "reg", token=iss) as server:
        ref = parse(f"{server.host}/realm/app:v1")
        port = iss.realm.split(":")[2].split("/")[0]
        for listed in ([], ["127.0.0.4"], [f"127.0.0.3:{int(port) + 1}"]):
            with pytest.raises(TokenRealmError, match=rf"127\.0\.0\.3:{port}"):
                RegistryClient(config_for(server.host, token_realms=listed)).blob_exists(ref, sha(b"x"))
        assert iss.count() == 0
        for listed in (["127.0.0.3"], [f"127.0.0.3:{port}"]):
            push_and_pull(RegistryClient(config_for(server.host, token_realms=listed)), ref, b"listed realm")
        assert iss.count() >= 2


def test_credentials_never_go_to_a_plain_http_realm_of_a_tls_registry(tmp_path, monkeypatch):
    """A TLS registry (``insecure: true`` only skips verification) whose listed realm is plain HTTP: no password
    in the clear. A FAKE resolver names the loopback registry ``tls-realm.test`` so that it is spoken to over TLS."""
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **kw: real(
        "127.0.0.1" if host == "tls-realm.test" else host, *a, **kw))
    with TokenIssuer(tmp_path / "iss", users={"alice": PASSWORD}, anonymous="pull") as iss, \
            RegistryServer(tmp_path / "reg", token=iss, tls=True) as server:
        host = f"tls-realm.test:{server.port}"
        ref = parse(f"{host}/tls/app:v1")
        source = {"insecure": True, "token_realms": ["127.0.0.1"]}
        with pytest.raises(TokenRealmError, match="plain HTTP") as info:
            RegistryClient(config_for(host, **source)).blob_exists(ref, sha(b"x"))
        assert PASSWORD not in str(info.value) and iss.count() == 0
        # Anonymous: nothing to leak, the token is fetched.
        anonymous = RegistryClient(from_dict({"provider": {"source": {host: source}}}))
        assert anonymous.blob_exists(ref, sha(b"x")) is False
        assert iss.requests == [("", ("repository:tls/app:pull",))]


def test_token_realms_config_is_validated():
    cfg = from_dict({"provider": {"source": {"r.example.com": {"token_realms": ["Auth.Example.com", "[::1]:8443"]}}}})
    assert cfg.provider.source["r.example.com"].token_realms == ("auth.example.com", "[::1]:8443")
    for bad in ("https://auth.example.com", "auth.example.com/token", "", "a b"):
        with pytest.raises(ConfigError, match=r"provider\.source\.r\.example\.com\.token_realms\[0\]"):
            from_dict({"provider": {"source": {"r.example.com": {"token_realms": [bad]}}}})
    with pytest.raises(ConfigError, match="expected a list"):
        from_dict({"provider": {"source": {"r.example.com": {"token_realms": "auth.example.com"}}}})

