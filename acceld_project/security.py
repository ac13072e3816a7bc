"""Hardening that depends on how acceld is deployed: which Host names it answers to, cookies and HSTS behind a
TLS proxy, a Content-Security-Policy, admin login throttling, and the 400 answer for a bad Host.

Settings are derived here from the acceld YAML (``server.allowed_hosts``, ``server.tls_proxy``), so each rule is
tested without reloading Django; ``settings.py`` assigns them in its "security" block.

Behind a TLS proxy, which requests are HTTPS is decided by gunicorn: it sets ``wsgi.url_scheme`` from
``X-Forwarded-Proto`` only for peers in ``--forwarded-allow-ips`` (``ACCELD_FORWARDED_ALLOW_IPS``).
Django's ``SECURE_PROXY_SSL_HEADER`` is left unset on purpose: it would believe that header from any
client that reaches gunicorn directly.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import os
import socket

from django.core.exceptions import DisallowedHost

from acceleration_sdk import config as sdk_config

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::", "[::]")
# One year: the value Django's deploy check asks for. No includeSubDomains: acceld's host name says nothing
# about its sibling hosts, and HSTS on them would be the operator's decision, not ours.
HSTS_SECONDS = 365 * 24 * 3600
# Login throttling (django-axes): counted per (user name, client address) in the database, so every gunicorn
# worker and every web host shares the count. 10 failures lock that pair for 15 minutes; a user name alone is
# not locked (anyone could then lock the admin out), nor an address alone (behind a proxy every client has
# the proxy's address).
LOGIN_FAILURE_LIMIT = 10
LOGIN_LOCKOUT_SECONDS = 15 * 60

# The admin's policy: no inline script at all. Django 5.2's admin templates carry no inline script or style
# (their one inline <style>, in change_list.html, appears only for a model admin without action bars, which
# none here is); the style="…" attributes our admin writes (conversions/admin.py: the reason keeps its line
# breaks) are allowed by the hash of their exact text ('unsafe-hashes' applies hashes to attributes).
# JS that sets element.style is CSSOM, which CSP does not restrict.
ADMIN_STYLE_ATTRIBUTES = ("white-space: pre-wrap",)


def _csp_hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


_STYLE_SOURCES = " ".join(["'self'", "'unsafe-hashes'", *(f"'{_csp_hash(a)}'" for a in ADMIN_STYLE_ATTRIBUTES)])
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    f"style-src {_STYLE_SOURCES}",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


def allowed_hosts(cfg: sdk_config.Config) -> list[str]:
    """The loopback names, ``server.host`` when it is an address of its own (with ``0.0.0.0`` this machine's
    host name instead), and ``server.allowed_hosts``."""
    hosts = list(LOOPBACK_NAMES)
    listen = cfg.server.host.strip()
    if listen in WILDCARD_ADDRESSES:
        hosts.append(socket.gethostname().lower())
    else:
        hosts.append(f"[{listen}]" if ":" in listen and not listen.startswith("[") else listen.lower())
    hosts.extend(cfg.server.allowed_hosts)
    return list(dict.fromkeys(h for h in hosts if h))


def tls_settings(cfg: sdk_config.Config) -> dict:
    """Cookies only over HTTPS and HSTS, when ``server.tls_proxy`` says a TLS proxy is in front."""
    on = cfg.server.tls_proxy
    return {
        "SESSION_COOKIE_SECURE": on,
        "CSRF_COOKIE_SECURE": on,
        "SECURE_HSTS_SECONDS": HSTS_SECONDS if on else 0,
    }


def login_throttle_settings(env: dict | None = None) -> dict:
    """django-axes' settings; ``$ACCELD_LOGIN_FAILURE_LIMIT`` / ``$ACCELD_LOGIN_LOCKOUT_SECONDS`` override."""
    env = os.environ if env is None else env
    limit = int(env.get("ACCELD_LOGIN_FAILURE_LIMIT") or LOGIN_FAILURE_LIMIT)
    lockout = float(env.get("ACCELD_LOGIN_LOCKOUT_SECONDS") or LOGIN_LOCKOUT_SECONDS)
    minutes = max(1, round(lockout / 60))
    return {
        "AXES_FAILURE_LIMIT": limit,
        "AXES_COOLOFF_TIME": datetime.timedelta(seconds=lockout),
        "AXES_LOCKOUT_PARAMETERS": [["username", "ip_address"]],
        # A failure while locked out is not recorded: the lock does not grow, nor does the attempt's row.
        "AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT": False,
        "AXES_RESET_ON_SUCCESS": True,
        # The password is always masked; the user name and address stay readable in the lockout's log line.
        "AXES_SENSITIVE_PARAMETERS": [],
        "AXES_VERBOSE": False,  # log lines name the user and address only (no user agent), no start-up banner
        "AXES_COOLOFF_MESSAGE": (f"Account locked: too many failed logins for this user from this address. "
                                 f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."),
        # The client address is gunicorn's peer (REMOTE_ADDR), never a header a client could forge.
        "AXES_CLIENT_IP_CALLABLE": "acceld_project.security.client_address",
    }


def client_address(request) -> str:
    return request.META.get("REMOTE_ADDR", "")


class ContentSecurityPolicyMiddleware:
    """Adds ``Content-Security-Policy`` to every response that has none (Django 5.2 has no built-in one)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


def bad_request(request, exception=None):
    """handler400: acceld's JSON error, also for a ``Host`` that is not in ALLOWED_HOSTS."""
    from conversions.errors import AcceldJsonResponse

    if isinstance(exception, DisallowedHost):
        message = "the Host header names a host this service does not answer to (see server.allowed_hosts)"
    else:
        message = "bad request"
    return AcceldJsonResponse({"code": "ERR_ILLEGAL_PARAMETER", "message": message}, status=400)


class WithoutTraceback:
    """A logging filter: keep the one-line message, drop the traceback. Django logs a refused ``Host`` (and
    other SuspiciousOperations) with the exception attached; the message already says what was refused."""

    def filter(self, record) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True
