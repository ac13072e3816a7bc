"""Django settings for acceld.

The acceld YAML is read once, here, from ``$ACCELD_CONFIG`` (default ``config.yaml``, else
``config.example.yaml``); django-q2 reads ``Q_CLUSTER`` at import, so nothing may change it later.
"""
from __future__ import annotations

import os
import secrets

from acceld_project import runtime, security
from acceleration_sdk.errors import ConfigError

BASE_DIR = runtime.BASE_DIR

ACCELD_CONFIG_PATH = runtime.config_path()
try:
    ACCELD = runtime.load_config()
except ConfigError as exc:  # manage.py, gunicorn, qcluster: one line naming the key, not a traceback
    raise SystemExit(f"acceld: {ACCELD_CONFIG_PATH}: {exc}") from None
ACCELD_WORK_DIR = runtime.work_dir(ACCELD)
ACCELD_WORK_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """``$ACCELD_SECRET_KEY``, else one kept under work_dir: the web server and the qcluster must share it
    (django-q2 signs queued tasks with it)."""
    if os.environ.get("ACCELD_SECRET_KEY"):
        return os.environ["ACCELD_SECRET_KEY"]
    path = ACCELD_WORK_DIR / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("ACCELD_DEBUG", "").lower() in ("1", "true", "yes")
# Behind a TLS proxy the admin's login needs its public origin: ACCELD_CSRF_TRUSTED_ORIGINS=https://acceld.example.com
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("ACCELD_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]
APPEND_SLASH = False  # acceld's paths have no trailing slash; a redirect would break Harbor's POST

INSTALLED_APPS = [
    "axes",  # admin login throttling (see the security block)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    # Before django_q: our `qcluster` command (the stock one plus the reaper) must win.
    "conversions",
    "django_q",
]

MIDDLEWARE = [
    # First: refuses an oversized body with 413 before the CSRF check or a view reads it.
    "conversions.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "acceld_project.security.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

# 1 MiB: the one limit on request bodies (a Harbor webhook is a few KiB; the admin's forms are smaller).
# Above it BodySizeLimitMiddleware answers 413 without reading the body; Django alone would answer 400.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

ROOT_URLCONF = "acceld_project.urls"
WSGI_APPLICATION = "acceld_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": runtime.database_settings(ACCELD)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Tests get a real file (WAL, busy timeout, several connections), one per test run.
    DATABASES["default"]["TEST"] = {"NAME": str(ACCELD_WORK_DIR / f"test-acceld-{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"

REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "conversions.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["conversions.renderers.AcceldJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "conversions.auth.WebhookHeaderAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "acceld",
    "DESCRIPTION": "Harbor webhook service that converts pushed images to lazy-pulling formats (eStargz).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

Q_CLUSTER = runtime.q_cluster_settings(ACCELD)

# --- acceld's own knobs (env for tests and operators; the YAML stays acceld-compatible)
# The function that converts: (cfg, source, *, progress) -> ConversionResult. Tests may name a fake.
ACCELD_CONVERTER = os.environ.get("ACCELD_CONVERTER", "acceleration_sdk.engine.convert")
# A PROCESSING task whose worker has not written a heartbeat for this long is taken to be dead.
ACCELD_STALE_AFTER = float(os.environ.get("ACCELD_STALE_AFTER", "60"))
# How often a running conversion writes its heartbeat (and flushes progress at most every PROGRESS_INTERVAL).
ACCELD_HEARTBEAT_INTERVAL = float(os.environ.get("ACCELD_HEARTBEAT_INTERVAL", str(max(ACCELD_STALE_AFTER / 4, 0.5))))
ACCELD_PROGRESS_INTERVAL = float(os.environ.get("ACCELD_PROGRESS_INTERVAL", "1.0"))
# How often the qcluster's reaper looks for interrupted conversions.
ACCELD_REAPER_INTERVAL = float(os.environ.get("ACCELD_REAPER_INTERVAL", str(min(ACCELD_STALE_AFTER / 2, 10))))
# An interrupted conversion is re-queued until it has been started this many times, then FAILED.
ACCELD_MAX_ATTEMPTS = int(os.environ.get("ACCELD_MAX_ATTEMPTS", "3"))
# ?sync=true polls the task this often, for at most converter.timeout plus ACCELD_RETRY_MARGIN.
ACCELD_SYNC_POLL = 0.2
# Published for the conversions app, which reads settings and never imports acceld_project: the one margin
# past converter.timeout that both the queue (Q_CLUSTER["retry"]) and ?sync=true wait.
ACCELD_RETRY_MARGIN = runtime.retry_margin()


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"without_traceback": {"()": "acceld_project.security.WithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"},
                 "console_one_line": {"class": "logging.StreamHandler", "formatter": "plain",
                                      "filters": ["without_traceback"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("ACCELD_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"},
                # a request with a Host that is not ours (a scanner, a misrouted proxy): one line, no traceback
                "django.security": {"handlers": ["console_one_line"], "propagate": False}},
}

# --- security (issue 12): Host names, TLS proxy, CSP, admin login throttling. Derived from the acceld YAML
# in acceld_project/security.py (documented in README "Operations -> Running behind TLS / hardening").
# server.allowed_hosts adds to the loopback names and server.host; a request for any other Host gets 400,
# so no link the service builds (pagination) can point elsewhere.
ALLOWED_HOSTS = security.allowed_hosts(ACCELD)
# server.tls_proxy: true -> session and CSRF cookies only over HTTPS, and HSTS. HTTPS itself is detected by
# gunicorn from X-Forwarded-Proto, only for peers in ACCELD_FORWARDED_ALLOW_IPS; SECURE_PROXY_SSL_HEADER
# stays unset because Django would believe that header from any client.
_TLS = security.tls_settings(ACCELD)
SESSION_COOKIE_SECURE = _TLS["SESSION_COOKIE_SECURE"]
CSRF_COOKIE_SECURE = _TLS["CSRF_COOKIE_SECURE"]
SECURE_HSTS_SECONDS = _TLS["SECURE_HSTS_SECONDS"]
SECURE_PROXY_SSL_HEADER = None
# Content-Security-Policy: security.ContentSecurityPolicyMiddleware (in MIDDLEWARE above).
# Admin login throttling with django-axes (counts in the database, shared by every worker and host).
AUTHENTICATION_BACKENDS = [
    "acceld_project.login_backend.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
globals().update(security.login_throttle_settings())  # the AXES_* names
# Its lockouts and new failures are WARNINGs; the INFO lines are one per attempt and say nothing new.
LOGGING["loggers"]["axes"] = {"level": "WARNING"}
# --- end of the security block
