"""Fixtures for the service's unit tests: a config with known hosts, the FakeConverter, the queue inline."""
from __future__ import annotations

import json

import pytest
from django_q.conf import Conf
from rest_framework.test import APIClient

from acceld_project import runtime
from acceleration_sdk import config as sdk_config
from tests.service.fake_converter import FAKE

HOST = "harbor.example.com"  # configured with a webhook auth header
OPEN_HOST = "open.example.com:5000"  # configured, no auth header (acceld's default)
AUTH = "Basic aGFyYm9yOnMzY3JldA=="
FAKE_CONVERTER = "tests.service.fake_converter.convert"


def make_config(tmp_path, **sections) -> sdk_config.Config:
    data = {
        "server": {"public_list": False},
        "metric": {"enabled": False},
        "provider": {
            "work_dir": str(tmp_path / "work"),
            "source": {HOST: {"webhook": {"auth_header": AUTH}}, OPEN_HOST: {}},
        },
        "converter": {"worker": 2, "timeout": 60,
                      "rules": [{"tag_suffix": "-esgz", "cache_tag": "esgz-cache"}]},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return sdk_config.from_dict(data)


@pytest.fixture
def acceld(settings, tmp_path):
    """Install a test config and the FakeConverter; returns a function to change the config."""
    settings.ACCELD_CONVERTER = FAKE_CONVERTER
    FAKE.reset()

    def reconfigure(**sections):
        # What settings.py publishes from the config, published again for this one.
        settings.ACCELD = make_config(tmp_path, **sections)
        settings.ACCELD_WORK_DIR = runtime.work_dir(settings.ACCELD)
        return settings.ACCELD

    reconfigure()

    reconfigure.fake = FAKE
    return reconfigure


@pytest.fixture
def q_sync(monkeypatch):
    """django-q2's sync mode: a queued task runs inline when its transaction commits."""
    monkeypatch.setattr(Conf, "SYNC", True)


@pytest.fixture
def api():
    return APIClient()


def push_payload(*urls: str, digest: str = "sha256:" + "c" * 64) -> dict:
    return {"type": "PUSH_ARTIFACT", "occur_at": 1680501893, "operator": "admin",
            "event_data": {"resources": [{"digest": digest, "tag": u.rsplit(":", 1)[-1], "resource_url": u}
                                         for u in urls],
                           "repository": {"name": "nginx", "namespace": "library",
                                          "repo_full_name": "library/nginx", "repo_type": "private"}}}


def post_webhook(api, payload, *, auth: str | None = AUTH, sync: str | None = None, headers: dict | None = None,
                 raw: bytes | None = None, content_type: str = "application/json"):
    url = "/api/v1/conversions" + (f"?sync={sync}" if sync is not None else "")
    extra = dict(headers or {})
    if auth is not None:
        extra["Authorization"] = auth
    body = raw if raw is not None else json.dumps(payload).encode()
    return api.generic("POST", url, body, content_type=content_type, headers=extra)
