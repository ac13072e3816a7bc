"""How settings are derived from the acceld YAML and the environment (acceld_project.runtime)."""
from __future__ import annotations

from pathlib import Path

import pytest

from acceld_project import runtime
from acceleration_sdk import config as sdk_config
from acceleration_sdk.errors import ConfigError


def test_config_path_precedence(tmp_path):
    assert runtime.config_path({"ACCELD_CONFIG": "/etc/acceld.yaml"}, tmp_path) == Path("/etc/acceld.yaml")
    (tmp_path / "config.example.yaml").write_text("{}")
    found = runtime.config_path({}, tmp_path)
    assert found == tmp_path / "config.example.yaml"
    (tmp_path / "config.yaml").write_text("{}")
    assert runtime.config_path({}, tmp_path) == tmp_path / "config.yaml"


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        runtime.load_config({"ACCELD_CONFIG": str(tmp_path / "nope.yaml")})


def test_sqlite_under_work_dir_with_wal_and_busy_timeout(tmp_path):
    cfg = sdk_config.from_dict({"provider": {"work_dir": str(tmp_path)}})
    db = runtime.database_settings(cfg, env={})
    assert db["NAME"] == str(tmp_path / "acceld.sqlite3")
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"] and db["OPTIONS"]["timeout"] >= 5


def test_database_url_beats_server_database(tmp_path):
    cfg = sdk_config.from_dict({"server": {"database": "postgres://u:p%40ss@db.example.com:5433/acceld"}})
    db = runtime.database_settings(cfg, env={})
    assert (db["ENGINE"], db["HOST"], str(db["PORT"]), db["USER"], db["PASSWORD"], db["NAME"]) == (
        "django.db.backends.postgresql", "db.example.com", "5433", "u", "p@ss", "acceld")
    db = runtime.database_settings(cfg, env={"DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite3"})
    assert db["NAME"] == f"{tmp_path}/x.sqlite3"  # tmp_path is absolute: sqlite:////tmp/...
    assert runtime.parse_database_url("sqlite:////abs/file.db")["NAME"] == "/abs/file.db"
    assert runtime.parse_database_url("sqlite:///rel/file.db")["NAME"] == "rel/file.db"
    for bad in ("oracle://x/y", "nosuchdb://x/y", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ConfigError):
            runtime.parse_database_url(bad)


def test_database_url_options_and_connection_age():
    db = runtime.parse_database_url("postgresql://acceld:s3cret@127.0.0.1:5432/acceld?sslmode=require")
    assert db["OPTIONS"] == {"sslmode": "require"} and db["CONN_MAX_AGE"] == runtime.SERVER_CONN_MAX_AGE
    with pytest.raises(ConfigError) as info:
        runtime.parse_database_url("nosuchdb://acceld:s3cret@db/acceld")
    assert "s3cret" not in str(info.value)


def test_q_cluster_orm_by_default_redis_when_configured():
    cfg = sdk_config.from_dict({"converter": {"worker": 3, "timeout": 900}})
    q = runtime.q_cluster_settings(cfg, env={})
    assert q["orm"] == "default" and "redis" not in q
    assert (q["workers"], q["timeout"]) == (3, 900) and q["retry"] > q["timeout"]
    q = runtime.q_cluster_settings(sdk_config.from_dict({"server": {"redis": "redis://r:6379/0"}}), env={})
    assert q["redis"] == "redis://r:6379/0" and "orm" not in q


def test_django_settings_follow_the_loaded_config(settings):
    # What settings.py did at import, for the config this test run loaded.
    assert settings.Q_CLUSTER["workers"] == settings.ACCELD.converter.worker
    assert settings.Q_CLUSTER["retry"] > settings.Q_CLUSTER["timeout"] == settings.ACCELD.converter.timeout
    assert settings.APPEND_SLASH is False


def test_migrations_match_the_models(db):
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # exits non-zero when one is missing


def test_retry_margin_from_the_environment():
    cfg = sdk_config.from_dict({"converter": {"timeout": 20}})
    assert runtime.q_cluster_settings(cfg, env={})["retry"] == 20 + runtime.RETRY_MARGIN
    assert runtime.q_cluster_settings(cfg, env={"ACCELD_RETRY_MARGIN": "5"})["retry"] == 25
    assert runtime.q_cluster_settings(cfg, env={"ACCELD_RETRY_MARGIN": "0"})["retry"] == 21  # always > timeout


def test_one_retry_margin_for_the_queue_and_the_sync_wait(settings):
    # settings publish the margin Q_CLUSTER was built with; ?sync=true reads that setting (conversions/api.py).
    assert runtime.retry_margin({"ACCELD_RETRY_MARGIN": "7"}) == 7 and runtime.retry_margin({}) == runtime.RETRY_MARGIN
    assert settings.Q_CLUSTER["retry"] == settings.Q_CLUSTER["timeout"] + settings.ACCELD_RETRY_MARGIN
