"""Who may post a webhook and who may read the task list.

Posting: Harbor sends its webhook policy's "Auth Header" verbatim as ``Authorization``. For every
resource, the header must equal ``provider.source.<host>.webhook.auth_header`` of the resource's host
(port included). A host that is not configured is refused before anything is fetched from it (no SSRF);
a configured header that is missing or empty in the request is refused (acceld lets an empty one through).

Reading the list: a logged-in user, a DRF token, or any configured webhook header.
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


def matches_any_webhook_header(cfg: Config, authorization: str | None) -> bool:
    if not authorization:
        return False
    found = False
    for source in cfg.provider.source.values():
        expected = source.webhook.auth_header
        # Compare against every configured header, so the time taken does not say which one matched.
        if expected and _equal(authorization, expected):
            found = True
    return found


class WebhookClient:
    """The caller of the list endpoint who presented a configured webhook header (Harbor, accelctl)."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    username = "webhook"

    def __str__(self) -> str:
        return self.username


class WebhookHeaderAuthentication(BaseAuthentication):
    """DRF authentication: ``Authorization`` equal to one of the configured webhook headers."""

    def authenticate(self, request):
        from .conf import get_config

        if matches_any_webhook_header(get_config(), request.headers.get("Authorization")):
            return WebhookClient(), "webhook"
        return None

    def authenticate_header(self, request):
        return 'Token realm="acceld"'
