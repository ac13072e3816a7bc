"""Who may post a webhook and who may read the task list.

Posting: Harbor sends its webhook policy's "Auth Header" verbatim as ``Authorization``. For every
resource, the header must equal ``provider.source.<host>.webhook.auth_header`` of the resource's host
(port included). A host that is not configured is refused before anything is fetched from it (no SSRF);
a configured header that is missing or empty in the request is refused (acceld lets an empty one through).

Before the body is even parsed, the header must equal *some* configured header (unless a configured host
asks for none): a stranger's large body costs a comparison, not a JSON parse.

Reading the list: a user (session or DRF token) with the ``conversions.view_conversiontask`` permission
sees every task; a configured webhook header sees the tasks of the host(s) it is configured for.
"""
from __future__ import annotations

import hmac
from typing import Iterable

from rest_framework.authentication import BaseAuthentication

from acceleration_sdk.config import Config

from .errors import Unauthorized

INVALID_AUTH = "invalid auth config"  # acceld's message; the same for every cause, so it tells nothing


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def check_webhook_auth(cfg: Config, hosts: Iterable[str], authorization: str | None) -> None:
    """Raise :class:`Unauthorized` unless ``authorization`` is right for every host."""
    given = authorization or ""
    for host in hosts:
        source = cfg.provider.source_for(host)
        if source is None:
            raise Unauthorized(f"{INVALID_AUTH} for host {host}")
        expected = source.webhook.auth_header
        if expected and not (given and _equal(given, expected)):
            raise Unauthorized(f"{INVALID_AUTH} for host {host}")


def hosts_of_webhook_header(cfg: Config, authorization: str | None) -> frozenset[str]:
    """The configured hosts whose webhook header is ``authorization`` (empty when none is)."""
    if not authorization:
        return frozenset()
    found = []
    for host, source in cfg.provider.source.items():
        expected = source.webhook.auth_header
        # Compare against every configured header, so the time taken does not say which one matched.
        if expected and _equal(authorization, expected):
            found.append(host)
    return frozenset(found)


def check_webhook_caller(cfg: Config, authorization: str | None) -> None:
    """The cheap check before a webhook's body is parsed: the header matches some configured host's,
    or some configured host asks for no header (then only :func:`check_webhook_auth` can tell)."""
    if any(not source.webhook.auth_header for source in cfg.provider.source.values()):
        return
    if not hosts_of_webhook_header(cfg, authorization):
        raise Unauthorized(INVALID_AUTH)


class WebhookClient:
    """The caller of the list endpoint who presented a configured webhook header (Harbor, accelctl):
    it may list the tasks of ``hosts``, the hosts that header is configured for, and nothing else."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    username = "webhook"

    def __init__(self, hosts: frozenset[str] = frozenset()):
        self.hosts = hosts

    def __str__(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj=None) -> bool:
        return False


class WebhookHeaderAuthentication(BaseAuthentication):
    """DRF authentication: ``Authorization`` equal to one of the configured webhook headers."""

    def authenticate(self, request):
        from .conf import get_config

        hosts = hosts_of_webhook_header(get_config(), request.headers.get("Authorization"))
        if hosts:
            return WebhookClient(hosts), "webhook"
        return None

    def authenticate_header(self, request):
        return 'Token realm="acceld"'
