"""Turns the acceld YAML into Django settings: which config file, which database, which queue.

Kept apart from ``settings.py`` so each rule can be tested without reloading Django.
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from acceleration_sdk import config as sdk_config
from acceleration_sdk.errors import ConfigError

BASE_DIR = Path(__file__).resolve().parent.parent

# 30 s: how long SQLite waits for another process's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT = 30
# 600 s: how long a web thread or queue worker keeps its SQLite connection (Django's CONN_MAX_AGE).
SQLITE_CONN_MAX_AGE = 600
# Seconds the queue waits past converter.timeout before it hands a task out again (django-q2 needs retry > timeout);
# ?sync=true waits as long. $ACCELD_RETRY_MARGIN changes it; settings publish the one value as ACCELD_RETRY_MARGIN.
RETRY_MARGIN = 60
# 60 s: how long a PostgreSQL/MySQL connection is kept between requests (Django's CONN_MAX_AGE).
SERVER_CONN_MAX_AGE = 60


def config_path(env: dict | None = None, cwd: Path | None = None) -> Path | None:
    """``$ACCELD_CONFIG``, else ``config.yaml``, else ``config.example.yaml`` (cwd first, then the repo)."""
    found = sdk_config.find([cwd or Path.cwd(), BASE_DIR], os.environ if env is None else env)
    return Path(found) if found else None


def load_config(env: dict | None = None) -> sdk_config.Config:
    """Read the YAML once; with no file at all the defaults apply (a fresh checkout still starts)."""
    path = config_path(env)
    if path is None:
        return sdk_config.Config()
    if not path.is_file():
        raise ConfigError(f"ACCELD_CONFIG names {path}, which does not exist")
    return sdk_config.load(path)


def work_dir(cfg: sdk_config.Config) -> Path:
    return Path(cfg.provider.work_dir).expanduser().resolve()


def sqlite_database(path: Path | str) -> dict:
    """SQLite for a web server and a qcluster at once: WAL, a busy timeout, and IMMEDIATE transactions.

    IMMEDIATE takes the write lock when an atomic block starts, so two processes never both read
    "no conversion running" and then both start one (a deferred transaction would fail to upgrade).

    Connections persist (CONN_MAX_AGE): opening one per request re-reads the schema, and closing the
    last one checkpoints and removes the WAL; together that was most of a webhook's time (bench/api.py).
    """
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "CONN_MAX_AGE": SQLITE_CONN_MAX_AGE,
        "OPTIONS": {
            "timeout": SQLITE_BUSY_TIMEOUT,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    }


# What a DATABASE_URL may name: the databases the service is tested against or Django ships a backend for.
_ENGINES = ("django.db.backends.sqlite3", "django.db.backends.postgresql", "django.db.backends.mysql")


def parse_database_url(url: str) -> dict:
    """``sqlite:////abs/path``, ``sqlite:///relative``, ``postgres://user:pw@host:5432/name?sslmode=require``.

    dj-database-url reads the URL (schemes, quoting, query options); SQLite then gets our own settings
    (WAL, busy timeout, IMMEDIATE) because a web server and a qcluster share the file.
    """
    try:
        db = dict(dj_database_url.parse(url, conn_max_age=SERVER_CONN_MAX_AGE))
    except ValueError as exc:  # the message names the scheme, never the password
        raise ConfigError(f"unsupported database URL: {exc}") from None
    if db["ENGINE"] not in _ENGINES:
        scheme = url.split(":", 1)[0]
        raise ConfigError(f"unsupported database scheme {scheme!r} (use sqlite, postgres or mysql)")
    if db["ENGINE"].endswith("sqlite3"):
        if not db["NAME"] or db["NAME"] == ":memory:":
            raise ConfigError("a sqlite DATABASE_URL needs a file path")
        return sqlite_database(Path(db["NAME"]))
    return db


def database_settings(cfg: sdk_config.Config, env: dict | None = None) -> dict:
    """``$DATABASE_URL``, else ``server.database``, else SQLite at ``<work_dir>/acceld.sqlite3``."""
    env = os.environ if env is None else env
    url = env.get("DATABASE_URL", "").strip() or cfg.server.database.strip()
    if url:
        return parse_database_url(url)
    return sqlite_database(work_dir(cfg) / "acceld.sqlite3")


def retry_margin(env: dict | None = None) -> int:
    """``$ACCELD_RETRY_MARGIN`` seconds (default ``RETRY_MARGIN``), at least 1 so that retry > timeout."""
    env = os.environ if env is None else env
    return max(1, int(env.get("ACCELD_RETRY_MARGIN", "") or RETRY_MARGIN))


def q_cluster_settings(cfg: sdk_config.Config, env: dict | None = None) -> dict:
    """django-q2: ORM broker unless ``server.redis``; workers and timeout from the converter section.

    ``retry`` is longer than ``timeout``: a task not acknowledged within ``retry`` is handed out again,
    and a shorter one would turn one webhook into two conversions. ``retry`` is also how long a message
    taken by a host that died waits before it runs elsewhere; ``$ACCELD_RETRY_MARGIN`` (seconds, default
    ``RETRY_MARGIN``, see :func:`retry_margin`) shortens that where conversions end well within ``converter.timeout``.
    """
    env = os.environ if env is None else env
    timeout = cfg.converter.timeout
    margin = retry_margin(env)
    q = {
        "name": "acceld",
        "workers": cfg.converter.worker,
        "timeout": timeout,
        "retry": timeout + margin,
        # Our own reaper re-queues interrupted conversions with a fresh token; the queue must not
        # run the same message again on its own (conversion_run is idempotent all the same).
        "max_attempts": 1,
        "ack_failures": True,
        "save_limit": 1000,
        "catch_up": False,
        "label": "Queue",
        "poll": 0.2,
        "recycle": 50,
    }
    if cfg.server.redis.strip():
        q["redis"] = cfg.server.redis.strip()
    else:
        q["orm"] = "default"
    if env.get("ACCELD_Q_SYNC", "").lower() in ("1", "true", "yes"):
        q["sync"] = True
    return q
