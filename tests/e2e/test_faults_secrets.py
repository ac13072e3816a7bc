"""Secrets never leak: a real token-auth docker-registry (tests/support/token_issuer.py), credentials from
the config's ``provider.source.<host>.auth``, DEBUG logging of every logger captured, and ``accelctl --debug``
run as a subprocess. Neither a succeeding nor a failing conversion may put the password, the base64
``user:password``, or any bearer token the issuer handed out (nor a piece of one) in a log record, an
exception message, a traceback or the CLI's output.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import os
import subprocess
import sys
import traceback
import uuid

import pytest
import yaml

from acceleration_sdk import config as config_mod
from acceleration_sdk.engine import convert
from acceleration_sdk.errors import AccelError, AuthError, NotFoundError
from acceleration_sdk.reference import parse
from acceleration_sdk.registry import RegistryClient
from tests.support.images import push_image, simple_tar
from tests.support.registry import RegistryServer
from tests.support.token_issuer import TokenIssuer

PASSWORD = "pw-" + uuid.uuid4().hex  # unique, so any occurrence anywhere is a leak
WRONG = "wrong-" + uuid.uuid4().hex
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def b64(pair: str) -> str:
    return base64.b64encode(pair.encode()).decode()


@dataclasses.dataclass
class Stack:
    issuer: TokenIssuer
    registry: RegistryServer
    repo: str

    def secrets(self) -> list[str]:
        """Everything that must never be shown: passwords, their base64 pairs, every token and its parts."""
        out = [PASSWORD, WRONG, b64(f"alice:{PASSWORD}"), b64(f"alice:{WRONG}"), b64(f"bob:{PASSWORD}")]
        for token in self.issuer.issued:
            header, payload, signature = token.split(".")
            out += [token, payload[:40], signature[:40]]  # a token cut short in a message is still a leak
        return out

    def config(self, tmp_path, user: str = "alice", password: str = PASSWORD, **provider) -> dict:
        return {"provider": {"work_dir": str(tmp_path / "work"),
                             "source": {self.registry.host: {"auth": b64(f"{user}:{password}")}}, **provider},
                "converter": {"driver": {"type": "estargz", "config": {"compression_level": 1}},
                              "rules": [{"tag_suffix": "-esgz"}]}}


@pytest.fixture
def stack(tmp_path):
    issuer = TokenIssuer(tmp_path / "issuer", users={"alice": PASSWORD, "bob": PASSWORD},
                         grants={"alice": "*", "bob": {"app": "pull"}}).start()
    registry = RegistryServer(tmp_path / "registry", token=issuer).start()
    try:
        repo = f"{registry.host}/app"
        admin = config_mod.from_dict({"provider": {"source": {registry.host: {"auth": b64(f"alice:{PASSWORD}")}}}})
        with RegistryClient(admin) as client:
            push_image(client, f"{repo}:v1", [simple_tar({"etc/motd": b"hello", "bin/x": os.urandom(5000)})])
        assert issuer.issued  # the token flow really ran
        yield Stack(issuer, registry, repo)
    finally:
        registry.stop()
        issuer.stop()


def assert_clean(stack: Stack, *texts: str) -> None:
    secrets = stack.secrets()
    assert len(secrets) > 5
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret leaked: ...{text[max(0, text.find(secret) - 80):][:200]}..."


def exception_text(exc: BaseException) -> str:
    """Everything a log handler or a traceback could show of ``exc``: str, repr, chained causes, args."""
    parts = traceback.format_exception(exc)
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), repr(e.args), repr(getattr(e, "__dict__", {}))]
        todo += [e.__cause__, e.__context__]
    return "\n".join(parts)


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)  # the root logger: every library's DEBUG records (urllib3's too)
    for name in ("urllib3", "requests", "acceleration_sdk", "drivers"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def test_succeeding_conversion_logs_no_secret(tmp_path, stack, debug_logs):
    result = convert(config_mod.from_dict(stack.config(tmp_path)), f"{stack.repo}:v1")
    assert result.digest and not result.skipped
    assert any("token" in r.getMessage() for r in debug_logs.records)  # DEBUG really was captured
    assert any(r.name.startswith("urllib3") for r in debug_logs.records)
    assert_clean(stack, debug_logs.text, "\n".join(repr(r.__dict__) for r in debug_logs.records), repr(result))


@pytest.mark.parametrize("case", ["wrong-password", "push-denied", "missing-tag"])
def test_failing_conversion_leaks_no_secret(tmp_path, stack, debug_logs, case):
    cfg = {"wrong-password": lambda: stack.config(tmp_path, password=WRONG),
           "push-denied": lambda: stack.config(tmp_path, user="bob"),
           "missing-tag": lambda: stack.config(tmp_path)}[case]()
    source = f"{stack.repo}:{'nope' if case == 'missing-tag' else 'v1'}"
    expected = {"wrong-password": AuthError, "push-denied": AuthError, "missing-tag": NotFoundError}[case]
    with pytest.raises(expected) as info:
        convert(config_mod.from_dict(cfg), source)
    message = str(info.value)
    assert "\n" not in message
    if case == "wrong-password":
        assert "alice" in message and "refused" in message  # names who, never with what
    if case == "push-denied":
        assert "push" in message and stack.issuer.count("push")  # failed at the push, after tokens were used
    assert_clean(stack, exception_text(info.value), debug_logs.text,
                 "\n".join(repr(r.__dict__) for r in debug_logs.records))
    with RegistryClient(config_mod.from_dict(stack.config(tmp_path))) as client:
        assert client.list_tags(parse(f"{stack.repo}:x")) == ["v1"]


def run_cli(tmp_path, cfg: dict, source: str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", "--debug", "convert", "--config", str(path),
                           source], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT, "DOCKER_CONFIG": str(tmp_path / "no-docker")})


def test_accelctl_debug_output_has_no_secret(tmp_path, stack):
    ok = run_cli(tmp_path, stack.config(tmp_path), f"{stack.repo}:v1")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip() == f"{stack.repo}:v1-esgz"
    assert "DEBUG" in ok.stderr and "token" in ok.stderr  # --debug really logged the auth flow

    denied = run_cli(tmp_path, stack.config(tmp_path, password=WRONG), f"{stack.repo}:v1")
    assert denied.returncode != 0 and "Traceback" in denied.stderr and "AuthError" in denied.stderr

    missing = run_cli(tmp_path, stack.config(tmp_path), f"{stack.repo}:nope")
    assert missing.returncode != 0 and "NotFoundError" in missing.stderr
    for out in (ok, denied, missing):
        assert_clean(stack, out.stdout, out.stderr)


def test_secrets_are_masked_in_a_registry_error_that_echoes_them(tmp_path, stack):
    """A registry whose error message repeats the credentials it got (some proxies do) is masked too."""
    from tests.support.faultproxy import FaultProxy, status

    proxy = FaultProxy(stack.registry.host).start()
    try:
        proxy.add("GET", r"/manifests/v1$", status(500, registry_code="UNKNOWN",
                                                      message=f"bad auth Basic {b64(f'alice:{PASSWORD}')} "
                                                              f"for alice:{PASSWORD}"))
        cfg = stack.config(tmp_path)
        cfg["provider"]["source"] = {proxy.host: {"auth": b64(f"alice:{PASSWORD}")}}
        with pytest.raises(AccelError) as info:
            convert(config_mod.from_dict(cfg), f"{proxy.host}/app:v1",
                    client=RegistryClient(config_mod.from_dict(cfg), retries=0, backoff=0))
    finally:
        proxy.stop()
    assert "bad auth" in str(info.value) and "***" in str(info.value)
    assert_clean(stack, exception_text(info.value))
